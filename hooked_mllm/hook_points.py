"""Canonical hook-point names and where each one lives in the module tree.

A :class:`HookPoint` pairs a TransformerLens-style name (``blocks.3.hook_resid_post``)
with a :class:`Site`: a module path plus ``"input"`` or ``"output"`` (and the element
of a tuple output), an optional head view (``[..., n_heads * d_head]`` shown as
``[..., n_heads, d_head]``), and, for ``hook_resid_mid``, a *base* site so that the
value is ``base + site`` (written back by changing ``site`` only). Names are generated
from the adapter (:mod:`hooked_mllm.architectures`) and the loaded model, so every name
listed exists and fires; :meth:`HookPoints.resolve` rejects anything else with the
close matches.

Which kinds of point a block has, and what each kind is, is the table
:mod:`hooked_mllm.hook_kinds`; the TransformerLens name grammar (:func:`act_name`, short forms,
:class:`HookNameError`) is :mod:`hooked_mllm.tl_names` (both importable from here too).

Contents: :class:`HookPoint`, :class:`HookPoints` (the table of one model), :class:`HookContext`
(the ``hook`` argument of a hook function: the point where it fires, and the run).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from . import hook_kinds
from .architectures.base import Adapter, BlockLayout
from .hook_kinds import MODEL_KINDS, HookKind, generic_forms
from .hook_kinds import Site as Site
from .tl_names import HookNameError as HookNameError
from .tl_names import act_name as act_name
from .tl_names import tl_hint as tl_hint

if TYPE_CHECKING:
    from .inputs import MultimodalBatch

Stream = Literal["lm", "vision", "projector"]


@dataclass(frozen=True, kw_only=True)
class HookPoint:
    """One named place where activations can be read and replaced.

    Attributes:
        name: Canonical name, e.g. ``"blocks.3.attn.hook_z"``.
        site: Where the value lives.
        base: For derived sums (``hook_resid_mid``): the value is ``base + site``.
        scale: A parameter path (layer scale): the value is ``site * scale`` (then plus
            ``base``), and a replacement is written back divided by it.
        heads: Split the last dimension into ``[heads, -1]`` (per-head views).
        writable: Whether a hook may return a replacement (or edit the value in place).
        read_only: Why a point is not writable (shown in the error), where that is not obvious.
        needs_eager: Whether the value exists only under eager attention (patterns).
        layer: The block index, or None.
        stream: ``"lm"``, ``"vision"`` or ``"projector"``.
        sequence: Whether the value has an LM sequence axis (position selectors apply).
        seq_axis: That axis (1; 2 for attention patterns ``[batch, heads, query, key]``: the query axis).
    """

    name: str
    site: Site
    base: Site | None = None
    heads: int | None = None
    writable: bool = True
    needs_eager: bool = False
    layer: int | None = None
    stream: Stream = "lm"
    sequence: bool = True
    scale: str | None = None
    read_only: str | None = None
    seq_axis: int = 1


def _points(
    kinds: tuple[HookKind, ...],
    prefix: str,
    path: str,
    block: BlockLayout,
    layer: int,
    heads: dict,
    stream: Stream,
) -> list[HookPoint]:
    """The hook points of one block at module ``path``, one per kind its layout has, in table order."""
    points = []
    for kind in kinds:
        placed = kind.site(block, path)
        if placed is None:
            continue
        points.append(
            HookPoint(
                name=f"{prefix}{kind.name}",
                layer=layer,
                stream=stream,
                heads=heads[kind.heads] or None if kind.heads else None,  # 0: head count unknown
                writable=kind.writable,
                needs_eager=kind.needs_eager,
                sequence=kind.seq_axis is not None,
                seq_axis=kind.seq_axis or 1,
                **placed,
            )
        )
    return points


def _block_points(
    prefix: str, path: str, block: BlockLayout, layer: int, n_heads: int, n_kv: int, stream: Stream
) -> list[HookPoint]:
    """The hook points of one pre-norm block at module ``path`` (``hook_kinds.BLOCK_KINDS``)."""
    return _points(hook_kinds.BLOCK_KINDS, prefix, path, block, layer, {"q": n_heads, "kv": n_kv}, stream)


def _cross_block_points(
    path: str, block: BlockLayout, layer: int, n_heads: int, n_kv: int
) -> list[HookPoint]:
    """The hook points of one gated cross-attention layer (Mllama) at module ``path``
    (``hook_kinds.CROSS_KINDS``).

    The layer computes ``mid = pre + tanh(g_attn) * cross_attn(ln1(pre), vision)`` and
    ``post = mid + tanh(g_mlp) * row_mask * mlp(ln2(mid))``. ``hook_cross_attn_out`` and
    ``hook_mlp_out`` are the modules' outputs, before the gates (and the MLP's row mask,
    zero at text positions that see no image); ``hook_resid_mid`` is read at the input
    of ``ln2`` and is read-only (a replacement there would not reach the residual).
    ``cross_attn.hook_k`` / ``hook_v`` run over the vision states (one row per image tile),
    not the sequence.
    """
    # Mllama's gated cross-attention layers are sequential blocks: a norm before the MLP too
    assert block.ln2 is not None, f"cross-attention block {path}: ln2 is None"
    return _points(
        hook_kinds.CROSS_KINDS, f"blocks.{layer}.", path, block, layer, {"q": n_heads, "kv": n_kv}, "lm"
    )


def _model_point(name: str, modules: Any) -> list[HookPoint]:
    """The hook point ``name`` outside blocks (``hook_kinds.MODEL_KINDS``), if the model has it."""
    kind = MODEL_KINDS[name]
    placed = kind.site(modules, "")
    if placed is None:
        return []
    stream: Stream = (
        "vision" if name.startswith("vision.") else "projector" if name.startswith("projector.") else "lm"
    )
    return [
        HookPoint(
            name=name, stream=stream, sequence=kind.seq_axis is not None, writable=kind.writable, **placed
        )
    ]


class HookPoints:
    """Every hook point of one loaded model, in forward order, looked up by name.

    Examples:
        >>> points = HookPoints.build(adapter, n_layers=2, n_heads=4, n_kv_heads=2,
        ...                           vision_layers=2, vision_heads=4)   # doctest: +SKIP
        >>> points.resolve("blocks.1.hook_resid_post").site.path          # doctest: +SKIP
        'model.language_model.layers.1'
    """

    def __init__(self, points: Iterable[HookPoint], adapter_name: str = "") -> None:
        self._points: dict[str, HookPoint] = {}
        for point in points:
            if point.name in self._points:
                raise ValueError(f"duplicate hook point {point.name!r}")
            self._points[point.name] = point
        self._order = {name: i for i, name in enumerate(self._points)}
        self.adapter_name = adapter_name

    @classmethod
    def build(
        cls,
        adapter: Adapter,
        *,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int,
        vision_layers: int = 0,
        vision_heads: int = 0,
        cross_layers: frozenset[int] = frozenset(),
        vision_layers_read: int | None = None,
    ) -> HookPoints:
        """Generate the table from an adapter and the model's sizes (vision first).

        ``cross_layers`` are the LM layers built as the adapter's ``modules.cross.block`` (gated
        cross-attention to the vision states, :func:`_cross_block_points`).
        ``vision_layers_read``: how many vision layers reach the projector
        (:meth:`~hooked_mllm.architectures.Adapter.vision_layers_read`); the points of later
        layers are read-only, since a write there could not change the output.
        """
        points: list[HookPoint] = []
        modules = adapter.modules
        points += _model_point("vision.hook_embed", modules)
        if modules.vision_layers is not None and modules.vision_block is not None:
            for layer in range(vision_layers):
                block = _block_points(
                    f"vision.blocks.{layer}.",
                    f"{modules.vision_layers}.{layer}",
                    modules.vision_block,
                    layer,
                    vision_heads,
                    vision_heads,
                    "vision",
                )
                if vision_layers_read is not None and layer >= vision_layers_read:
                    reason = (
                        "the projector reads the vision tower's hidden state after layer "
                        f"{vision_layers_read - 1} (the config's "
                        f"{adapter.config_keys.vision_feature_layer}), so vision layer {layer} never reaches "
                        f"the output; write vision.blocks.{vision_layers_read - 1}.hook_resid_post instead"
                    )
                    block = [replace(point, writable=False, read_only=reason) for point in block]
                points += [_replace_sequence(point) for point in block]
        points += _model_point("projector.hook_in", modules) + _model_point("projector.hook_out", modules)
        points += _model_point("hook_embed", modules)
        for layer in range(n_layers):
            if layer in cross_layers and modules.cross is not None:
                points += _cross_block_points(
                    f"{modules.lm_layers}.{layer}", modules.cross.block, layer, n_heads, n_kv_heads
                )
                continue
            points += _block_points(
                f"blocks.{layer}.",
                f"{modules.lm_layers}.{layer}",
                modules.block,
                layer,
                n_heads,
                n_kv_heads,
                "lm",
            )
        points += _model_point("ln_final.hook_normalized", modules) + _model_point("hook_logits", modules)
        return cls(points, adapter.name)

    def __iter__(self) -> Iterator[HookPoint]:
        return iter(self._points.values())

    def __len__(self) -> int:
        return len(self._points)

    def __contains__(self, name: object) -> bool:
        return name in self._points

    def names(self) -> list[str]:
        """All names, in forward order."""
        return list(self._points)

    def order(self, name: str) -> int:
        """The forward-order rank of ``name`` (for sorting hooks)."""
        return self._order[name]

    def resolve(self, name: str | tuple) -> HookPoint:
        """The hook point called ``name`` (or ``("resid_post", 3)``); errors list close matches."""
        if isinstance(name, tuple):
            name = act_name(*name)
        point = self._points.get(name)
        if point is not None:
            return point
        raise HookNameError(self._unknown_message(name))

    def select(
        self, names_filter: str | tuple | Iterable[str] | Callable[[str], bool] | None
    ) -> list[HookPoint]:
        """The hook points chosen by a name, a list of names, a predicate, or None (all).

        A predicate that matches nothing is an error, as is any unknown name in a list.
        """
        if names_filter is None:
            return list(self)
        if isinstance(names_filter, (str, tuple)):
            return [self.resolve(names_filter)]
        if callable(names_filter):
            chosen = [point for point in self if names_filter(point.name)]
            if not chosen:
                raise HookNameError(
                    "The names filter matched no hook point; model.hook_names() lists them "
                    f"(e.g. {', '.join(self.names()[:3])}, ...)."
                )
            return chosen
        return sorted((self.resolve(name) for name in names_filter), key=lambda p: self._order[p.name])

    def _unknown_message(self, name: str) -> str:
        hint = tl_hint(name)
        if hint is not None:
            return f"{name!r} is a TransformerLens hook name that this library does not offer: {hint}."
        close = difflib.get_close_matches(name, self._points, n=5, cutoff=0.6)
        match = re.match(r"(vision\.)?blocks\.(\d+)\.", name)
        if match:
            prefix = "vision.blocks" if match.group(1) else "blocks"
            layers = {p.layer for p in self if p.layer is not None and p.name.startswith(prefix + ".")}
            layer = int(match.group(2))
            if layers and layer not in layers:
                return (
                    f"Hook {name!r}: layer {layer} does not exist; this model's {prefix} are "
                    f"numbered 0..{max(layers)}."
                )
        swapped = name.replace(".attn.", ".cross_attn.").replace(".hook_attn_out", ".hook_cross_attn_out")
        if swapped != name and swapped in self._points:
            return (
                f"Hook {name!r}: that layer is a cross-attention layer (it attends to the image, not to the "
                f"sequence); its attention hooks are named like {swapped!r}."
            )
        generic = re.sub(r"\.\d+\.", ".{l}.", name)
        known_forms = {re.sub(r"\.\d+\.", ".{l}.", n) for n in self._points}
        if generic in _ALL_CANONICAL_FORMS and generic not in known_forms:
            return (
                f"Hook {name!r} is a canonical name, but the {self.adapter_name!r} architecture "
                "has no such site."
            )
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"Unknown hook name {name!r}.{hint} model.hook_names() lists all {len(self)}."


def _replace_sequence(point: HookPoint) -> HookPoint:
    return replace(point, sequence=False)


_ALL_CANONICAL_FORMS = generic_forms()


@dataclass
class HookContext:
    """What a hook function learns about where it fires (TransformerLens' ``hook``).

    Attributes:
        name: The hook point's canonical name.
        point: The full :class:`~hooked_mllm.hook_points.HookPoint`.
        batch: The :class:`~hooked_mllm.inputs.MultimodalBatch` being run, if known.
        step: 0 on the prompt forward, ``k`` on the forward producing generated token
            ``k + 1`` (each generated token after the first is one more step).
        ctx: A dict kept for the whole run, for hook functions that share state.
        call: Which call of the hook point's module this is within one forward, from 0. Vision-tower and
            projector points on a batch holding both images and videos fire twice per forward (HF runs
            the tower on the images, call 0, then on the videos, call 1), both on step 0; every other
            point is called once (call 0).
        calls: How many times the module is called in this forward (2 in that case, else 1).

    Examples:
        >>> def steer_late(act, hook: HookContext):
        ...     return act + 1 if hook.layer() >= 2 and hook.is_prompt else None
        >>> resid_post = lambda name: "resid_post" in name
        >>> logits = model.run_with_hooks(batch, fwd_hooks=[(resid_post, steer_late)])  # doctest: +SKIP
    """

    name: str
    point: HookPoint
    batch: MultimodalBatch | None = None
    step: int = 0
    ctx: dict = field(default_factory=dict)
    call: int = 0
    calls: int = 1

    def layer(self) -> int:
        """The block index of this hook point (error for points outside blocks)."""
        if self.point.layer is None:
            raise ValueError(f"{self.name} is not inside a block, so it has no layer")
        return self.point.layer

    @property
    def is_prompt(self) -> bool:
        """Whether this is the prompt forward (not a generated-token step)."""
        return self.step == 0


def join_calls(name: str, values: list[Tensor]) -> Tensor:
    """The values of one hook point's calls in one forward, in call order, concatenated on the first
    (packed) axis: how a vision-tower point called twice (a batch mixing images and videos: the images'
    call, then the videos') is cached.

    Raises:
        ValueError: The calls' shapes differ beyond the first axis (LLaVA-NeXT-Video's projector sees
            pooled video frames, fewer rows than an image tile), so no single tensor holds them.

    Examples:
        >>> join_calls("vision.hook_embed", [torch.zeros(2, 5, 3), torch.zeros(4, 5, 3)]).shape
        torch.Size([6, 5, 3])
    """
    shapes = {tuple(v.shape[1:]) for v in values}
    if len(shapes) > 1:
        listed = ", ".join(str(tuple(v.shape)) for v in values)
        raise ValueError(
            f"{name} runs once per call of its module in this forward (images, then videos) with shapes "
            f"{listed}, which do not stack into one tensor. Run the image rows and the video rows apart "
            "(batch.row(i)), or read each call in a hook function (hook.call says which)."
        )
    return torch.cat(values) if len(values) > 1 else values[0]
