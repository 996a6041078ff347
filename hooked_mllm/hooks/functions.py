"""Composable hook functions: caching, patching, ablation, directions and steering.

Each class here is a callable ``fn(activation, hook) -> activation | None`` to pass in
``fwd_hooks`` (TransformerLens' convention). Every one takes a position selector
(:mod:`hooked_mllm.positions`: ``"image"``, ``"text"``, ``"last"``, ``"generated"``,
``positions.image(rows=..., cols=...)``, indices, masks...) and, for per-head hook points
(``attn.hook_q|k|v|z``), a ``heads`` selection. Activations are ``[batch, pos, ...]``;
the selector's ``[batch, pos]`` mask is applied on the prompt forward and, for
selectors that include generated tokens, on every generation step.

Contents: :class:`HookFunction` (base: positions and heads), :class:`CacheTo`,
:class:`PatchFrom`, :class:`Ablate` (zero / mean / resample), :class:`ProjectOut`,
:class:`SetComponent`, :class:`ScaleComponent`, :class:`PatchSubspace`,
:class:`Steer`, :func:`compose`, :func:`over`.

Examples:
    >>> from hooked_mllm.hooks import PatchFrom, Steer
    >>> fwd = [("blocks.2.hook_resid_post", PatchFrom(clean_cache, positions="image"))]  # doctest: +SKIP
    >>> steer = Steer(v, alpha=4, schedule="all")                                        # doctest: +SKIP
    >>> model.generate(batch, fwd_hooks=[("blocks.4.hook_resid_post", steer)])            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import positions as _positions
from ..hook_points import HookContext, join_calls


class HookFunction:
    """Base class: resolves positions and heads, then calls :meth:`apply` on the selection.

    Args:
        positions: A selector (default: every prompt position and generated token).
        heads: Head indices (an int, list or slice) for per-head points; None: all.
    """

    def __init__(self, positions: Any = "everything", heads: Any = None) -> None:
        self.positions = _positions.as_selector(positions)
        self.heads = heads

    def mask(self, act: Tensor, hook: HookContext) -> Tensor | None:
        """The ``[batch, pos]`` mask of this run step (on ``act``'s device), or None."""
        if not hook.point.sequence:
            return torch.ones(act.shape[:2], dtype=torch.bool, device=act.device)
        mask = self.positions.step_mask(hook.batch, hook.step, (act.shape[0], act.shape[1]))
        return None if mask is None else mask.to(act.device)

    def _head_index(self, act: Tensor, hook: HookContext) -> Any:
        if self.heads is None:
            return slice(None)
        if hook.point.heads is None:
            raise ValueError(f"heads= needs a per-head hook point (attn.hook_q|k|v|z), not {hook.name}")
        return (
            torch.as_tensor([self.heads] if isinstance(self.heads, int) else self.heads)
            if not isinstance(self.heads, slice)
            else self.heads
        )

    def __call__(self, act: Tensor, hook: HookContext) -> Tensor | None:
        mask = self.mask(act, hook)
        if mask is None or not bool(mask.any()):
            return None
        heads = self._head_index(act, hook)
        selected = act[mask]  # [n, ...]
        if self.heads is not None:
            part = self.apply(selected[:, heads], hook, mask, heads)
            if part is None:  # the selected heads unchanged
                return None
            new = selected.clone()
            new[:, heads] = part
        else:
            replaced = self.apply(selected, hook, mask, heads)
            if replaced is None:
                return None
            new = replaced
        out = act.clone()
        out[mask] = new.to(act.dtype)
        return out

    def apply(self, selected: Tensor, hook: HookContext, mask: Tensor, heads: Any) -> Tensor | None:
        """The replacement of the selected activations ``[n_selected, ...]`` (None: unchanged)."""
        raise NotImplementedError


class CacheTo(HookFunction):
    """Store activations: ``store[name]`` (prompt) or, with ``every_step``, a list per step.

    ``positions=None`` (default) keeps whole activations; a selector keeps
    ``[batch, n_selected, ...]`` when every row selects as many positions, else the
    flattened ``[n_selected_total, ...]``; explicit positions (ints, a list, a slice) on the
    prompt are kept in the order given, repeats too. With ``every_step=True`` each step appends to
    ``store[name]``, so generated tokens are cached too. A vision-tower point on a batch mixing
    images and videos (called twice per forward) keeps both calls concatenated, images first, as
    ``run_with_cache`` does.
    """

    def __init__(
        self, store: dict, positions: Any = None, every_step: bool = False, device: Any = "cpu"
    ) -> None:
        super().__init__("everything" if positions is None else positions)
        self.keep_all = positions is None
        self.store, self.every_step, self.device = store, every_step, device

    def __call__(self, act: Tensor, hook: HookContext) -> None:
        if hook.step > 0 and not self.every_step:
            return None
        if self.keep_all:
            self._keep(act.detach().to(self.device), hook)
            return None
        mask = self.mask(act, hook)
        if mask is None:
            return None
        counts = mask.sum(1)
        value = act[mask].detach().to(self.device)
        batch = hook.batch
        explicit = isinstance(self.positions, _positions.Indices) and hook.step == 0 and hook.point.sequence
        if explicit and batch is not None:
            # explicit positions: in the order given, repeats kept (as run_with_cache keeps them)
            index = _positions.ordered_index(self.positions, batch, act.shape[1]).to(act.device)
            value = (
                act[torch.arange(act.shape[0], device=act.device)[:, None], index].detach().to(self.device)
            )
        elif len(counts) and bool((counts == counts[0]).all()):
            value = value.view(act.shape[0], int(counts[0]), *act.shape[2:])
        self._keep(value, hook)
        return None

    def _keep(self, value: Tensor, hook: HookContext) -> None:
        """Store ``value``; a later call of the module in the same forward (``hook.call > 0``: the tower's
        video call on a batch mixing images and videos) is concatenated onto the first axis."""
        if self.every_step:
            kept = self.store.setdefault(hook.name, [])
            if hook.call > 0 and kept:
                kept[-1] = join_calls(hook.name, [kept[-1], value])
            else:
                kept.append(value)
        elif hook.call > 0 and hook.name in self.store:
            self.store[hook.name] = join_calls(hook.name, [self.store[hook.name], value])
        else:
            self.store[hook.name] = value


def _source(source: Any, hook: HookContext) -> Tensor:
    if isinstance(source, Mapping):
        return source[hook.name]
    if callable(source):
        return source(hook)
    return source


class PatchFrom(HookFunction):
    """Replace the selected activations with another run's, at the same positions.

    ``source`` is a cache or dict (looked up by hook name), a ``[batch, pos, ...]`` tensor,
    or a callable ``source(hook) -> tensor``. Both runs must share positions (same
    template and image sizes); broadcasting over batch is allowed.
    """

    def __init__(self, source: Any, positions: Any = "all", heads: Any = None) -> None:
        super().__init__(positions, heads)
        self.source = source

    def __call__(self, act: Tensor, hook: HookContext) -> Tensor | None:
        mask = self.mask(act, hook)
        if mask is None or not bool(mask.any()):
            return None
        src = _source(self.source, hook).to(device=act.device, dtype=act.dtype)
        if src.shape[1:] != act.shape[1:]:
            raise ValueError(
                f"PatchFrom on {hook.name}: source shape {tuple(src.shape)} does not match the "
                f"activation {tuple(act.shape)}; cache the source with positions=None."
            )
        src = src.expand_as(act)
        out = act.clone()
        if self.heads is None:
            out[mask] = src[mask]
        else:
            heads = self._head_index(act, hook)
            rows = out[mask]
            rows[:, heads] = src[mask][:, heads]
            out[mask] = rows
        return out


class Ablate(HookFunction):
    """Zero, mean or resample ablation of the selected activations.

    Args:
        kind: ``"zero"``, ``"mean"`` (replace by ``mean``: a tensor broadcastable to one
            position's activation, e.g. a dataset mean; default the mean over the
            selected positions of this run) or ``"resample"`` (rows of ``source``, a cache
            or tensor from other inputs, drawn with ``generator``).
    """

    def __init__(
        self,
        kind: str = "zero",
        positions: Any = "all",
        heads: Any = None,
        mean: Tensor | None = None,
        source: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if kind not in ("zero", "mean", "resample"):
            raise ValueError(f"Ablation kind must be 'zero', 'mean' or 'resample', not {kind!r}")
        if kind == "resample" and source is None:
            raise ValueError("Resample ablation needs source= (a cache or activations of other inputs)")
        super().__init__(positions, heads)
        self.kind, self.mean_value, self.source, self.generator = kind, mean, source, generator

    def apply(self, selected: Tensor, hook: HookContext, mask: Tensor, heads: Any) -> Tensor:
        if self.kind == "zero":
            return torch.zeros_like(selected)
        if self.kind == "mean":
            mean = self.mean_value if self.mean_value is not None else selected.mean(0, keepdim=True)
            if self.mean_value is not None and self.heads is not None and mean.dim() >= 2:
                mean = mean[heads]
            return mean.to(selected).expand_as(selected).clone()
        pool = _source(self.source, hook).to(selected.device)
        pool = pool.reshape(-1, *act_tail(hook, pool))
        if self.heads is not None:
            pool = pool[:, heads]
        index = torch.randint(len(pool), (len(selected),), generator=self.generator).to(selected.device)
        return pool[index].to(selected.dtype)


def act_tail(hook: HookContext, pool: Tensor) -> tuple[int, ...]:
    """The per-position shape of a ``[batch, pos, ...]`` pool."""
    return tuple(pool.shape[2:]) if hook.point.sequence else tuple(pool.shape[1:])


def _unit(direction: Tensor) -> Tensor:
    norm = direction.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("A direction must be non-zero")
    return direction / norm


class ProjectOut(HookFunction):
    """Remove the component along ``direction`` (``[d]``, or ``[k, d]`` orthonormalised: a subspace)."""

    def __init__(
        self, direction: Float[Tensor, "*k d"], positions: Any = "everything", heads: Any = None
    ) -> None:
        super().__init__(positions, heads)
        self.direction = direction

    def apply(self, selected: Tensor, hook: HookContext, mask: Tensor, heads: Any) -> Tensor:
        basis = _basis(self.direction.to(device=selected.device, dtype=torch.float32))
        x = selected.float()
        return (x - (x @ basis.T) @ basis).to(selected.dtype)


def _basis(directions: Tensor) -> Tensor:
    """An orthonormal ``[k, d]`` basis of the rows of ``directions`` (``[d]`` or ``[k, d]``)."""
    rows = directions[None] if directions.dim() == 1 else directions
    q, _ = torch.linalg.qr(rows.T)
    return q.T[: rows.shape[0]]


class SetComponent(HookFunction):
    """Set the coefficient along ``direction`` (normalised) to ``value``.

    ``value``: a number, a ``[batch]`` or ``[batch, pos]`` tensor of coefficients, or a
    cache / callable giving a source activation whose coefficient is copied (e.g. from
    another run).
    """

    def __init__(
        self, direction: Float[Tensor, " d"], value: Any, positions: Any = "everything", heads: Any = None
    ) -> None:
        super().__init__(positions, heads)
        self.direction, self.value = direction, value

    def __call__(self, act: Tensor, hook: HookContext) -> Tensor | None:
        mask = self.mask(act, hook)
        if mask is None or not bool(mask.any()):
            return None
        unit = _unit(self.direction.to(device=act.device, dtype=torch.float32))
        x = act.float()
        current = x @ unit
        if isinstance(self.value, Mapping) or callable(self.value):
            target = _source(self.value, hook).to(act.device).float().expand_as(x) @ unit
        else:
            target = torch.as_tensor(self.value, dtype=torch.float32, device=act.device)
            target = (
                target.view(*target.shape, *([1] * (current.dim() - target.dim())))
                if target.dim()
                else target
            )
        new = x + (target - current)[..., None] * unit
        out = torch.where(mask.view(*mask.shape, *([1] * (act.dim() - 2))), new, x)
        return out.to(act.dtype)


class ScaleComponent(HookFunction):
    """Multiply the component along a unit ``direction`` by ``factor`` (0 removes it)."""

    def __init__(
        self, direction: Float[Tensor, " d"], factor: float, positions: Any = "everything", heads: Any = None
    ) -> None:
        super().__init__(positions, heads)
        self.direction, self.factor = direction, factor

    def apply(self, selected: Tensor, hook: HookContext, mask: Tensor, heads: Any) -> Tensor:
        unit = _unit(self.direction.to(device=selected.device, dtype=torch.float32))
        x = selected.float()
        return (x + (self.factor - 1.0) * (x @ unit)[..., None] * unit).to(selected.dtype)


class PatchSubspace(HookFunction):
    """Replace the component in the span of ``basis`` (``[k, d]``) with the source run's."""

    def __init__(self, basis: Float[Tensor, "k d"], source: Any, positions: Any = "all") -> None:
        super().__init__(positions)
        self.basis, self.source = basis, source

    def __call__(self, act: Tensor, hook: HookContext) -> Tensor | None:
        mask = self.mask(act, hook)
        if mask is None or not bool(mask.any()):
            return None
        q = _basis(self.basis.to(device=act.device, dtype=torch.float32))
        x = act.float()
        src = _source(self.source, hook).to(act.device).float().expand_as(x)
        new = x - (x @ q.T) @ q + (src @ q.T) @ q
        return torch.where(mask.view(*mask.shape, *([1] * (act.dim() - 2))), new, x).to(act.dtype)


SCHEDULES = {
    "all": "everything",
    "prompt": "all",
    "image": "image",
    "text": "text",
    "last": "last",
    "generated": "generated",
}


class Steer(HookFunction):
    """Add ``alpha * vector`` at the positions of a schedule.

    Args:
        vector: ``[d]`` (every row) or ``[batch, d]`` (one vector per row).
        alpha: The scale.
        schedule: ``"all"`` (prompt and generated tokens), ``"prompt"``, ``"image"``,
            ``"text"``, ``"last"`` (last prompt token) or ``"generated"``; or any
            position selector.
    """

    def __init__(self, vector: Float[Tensor, "*batch d"], alpha: float = 1.0, schedule: Any = "all") -> None:
        selector = SCHEDULES.get(schedule, schedule) if isinstance(schedule, str) else schedule
        if isinstance(schedule, str) and schedule not in SCHEDULES:
            raise ValueError(
                f"Unknown steering schedule {schedule!r}; use one of {', '.join(SCHEDULES)} "
                "or a position selector."
            )
        super().__init__(selector)
        self.vector, self.alpha = vector, alpha

    def __call__(self, act: Tensor, hook: HookContext) -> Tensor | None:
        mask = self.mask(act, hook)
        if mask is None or not bool(mask.any()):
            return None
        vector = self.vector.to(device=act.device, dtype=act.dtype)
        if vector.dim() == 2:
            if vector.shape[0] != act.shape[0]:
                raise ValueError(f"Steer has {vector.shape[0]} per-row vectors for a batch of {act.shape[0]}")
            vector = vector[:, None, :]
        add = self.alpha * vector * mask[..., None].to(act.dtype)
        return act + add


class compose:  # noqa: N801 - reads as a function
    """Several hook functions applied in order on one hook point, as one function.

    Examples:
        >>> fn = compose(ProjectOut(v), Steer(w, alpha=2))   # doctest: +SKIP
    """

    def __init__(self, *fns: Callable) -> None:
        self.fns = fns

    def __call__(self, act: Tensor, hook: HookContext) -> Tensor | None:
        changed = None
        for fn in self.fns:
            new = fn(act if changed is None else changed, hook)
            if new is not None:
                changed = new
        return changed


def over(names_filter: Any, fn: Callable) -> list[tuple[Any, Callable]]:
    """One hook function over many hook points: ``fwd_hooks=over(lambda n: "resid_post" in n, fn)``."""
    return [(names_filter, fn)]


def hooks_for(names: Iterable[str], fn: Callable) -> list[tuple[str, Callable]]:
    """``[(name, fn) for name in names]``."""
    return [(name, fn) for name in names]
