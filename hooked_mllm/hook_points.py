"""Canonical hook-point names and where each one lives in the module tree.

A :class:`HookPoint` pairs a TransformerLens-style name (``blocks.3.hook_resid_post``)
with a :class:`Site`: a module path plus ``"input"`` or ``"output"`` (and the element
of a tuple output), an optional head view (``[..., n_heads * d_head]`` shown as
``[..., n_heads, d_head]``), and, for ``hook_resid_mid``, a *base* site so that the
value is ``base + site`` (written back by changing ``site`` only). Names are generated
from the adapter (:mod:`hooked_mllm.architectures`) and the loaded model, so every name
listed exists and fires; :meth:`HookPoints.resolve` rejects anything else with the
close matches.

Contents: :class:`Site`, :class:`HookPoint`, :class:`HookPoints` (the table of one
model), :func:`act_name` (the short ``("resid_post", 3)`` form), :class:`HookContext`
(the ``hook`` argument of a hook function: the point where it fires, and the run), and the
error :class:`HookNameError`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from .architectures.base import Adapter, BlockLayout

if TYPE_CHECKING:
    from .inputs import MultimodalBatch

Stream = Literal["lm", "vision", "projector"]


class HookNameError(KeyError):
    """An unknown or unavailable hook name; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Site:
    """A value on a module: its output (optionally one tuple element) or its first input.

    An output that is a Hugging Face ``ModelOutput`` (a ``PreTrainedModel`` used as a part,
    such as Molmo2's vision adapter) stands for its first field (``last_hidden_state``).
    """

    path: str
    io: Literal["input", "output"] = "output"
    index: int | None = None


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
        sequence: Whether dim 1 is the LM sequence position (position selectors apply).
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


_SHORT = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "z": "blocks.{l}.attn.hook_z",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "pre": "blocks.{l}.mlp.hook_pre",
    "post": "blocks.{l}.mlp.hook_post",
    "normalized": "blocks.{l}.ln1.hook_normalized",
    "ln1": "blocks.{l}.ln1.hook_normalized",
    "ln2": "blocks.{l}.ln2.hook_normalized",
}


# TransformerLens' shorthand (``get_act_name``): aliases, and names for values this library
# does not hook, each with what to use instead.
_TL_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_TL_LAYER_TYPES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_TL_ATTN = ("k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores")
_TL_MLP = ("pre", "post", "mid", "pre_linear")
_TL_ONLY = ("rot_k", "rot_q", "result", "attn_scores", "mid", "pre_linear", "scale", "pos_embed")
_TL_HINTS = (
    (
        r"blocks\.\d+\.attn\.hook_result$",
        "per-head results are not a hook point here: call "
        "cache.compute_head_results() (hook_z times W_O, per head) or use cache.stack_head_results()",
    ),
    (
        r"\.attn\.hook_attn_scores$",
        "pre-softmax attention scores are not exposed; attn.hook_pattern holds the post-softmax pattern",
    ),
    (
        r"\.attn\.hook_rot_[qk]$",
        "rotated queries/keys are not exposed; attn.hook_q / attn.hook_k are the "
        "projections before the rotary embedding",
    ),
    (
        r"(^|\.)hook_scale$",
        "norm scales are not hook points; ln1/ln2/ln_final.hook_normalized are, and "
        "cache.apply_ln_to_stack recomputes the scale from the cached residual",
    ),
    (
        r"\.mlp\.hook_mid$",
        "SoLU's mid activation does not exist in these models; mlp.hook_pre and mlp.hook_post do",
    ),
    (
        r"\.mlp\.hook_pre_linear$",
        "the up projection's output is not a hook point; mlp.hook_pre (first / gate "
        "projection output) and mlp.hook_post (the down projection's input) are",
    ),
    (
        r"^hook_pos_embed$",
        "these models have no learned position embedding (rotary); hook_embed is the token "
        "embedding and blocks.0.hook_resid_pre the embedding with image features merged",
    ),
)


def tl_hint(name: str) -> str | None:
    """What to use instead of a TransformerLens hook name this library does not offer, or None.

    Examples:
        >>> tl_hint("blocks.0.attn.hook_attn_scores").startswith("pre-softmax")
        True
    """
    for pattern, hint in _TL_HINTS:
        if re.search(pattern, name):
            return hint
    return None


def act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """The canonical name for TransformerLens' short form (its ``utils.get_act_name``).

    Accepts TransformerLens' aliases (``"attn"`` for the pattern, ``"key"``, ``"mlp_post"``...)
    and compact forms (``"k6"``, ``"normalized3ln2"``); a full name comes back unchanged.
    Values TransformerLens hooks that this library does not (``"attn_scores"``,
    ``"result"``, ``"scale"``...) get TransformerLens' name, which lookups then refuse with
    what to use instead (:func:`tl_hint`). Negative layers are resolved by the cache.

    Examples:
        >>> act_name("resid_post", 3)
        'blocks.3.hook_resid_post'
        >>> act_name("embed")
        'hook_embed'
        >>> act_name("k6"), act_name("normalized", 2, "ln2"), act_name("attn", 1)
        ('blocks.6.attn.hook_k', 'blocks.2.ln2.hook_normalized', 'blocks.1.attn.hook_pattern')
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    if layer is None:
        match = re.match(r"([a-z]+)(\d+)([a-z]?.*)", name)
        if match is not None:
            name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3) or None
    name = _TL_ALIASES.get(name, name)
    layer_type = _TL_LAYER_TYPES.get(layer_type, layer_type) if layer_type is not None else None
    if name == "normalized" and layer is not None and layer_type in ("ln1", "ln2"):
        name = layer_type
    if name == "normalized" and layer is None:
        return "ln_final.hook_normalized"
    if name in _SHORT:
        if layer is None:
            raise ValueError(f"{name!r} needs a layer index, e.g. ({name!r}, 0)")
        return _SHORT[name].format(l=layer)
    if layer is None and name in ("embed", "logits"):
        return f"hook_{name}"
    if name in _TL_ONLY:  # TransformerLens' own name; lookups refuse it with a hint
        if name in _TL_ATTN:
            layer_type = "attn"
        elif name in _TL_MLP:
            layer_type = "mlp"
        full = (f"blocks.{layer}." if layer is not None else "") + (f"{layer_type}." if layer_type else "")
        full += f"hook_{name}"
        return f"ln_final.{full}" if name == "scale" and layer is None else full
    if layer is None and layer_type is None:
        return name
    raise HookNameError(
        f"Unknown short hook name {name!r}; known: {', '.join(sorted(_SHORT))}, embed, logits "
        "(and TransformerLens' aliases: attn, key, query, value, mlp_pre, mlp_post)"
    )


def _block_points(
    prefix: str, path: str, block: BlockLayout, layer: int, n_heads: int, n_kv: int, stream: Stream
) -> list[HookPoint]:
    """The hook points of one pre-norm block at module ``path``, in forward order."""

    def p(name: str, site: Site, **kw: Any) -> HookPoint:
        return HookPoint(name=f"{prefix}{name}", site=site, layer=layer, stream=stream, **kw)

    def sub(rel: str) -> str:
        return f"{path}.{rel}"

    attn_out = (
        Site(sub(block.attn_out))
        if block.attn_out is not None
        else Site(sub(block.attn), "output", block.attn_index)
    )
    attn_scale = sub(block.attn_scale) if block.attn_scale is not None else None
    mlp_scale = sub(block.mlp_scale) if block.mlp_scale is not None else None
    points = [
        p("hook_resid_pre", Site(path, "input")),
        p("ln1.hook_normalized", Site(sub(block.ln1))),
        p("attn.hook_q", Site(sub(block.q)), heads=n_heads) if block.q is not None else None,
        p("attn.hook_k", Site(sub(block.k)), heads=n_kv) if block.k is not None else None,
        p("attn.hook_v", Site(sub(block.v)), heads=n_kv) if block.v is not None else None,
        p("attn.hook_z", Site(sub(block.o), "input"), heads=n_heads or None),  # 0: head count unknown
        p(
            "attn.hook_pattern",
            Site(sub(block.attn), "output", block.pattern_index),
            writable=False,
            needs_eager=True,
        )
        if block.pattern_index is not None
        else None,
        p("hook_attn_out", attn_out, scale=attn_scale),
        p("hook_resid_mid", attn_out, base=Site(path, "input"), scale=attn_scale),
        p("ln2.hook_normalized", Site(sub(block.ln2)))
        if block.ln2 is not None
        else None,  # None: parallel block
        p("mlp.hook_pre", Site(sub(block.mlp_pre))),
        p("mlp.hook_post", Site(sub(block.mlp_down), "input")),
        p("hook_mlp_out", Site(sub(block.mlp_out or block.mlp)), scale=mlp_scale),
        p("hook_resid_post", Site(path)),
    ]
    return [point for point in points if point is not None]


def _cross_block_points(
    path: str, block: BlockLayout, layer: int, n_heads: int, n_kv: int
) -> list[HookPoint]:
    """The hook points of one gated cross-attention layer (Mllama) at module ``path``.

    The layer computes ``mid = pre + tanh(g_attn) * cross_attn(ln1(pre), vision)`` and
    ``post = mid + tanh(g_mlp) * row_mask * mlp(ln2(mid))``. ``hook_cross_attn_out`` and
    ``hook_mlp_out`` are the modules' outputs, before the gates (and the MLP's row mask,
    zero at text positions that see no image); ``hook_resid_mid`` is read at the input
    of ``ln2`` and is read-only (a replacement there would not reach the residual).
    ``cross_attn.hook_k`` / ``hook_v`` run over the vision states (one row per image tile),
    not the sequence.
    """

    def p(name: str, site: Site, **kw: Any) -> HookPoint:
        return HookPoint(name=f"blocks.{layer}.{name}", site=site, layer=layer, stream="lm", **kw)

    # Mllama's gated cross-attention layers are sequential blocks: a norm before the MLP too
    assert block.ln2 is not None, f"cross-attention block {path}: ln2 is None"

    def sub(rel: str) -> str:
        return f"{path}.{rel}"

    points = [
        p("hook_resid_pre", Site(path, "input")),
        p("ln1.hook_normalized", Site(sub(block.ln1))),
        p("cross_attn.hook_q", Site(sub(block.q)), heads=n_heads) if block.q is not None else None,
        p("cross_attn.hook_k", Site(sub(block.k)), heads=n_kv, sequence=False)
        if block.k is not None
        else None,
        p("cross_attn.hook_v", Site(sub(block.v)), heads=n_kv, sequence=False)
        if block.v is not None
        else None,
        p("cross_attn.hook_z", Site(sub(block.o), "input"), heads=n_heads),
        p(
            "cross_attn.hook_pattern",
            Site(sub(block.attn), "output", block.pattern_index),
            writable=False,
            needs_eager=True,
        )
        if block.pattern_index is not None
        else None,
        p("hook_cross_attn_out", Site(sub(block.attn), "output", block.attn_index)),
        p("hook_resid_mid", Site(sub(block.ln2), "input"), writable=False),
        p("ln2.hook_normalized", Site(sub(block.ln2))),
        p("mlp.hook_pre", Site(sub(block.mlp_pre))),
        p("mlp.hook_post", Site(sub(block.mlp_down), "input")),
        p("hook_mlp_out", Site(sub(block.mlp_out or block.mlp))),
        p("hook_resid_post", Site(path)),
    ]
    return [point for point in points if point is not None]


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
        if modules.vision_embed is not None:
            points.append(
                HookPoint(
                    name="vision.hook_embed", site=Site(modules.vision_embed), stream="vision", sequence=False
                )
            )
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
        if modules.projector is not None:
            points.append(
                HookPoint(
                    name="projector.hook_in",
                    site=Site(modules.projector, "input"),
                    stream="projector",
                    sequence=False,
                )
            )
            points.append(
                HookPoint(
                    name="projector.hook_out",
                    site=Site(modules.projector),
                    stream="projector",
                    sequence=False,
                )
            )
        points.append(HookPoint(name="hook_embed", site=Site(modules.embed)))
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
        points.append(HookPoint(name="ln_final.hook_normalized", site=Site(modules.final_norm)))
        points.append(HookPoint(name="hook_logits", site=Site(modules.unembed)))
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


_ALL_CANONICAL_FORMS = frozenset(
    {
        "hook_embed",
        "ln_final.hook_normalized",
        "hook_logits",
        "vision.hook_embed",
        "projector.hook_in",
        "projector.hook_out",
        "blocks.{l}.hook_cross_attn_out",
    }
    | {f"blocks.{{l}}.cross_attn.hook_{x}" for x in ("q", "k", "v", "z", "pattern")}
    | {v.replace("{l}", "{l}") for v in _SHORT.values()}
    | {"vision." + v for v in _SHORT.values()}
)


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

    def layer(self) -> int:
        """The block index of this hook point (error for points outside blocks)."""
        if self.point.layer is None:
            raise ValueError(f"{self.name} is not inside a block, so it has no layer")
        return self.point.layer

    @property
    def is_prompt(self) -> bool:
        """Whether this is the prompt forward (not a generated-token step)."""
        return self.step == 0
