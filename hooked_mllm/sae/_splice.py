"""Splicing SAELens sparse autoencoders into a :class:`~hooked_mllm.HookedMLLM`'s hook points.

A spliced SAE replaces the value of one hook point ``h`` (language model, vision tower or
projector) by the SAE's output: ``h``'s hook functions and cache then see what the model passes
on (the SAE's output, ``h.hook_sae_output``), and the SAE's input is ``h.hook_sae_input``. The
splice is one hook function on ``h`` kept active for every run of the model (a ``model.hooks()``
edit placed before all others: ``run_with_hooks``, ``run_with_cache``, ``generate`` and
``model.trace`` alike). It runs the SAE object's own ``forward`` (SAELens' maths, architectures
and error term), with SAELens' hook points inside the SAE (``hook_sae_input``,
``hook_sae_acts_pre``, ``hook_sae_acts_post``, ``hook_sae_recons``, ``hook_sae_error``,
``hook_sae_output``) exposed as ``<h>.hook_sae_*``: hook functions given for those names fire
there (through the SAE's TransformerLens hook points, for the one call), and ``run_with_cache``
caches them. sae_lens is imported only when an SAE is spliced.

Contents: :class:`SAESpliceMixin` (the methods of :class:`~hooked_mllm.HookedMLLM`),
:data:`SAE_HOOKS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .. import positions as _positions
from .._runtime import hook_io as _hook_io
from .._runtime import runner as _runner
from ..hook_points import HookContext, HookPoint

SAE_HOOKS = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)
"""SAELens' hook points inside an SAE, in the order its forward reaches them
(``hook_sae_error`` only with the error term)."""


def require_sae_lens() -> Any:
    """The ``sae_lens`` module, or an ``ImportError`` saying how to install it."""
    try:
        import sae_lens
    except ImportError as error:  # pragma: no cover - exercised in the main environment only
        raise ImportError(
            "Sparse autoencoders need SAELens: pip install 'hooked-mllm[sae]' (sae-lens 6.x, which requires "
            "transformer-lens<4; see the README)."
        ) from error
    return sae_lens


@dataclasses.dataclass(eq=False)
class Splice:
    """One SAE spliced at one hook point.

    Attributes:
        point: The hook point whose value the SAE replaces.
        sae: The SAELens ``SAE``.
        selector: The positions where it applies (None: everywhere).
        previous_error_term: The SAE's ``use_error_term`` before splicing (restored on removal).
        use_error_term: Whether it is spliced with the error term.
        hook: The splice's hook function bound to ``point``.
        body: Its intervention (an entry of the model's active edits).
    """

    point: HookPoint
    sae: Any
    selector: _positions.Selector | None
    previous_error_term: bool
    use_error_term: bool = False
    hook: _runner.HookFn | None = None
    body: _runner.Body | None = None

    def names(self) -> list[str]:
        return [f"{self.point.name}.{sub}" for sub in SAE_HOOKS]


@dataclasses.dataclass(frozen=True)
class _Inner:
    """A hook function on a hook point inside a spliced SAE (run by the splice, not by the point)."""

    name: str
    fn: Callable

    def __call__(self, act: Tensor, hook: HookContext) -> None:
        raise ValueError(
            f"{self.name} is a hook point inside a spliced SAE: hook it through a run method "
            "(run_with_hooks, run_with_cache, generate, run_with_saes, run_with_cache_with_saes), not "
            "model.hooks()."
        )


def _split_names(targets: Iterable[str], inner: dict[str, Splice]) -> tuple[list[str], list[str]]:
    names = list(targets)
    return [n for n in names if n not in inner], [n for n in names if n in inner]


class SAESpliceMixin:
    """``add_sae``, ``reset_saes``, ``saes``, ``run_with_saes`` and ``run_with_cache_with_saes``
    (SAELens' ``HookedSAETransformer`` habits) for :class:`~hooked_mllm.HookedMLLM`."""

    _splices: tuple[Splice, ...] = ()
    _sae_inner: dict[str, list[Callable]] | None = None  # the running call's hooks inside SAEs

    # what the mixin reads of the model it is mixed into
    hook_points: Any
    nnsight: Any
    remote: Any
    _context: list[_runner.HookFn]
    _context_bodies: list[_runner.Body]
    _state: Any

    if TYPE_CHECKING:

        def _has_images(self, batch: Any) -> bool: ...

        def run_with_hooks(self, inputs: Any = None, **kwargs: Any) -> Any: ...
        def run_with_cache(self, inputs: Any = None, **kwargs: Any) -> Any: ...

    def _refuse_inner_point(self, name: Any) -> None:
        """Refuse a point inside a spliced SAE where only the model's own points are handles
        (:meth:`~hooked_mllm.HookedMLLM.hook_point`, for ``model.trace``)."""
        if isinstance(name, str) and any(name in splice.names() for splice in self._splices):
            point = name.rsplit(".", 1)[0]
            raise ValueError(
                f"{name} is a hook point inside a spliced SAE, which model.trace does not reach: read it "
                "with model.run_with_cache(..., names_filter=...) or edit it with run_with_hooks / generate "
                f"(fwd_hooks=[({name!r}, fn)]); in a trace, {point!r} holds the SAE's output."
            )

    # -- splicing ----------------------------------------------------------------------

    @property
    def acts_to_saes(self) -> dict[str, Any]:
        """The spliced SAEs by hook name (SAELens' attribute of the same name).

        Examples:
            >>> model.add_sae(sae)                         # doctest: +SKIP
            >>> list(model.acts_to_saes)                   # doctest: +SKIP
            ['blocks.0.hook_resid_post']
        """
        return {s.point.name: s.sae for s in self._splices}

    def add_sae(
        self,
        sae: Any,
        use_error_term: bool = False,
        *,
        hook_name: str | None = None,
        positions: Any = None,
    ) -> None:
        """Splice a SAELens SAE into a hook point until :meth:`reset_saes`.

        The hook point's value is replaced by ``sae(value)`` on every run (generation and
        ``model.trace`` included); the points inside the SAE become hook points named
        ``<hook_name>.hook_sae_input`` ... ``.hook_sae_output`` (:data:`SAE_HOOKS`). An SAE
        already spliced at that point is replaced.

        Args:
            sae: A ``sae_lens.SAE`` whose ``d_in`` is the hook point's last dimension (or heads x
                d_head for per-head points).
            use_error_term: Add SAELens' error term (input minus the SAE's reconstruction without
                hooks), so the model's outputs are the unspliced ones while the points inside the SAE
                are read and edited (SAELens sets ``sae.use_error_term`` while spliced; the previous value
                is restored on removal).
            hook_name: Where to splice; default ``sae.cfg.metadata.hook_name``. A name of this
                model (``model.hook_names()``).
            positions: Apply the SAE only at these sequence positions (a position selector:
                ``"image"``, ``"text"``, a mask...; language-model points only). The points inside the
                SAE then hold ``[n_selected, ...]``: the selected positions in (row, position) order.
                At a generation step the selector selects nothing for (e.g. ``"image"`` after the
                prompt), the SAE is not applied.

        Raises:
            TypeError: ``sae`` is not a SAELens SAE.
            ValueError: The hook point is unknown or read-only, positions were given for a point
                without a sequence axis, or the model runs remotely.

        Examples:
            >>> from sae_lens import SAE                                      # doctest: +SKIP
            >>> sae = SAE.load_from_disk("saes/resid_post_1")                  # doctest: +SKIP
            >>> model.add_sae(sae)                                             # doctest: +SKIP
            >>> logits, cache = model.run_with_cache(batch)                    # doctest: +SKIP
            >>> cache["blocks.1.hook_resid_post.hook_sae_acts_post"].shape     # doctest: +SKIP
            torch.Size([1, 60, 512])
        """
        sae_lens = require_sae_lens()
        if not isinstance(sae, sae_lens.SAE):
            raise TypeError(
                f"add_sae takes a sae_lens.SAE (e.g. SAE.load_from_disk(path)), not {type(sae).__name__}."
            )
        if self.remote:
            raise ValueError("SAEs cannot be spliced into a remote model; load it locally to splice SAEs.")
        if not isinstance(use_error_term, bool):
            raise TypeError(f"use_error_term must be True or False, not {use_error_term!r}.")
        name = hook_name if hook_name is not None else getattr(sae.cfg.metadata, "hook_name", None)
        if not name:
            raise ValueError(
                "This SAE names no hook point (sae.cfg.metadata.hook_name is empty); pass hook_name=, "
                "one of model.hook_names()."
            )
        point = self.hook_points.resolve(name)
        if not point.writable:
            raise ValueError(
                f"{point.name} is read-only{_hook_io.read_only_reason(point)}: an SAE spliced there could "
                "not pass its output on. Splice it at a writable hook point."
            )
        selector = None
        if positions is not None:
            if not point.sequence:
                raise ValueError(
                    f"{point.name} has no language-model sequence axis, so positions= cannot select "
                    "where the SAE applies; splice it without positions (it applies to every token there)."
                )
            selector = _positions.as_selector(positions)
        self._remove_splices([s for s in self._splices if s.point.name == point.name])
        splice = Splice(point, sae, selector, bool(sae.use_error_term), use_error_term)
        sae.use_error_term = use_error_term
        splice.hook = _runner.HookFn(point, self._splice_fn(splice))
        (body,) = _runner.bodies(
            self.nnsight,
            [splice.hook],
            self.hook_points.order,
            batch=self._state.current_batch,
            every_step=True,
        )
        splice.body = body if point.stream == "lm" else self._with_images_only(body)
        self._splices = (*self._splices, splice)
        self._context = [splice.hook, *self._context]  # first: before any model.hooks() edit
        self._context_bodies = [splice.body, *self._context_bodies]

    def _with_images_only(self, body: _runner.Body) -> _runner.Body:
        """``body`` skipped in runs of a text-only batch (the vision tower and projector do not run)."""

        def vision_body(tracer: Any) -> None:
            batch = self._state.batch
            if batch is None or self._has_images(batch):
                body(tracer)

        return vision_body

    def reset_saes(self, act_names: str | Sequence[str] | None = None) -> None:
        """Remove the SAEs spliced at these hook names (default: all), restoring each SAE's
        ``use_error_term``.

        Examples:
            >>> model.reset_saes()                              # doctest: +SKIP
            >>> model.reset_saes("blocks.1.hook_resid_post")    # doctest: +SKIP
        """
        if act_names is None:
            self._remove_splices(list(self._splices))
            return
        names = [act_names] if isinstance(act_names, str) else list(act_names)
        spliced = {s.point.name: s for s in self._splices}
        chosen = []
        for name in names:
            canonical = self.hook_points.resolve(name).name
            if canonical not in spliced:
                raise ValueError(f"No SAE is spliced at {canonical}; spliced: {sorted(spliced) or 'none'}.")
            chosen.append(spliced[canonical])
        self._remove_splices(chosen)

    def _remove_splices(self, splices: list[Splice]) -> None:
        for splice in splices:
            splice.sae.use_error_term = splice.previous_error_term
        self._splices = tuple(s for s in self._splices if s not in splices)
        hooks = [s.hook for s in splices]
        bodies = [s.body for s in splices]
        self._context = [h for h in self._context if not any(h is g for g in hooks)]
        self._context_bodies = [b for b in self._context_bodies if not any(b is c for c in bodies)]

    @contextlib.contextmanager
    def saes(
        self, saes: Any | Sequence[Any] = (), *, reset_saes_end: bool = True, use_error_term: bool = False
    ) -> Iterator[Any]:
        """Splice SAEs for the block (each at its ``cfg.metadata.hook_name``); on leaving, remove them
        and put back any SAE they replaced.

        Examples:
            >>> with model.saes([sae]):                                   # doctest: +SKIP
            ...     out = model.generate(batch, max_new_tokens=5)
        """
        chosen = list(saes) if isinstance(saes, (list, tuple)) else [saes]
        before = list(self._splices)
        try:
            for sae in chosen:
                self.add_sae(sae, use_error_term=use_error_term)
            yield self
        finally:
            if reset_saes_end:
                added = [s for s in self._splices if s not in before]
                self._remove_splices(added)
                for old in before:
                    if old not in self._splices:  # replaced in the block: splice it again
                        self.add_sae(
                            old.sae,
                            old.use_error_term,
                            hook_name=old.point.name,
                            positions=old.selector,
                        )
                        self._splices[-1].previous_error_term = old.previous_error_term

    def run_with_saes(
        self,
        inputs: Any = None,
        *,
        saes: Any | Sequence[Any] = (),
        use_error_term: bool = False,
        **kwargs: Any,
    ) -> Any:
        """:meth:`~hooked_mllm.HookedMLLM.run_with_hooks` with these SAEs spliced for the one run.

        Examples:
            >>> logits = model.run_with_saes(batch, saes=[sae])   # doctest: +SKIP
        """
        with self.saes(saes, use_error_term=use_error_term):
            return self.run_with_hooks(inputs, **kwargs)

    def run_with_cache_with_saes(
        self,
        inputs: Any = None,
        *,
        saes: Any | Sequence[Any] = (),
        use_error_term: bool = False,
        **kwargs: Any,
    ) -> Any:
        """:meth:`~hooked_mllm.HookedMLLM.run_with_cache` with these SAEs spliced for the one run; the
        cache holds the points inside them (``<hook>.hook_sae_acts_post`` ...) too.

        Examples:
            >>> logits, cache = model.run_with_cache_with_saes(batch, saes=[sae])   # doctest: +SKIP
            >>> acts = cache[f"{sae.cfg.metadata.hook_name}.hook_sae_acts_post"]     # doctest: +SKIP
        """
        with self.saes(saes, use_error_term=use_error_term):
            return self.run_with_cache(inputs, **kwargs)

    # -- the run path ------------------------------------------------------------------

    def _inner_points(self) -> dict[str, Splice]:
        return {name: s for s in self._splices for name in s.names()}

    def _bind(self, specs: Iterable[Any], kind: str = "fwd_hooks") -> list[_runner.HookFn]:
        """``(name_or_filter, fn)`` pairs as bound hooks; names inside spliced SAEs (also those a
        predicate or a list selects) become hooks run by the splice."""
        inner = self._inner_points()
        if not inner:
            return _runner.bind(self.hook_points, specs, kind)
        plain: list[Any] = []
        extra: list[_runner.HookFn] = []
        for spec in specs:
            if not (isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1])):
                plain.append(spec)  # refused by _runner.bind, saying what to pass
                continue
            target, fn = spec
            if isinstance(target, str) and target in inner:
                names = [target]
            elif isinstance(target, (str, tuple)):
                plain.append(spec)
                continue
            elif callable(target):
                names = [n for n in inner if target(n)]
                if any(target(p.name) for p in self.hook_points) or not names:
                    plain.append(spec)
            else:
                rest, names = _split_names(target, inner)
                if rest or not names:
                    plain.append((rest, fn))
            if names and kind != "fwd_hooks":
                raise ValueError(
                    f"{names[0]} is a hook point inside a spliced SAE; only forward hooks reach those."
                )
            extra.extend(_runner.HookFn(inner[n].point, _Inner(n, fn)) for n in names)
        return _runner.bind(self.hook_points, plain, kind) + extra

    def _cache_points(
        self, names_filter: Any, positions: Any = None, batch: Any = None
    ) -> tuple[Any, list[str]]:
        """``names_filter`` without the names inside spliced SAEs (None keeps every model point), and
        those names (all of them for None; a filter's leave out SAEs on the vision tower and projector
        when ``batch`` has no images, as for model points); refuses ``positions`` for the points inside
        an SAE spliced at chosen positions (they have no sequence axis)."""
        inner = self._inner_points()
        if (
            batch is not None
            and not self._has_images(batch)
            and (names_filter is None or callable(names_filter))
        ):
            inner = {name: s for name, s in inner.items() if s.point.stream == "lm"}
        rest: Any
        if not inner or names_filter is None or isinstance(names_filter, tuple):
            rest, chosen = names_filter, list(inner)
        elif isinstance(names_filter, str):
            rest, chosen = (names_filter, []) if names_filter not in inner else ([], [names_filter])
        elif callable(names_filter):
            chosen = [n for n in inner if names_filter(n)]
            model_points = any(names_filter(p.name) for p in self.hook_points)
            rest = [] if chosen and not model_points else names_filter
        else:
            rest, chosen = _split_names(names_filter, inner)
        positional = [n for n in chosen if inner[n].selector is not None]
        if positions is not None and positional:
            raise ValueError(
                f"{positional[0]} is inside an SAE spliced at chosen positions: it holds [n_selected, ...] "
                "with no sequence axis for positions= to select; cache it without positions, or leave it "
                "out of names_filter."
            )
        return rest, chosen

    @contextlib.contextmanager
    def _sae_run(self, hooks: list[_runner.HookFn]) -> Iterator[list[_runner.HookFn]]:
        """For one run: the hooks inside SAEs handed to their splices; the rest yielded."""
        inner: dict[str, list[Callable]] = {}
        for hook in hooks:
            if isinstance(hook.fn, _Inner):
                inner.setdefault(hook.fn.name, []).append(hook.fn.fn)
        previous, self._sae_inner = self._sae_inner, inner
        try:
            yield [hook for hook in hooks if not isinstance(hook.fn, _Inner)]
        finally:
            self._sae_inner = previous

    def _splice_fn(self, splice: Splice) -> Callable:
        point, sae = splice.point, splice.sae

        def splice_sae(act: Tensor, hook: HookContext) -> Tensor | None:
            mask = None
            x = act
            if splice.selector is not None:
                mask = splice.selector.step_mask(hook.batch, hook.step, (act.shape[0], act.shape[1]))
                if mask is None:
                    return None
                mask = mask.to(act.device)
                x = act[mask]
            # per-head values [..., heads, d_head] are flattened here, unless the SAE does it (hook_z mode)
            flatten = point.heads is not None and not getattr(sae, "hook_z_reshaping_mode", False)
            if flatten:
                x = x.flatten(-2)
            width = x.shape[-1] * (x.shape[-2] if point.heads is not None and not flatten else 1)
            if width != sae.cfg.d_in:
                raise ValueError(
                    f"The SAE spliced at {point.name} has d_in={sae.cfg.d_in}, but the activation there has "
                    f"width {width}; splice it where its input lives (sae.cfg.metadata.hook_name)."
                )
            if sae.W_enc.device != act.device:
                raise ValueError(
                    f"The SAE spliced at {point.name} is on {sae.W_enc.device}, the activation on "
                    f"{act.device}; move it there (sae.to(model.device))."
                )
            inner_point = dataclasses.replace(point, heads=None, sequence=mask is None and point.sequence)
            fwd_hooks = []
            for sub in SAE_HOOKS:
                name = f"{point.name}.{sub}"
                fns = (self._sae_inner or {}).get(name, [])
                if fns:
                    fwd_hooks.append((sub, _tl_hook(dataclasses.replace(inner_point, name=name), fns, hook)))
            with sae.hooks(fwd_hooks=fwd_hooks, reset_hooks_end=True):
                out = sae(x.to(sae.W_enc.dtype))
            out = out.to(act.dtype)
            if flatten:
                out = out.unflatten(-1, (point.heads, -1))
            if mask is None:
                return out
            new = act.clone()
            new[mask] = out
            return new

        return splice_sae


def _tl_hook(point: HookPoint, fns: list[Callable], outer: HookContext) -> Callable:
    """A TransformerLens hook function (``fn(tensor, hook)``) running our hook functions in order,
    each checked like a hook point's (shape, dtype, device)."""

    def tl_hook(value: Tensor, hook: Any) -> Tensor:
        ctx = HookContext(point.name, point, outer.batch, outer.step, outer.ctx)
        for fn in fns:
            new = fn(value, ctx)
            if new is None:
                continue
            _hook_io.check(point, new, value, f"Hook function {getattr(fn, '__name__', fn)!r}")
            value = new.to(value.dtype)
        return value

    return tl_hook
