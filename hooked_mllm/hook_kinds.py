"""The table of hook kinds: what each kind of hook point is, in one place.

Purpose:
    A hook point is a kind (``attn.hook_q``, ``hook_resid_post``...) at a place (a block of the language
    model or of the vision tower, or the model itself). Per kind, this table holds its generic name, its
    TransformerLens short form, the rule that finds its :class:`Site` in a block's layout
    (:class:`~hooked_mllm.architectures.BlockLayout`) or the model's
    (:class:`~hooked_mllm.architectures.ModuleLayout`), its shape, its sequence axis, whether it is
    writable and whether it needs eager attention.

Connections:
    Read by :meth:`hooked_mllm.hook_points.HookPoints.build` (the points of one model), the name grammar
    (:mod:`hooked_mllm.tl_names`: short forms), :mod:`hooked_mllm.reference` (shapes) and caching
    (:mod:`hooked_mllm._runtime.caching`: the sequence axis positions select on). Adding a kind is one
    entry here and, where its module is not found by an existing layout field, that field in the adapters
    (docs/hook_points.md, "Adding a hook point").

Contents:
    :class:`Site`, :class:`HookKind`, :data:`BLOCK_KINDS` (a decoder or vision block, forward order),
    :data:`CROSS_KINDS` (a gated cross-attention layer), :data:`MODEL_KINDS` (outside blocks),
    :func:`generic_forms`.

Examples:
    >>> from hooked_mllm.architectures import BlockLayout
    >>> kind = BLOCK_KINDS_BY_NAME["attn.hook_q"]
    >>> kind.short, kind.shape
    ('q', '[batch, pos, n_heads, d_head]')
    >>> kind.site(BlockLayout(), "model.layers.0")["site"].path
    'model.layers.0.self_attn.q_proj'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .architectures.base import BlockLayout, ModuleLayout


@dataclass(frozen=True)
class Site:
    """A value on a module: its output (optionally one tuple element) or its first input.

    An output that is a Hugging Face ``ModelOutput`` (a ``PreTrainedModel`` used as a part,
    such as Molmo2's vision adapter) stands for its first field (``last_hidden_state``).
    """

    path: str
    io: Literal["input", "output"] = "output"
    index: int | None = None


#: A site rule: from a layout and the block's module path, the :class:`~hooked_mllm.hook_points.HookPoint`
#: fields that place the value (``site``, and ``base`` / ``scale`` for sums and layer scales), or None
#: where the layout has no such value.
SiteRule = Callable[[Any, str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class HookKind:
    """One kind of hook point.

    Attributes:
        name: The generic name inside a block (``"attn.hook_q"``: ``blocks.{l}.attn.hook_q``), or the full
            name outside blocks (``"hook_embed"``).
        short: TransformerLens' short form (``act_name("q", 3)``), or None.
        site: The site rule over the block's :class:`~hooked_mllm.architectures.BlockLayout` (or, outside
            blocks, the :class:`~hooked_mllm.architectures.ModuleLayout`) and the block's path.
        shape: The value's shape on the language-model stream (vision blocks read ``batch, pos`` as
            ``n_images, n_patches``).
        heads: ``"q"`` or ``"kv"``: the last axis splits into that many heads (``[..., heads, d_head]``).
        seq_axis: The axis that is the sequence position (position selectors apply there), or None.
        writable: Whether a hook may return a replacement.
        needs_eager: Whether the value exists only under eager attention (patterns).
    """

    name: str
    short: str | None
    site: SiteRule
    shape: str = "[batch, pos, d_model]"
    heads: Literal["q", "kv"] | None = None
    seq_axis: int | None = 1
    writable: bool = True
    needs_eager: bool = False


def _at(field: str, io: Literal["input", "output"] = "output") -> SiteRule:
    """The rule "the module at ``block.<field>``" (None where the layout leaves it out)."""

    def rule(block: Any, path: str) -> dict[str, Any] | None:
        rel = getattr(block, field)
        return None if rel is None else {"site": Site(f"{path}.{rel}", io)}

    return rule


def _block_io(io: Literal["input", "output"]) -> SiteRule:
    return lambda block, path: {"site": Site(path, io)}


def _attn_out(block: BlockLayout, path: str) -> Site:
    if block.attn_out is not None:
        return Site(f"{path}.{block.attn_out}")
    return Site(f"{path}.{block.attn}", "output", block.attn_index)


def _scaled(block: BlockLayout, path: str, field: str) -> str | None:
    rel = getattr(block, field)
    return None if rel is None else f"{path}.{rel}"


def _pattern(block: BlockLayout, path: str) -> dict[str, Any] | None:
    if block.pattern_index is None:
        return None
    return {"site": Site(f"{path}.{block.attn}", "output", block.pattern_index)}


_HEADS_Q = "[batch, pos, n_heads, d_head]"
_HEADS_KV = "[batch, pos, n_kv_heads, d_head]"
_PATTERN = "[batch, n_heads, query_pos, key_pos]"

#: The hook points of a pre-norm decoder (or vision) block, in forward order.
BLOCK_KINDS: tuple[HookKind, ...] = (
    HookKind("hook_resid_pre", "resid_pre", _block_io("input")),
    HookKind("ln1.hook_normalized", "ln1", _at("ln1")),
    HookKind("attn.hook_q", "q", _at("q"), _HEADS_Q, heads="q"),
    HookKind("attn.hook_k", "k", _at("k"), _HEADS_KV, heads="kv"),
    HookKind("attn.hook_v", "v", _at("v"), _HEADS_KV, heads="kv"),
    HookKind("attn.hook_z", "z", _at("o", "input"), _HEADS_Q, heads="q"),
    HookKind(
        "attn.hook_pattern", "pattern", _pattern, _PATTERN, seq_axis=2, writable=False, needs_eager=True
    ),
    HookKind(
        "hook_attn_out",
        "attn_out",
        lambda b, path: {"site": _attn_out(b, path), "scale": _scaled(b, path, "attn_scale")},
    ),
    HookKind(
        "hook_resid_mid",
        "resid_mid",
        lambda b, path: {
            "site": _attn_out(b, path),
            "base": Site(path, "input"),
            "scale": _scaled(b, path, "attn_scale"),
        },
    ),
    HookKind("ln2.hook_normalized", "ln2", _at("ln2")),  # None: a parallel block
    HookKind("mlp.hook_pre", "pre", _at("mlp_pre"), "[batch, pos, d_mlp]"),
    HookKind("mlp.hook_post", "post", _at("mlp_down", "input"), "[batch, pos, d_mlp]"),
    HookKind(
        "hook_mlp_out",
        "mlp_out",
        lambda b, path: {
            "site": Site(f"{path}.{b.mlp_out or b.mlp}"),
            "scale": _scaled(b, path, "mlp_scale"),
        },
    ),
    HookKind("hook_resid_post", "resid_post", _block_io("output")),
)

_VISION_KV = "[batch * n_images * n_tiles, vision_pos, n_kv_heads, d_head]"

#: The hook points of a gated cross-attention layer (Mllama), in forward order: keys and values run over
#: the vision states (no sequence axis), ``hook_resid_mid`` is read at the MLP norm's input (read-only).
CROSS_KINDS: tuple[HookKind, ...] = (
    HookKind("hook_resid_pre", None, _block_io("input")),
    HookKind("ln1.hook_normalized", None, _at("ln1")),
    HookKind("cross_attn.hook_q", None, _at("q"), _HEADS_Q, heads="q"),
    HookKind("cross_attn.hook_k", None, _at("k"), _VISION_KV, heads="kv", seq_axis=None),
    HookKind("cross_attn.hook_v", None, _at("v"), _VISION_KV, heads="kv", seq_axis=None),
    HookKind("cross_attn.hook_z", None, _at("o", "input"), _HEADS_Q, heads="q"),
    HookKind(
        "cross_attn.hook_pattern",
        None,
        _pattern,
        "[batch, n_heads, query_pos, vision_pos]",
        seq_axis=2,
        writable=False,
        needs_eager=True,
    ),
    HookKind(
        "hook_cross_attn_out",
        None,
        lambda b, path: {"site": Site(f"{path}.{b.attn}", "output", b.attn_index)},
    ),
    HookKind("hook_resid_mid", None, _at("ln2", "input"), writable=False),
    HookKind("ln2.hook_normalized", None, _at("ln2")),
    HookKind("mlp.hook_pre", None, _at("mlp_pre"), "[batch, pos, d_mlp]"),
    HookKind("mlp.hook_post", None, _at("mlp_down", "input"), "[batch, pos, d_mlp]"),
    HookKind("hook_mlp_out", None, lambda b, path: {"site": Site(f"{path}.{b.mlp_out or b.mlp}")}),
    HookKind("hook_resid_post", None, _block_io("output")),
)


def _module(field: str, io: Literal["input", "output"] = "output") -> SiteRule:
    """The rule "the module at ``modules.<field>``" over a :class:`ModuleLayout` (None where unset)."""

    def rule(modules: ModuleLayout, path: str) -> dict[str, Any] | None:
        where = getattr(modules, field)
        return None if where is None else {"site": Site(where, io)}

    return rule


#: The hook points outside blocks, by name.
MODEL_KINDS: dict[str, HookKind] = {
    kind.name: kind
    for kind in (
        HookKind(
            "vision.hook_embed",
            None,
            _module("vision_embed"),
            "[n_images, n_patches, vision_d_model]",
            seq_axis=None,
        ),
        HookKind(
            "projector.hook_in",
            None,
            _module("projector", "input"),
            "[n_images, n_patches, vision_d_model]",
            seq_axis=None,
        ),
        HookKind(
            "projector.hook_out",
            None,
            _module("projector"),
            "[n_images, n_image_tokens, d_model]",
            seq_axis=None,
        ),
        HookKind("hook_embed", "embed", _module("embed")),
        HookKind("ln_final.hook_normalized", None, _module("final_norm")),
        HookKind("hook_logits", "logits", _module("unembed"), "[batch, pos, d_vocab]"),
    )
}

BLOCK_KINDS_BY_NAME: dict[str, HookKind] = {kind.name: kind for kind in BLOCK_KINDS}
CROSS_KINDS_BY_NAME: dict[str, HookKind] = {kind.name: kind for kind in CROSS_KINDS}


def generic_forms() -> frozenset[str]:
    """Every canonical name with ``{l}`` for the layer: the model's, the LM blocks', the vision blocks' and
    the cross-attention layers' (what some architecture may offer).

    Examples:
        >>> "vision.blocks.{l}.attn.hook_pattern" in generic_forms()
        True
    """
    blocks = {f"blocks.{{l}}.{kind.name}" for kind in (*BLOCK_KINDS, *CROSS_KINDS)}
    vision = {f"vision.blocks.{{l}}.{kind.name}" for kind in BLOCK_KINDS}
    return frozenset(MODEL_KINDS) | blocks | vision


def kind_of(generic: str) -> HookKind | None:
    """The kind of a generic name (``"blocks.{l}.attn.hook_q"``, ``"hook_logits"``), or None.

    Examples:
        >>> kind_of("vision.blocks.{l}.mlp.hook_pre").shape
        '[batch, pos, d_mlp]'
    """
    if generic in MODEL_KINDS:
        return MODEL_KINDS[generic]
    stem = generic.removeprefix("vision.").removeprefix("blocks.{l}.")
    return BLOCK_KINDS_BY_NAME.get(stem) or CROSS_KINDS_BY_NAME.get(stem)
