"""The TransformerLens name grammar: ``act_name``, short forms, aliases, hints for names not offered.

Purpose:
    TransformerLens names a value ``blocks.3.hook_resid_post`` or, shorter, ``("resid_post", 3)``
    (its ``utils.get_act_name``), with aliases (``"attn"`` for the pattern, ``"key"``, ``"mlp_post"``),
    compact forms (``"k6"``, ``"normalized3ln2"``) and names for values this library does not hook
    (``"attn_scores"``, ``"result"``...). :func:`act_name` turns all of these into canonical names;
    :func:`tl_hint` says what to use instead of a name not offered; :class:`HookNameError` is the error
    an unknown name raises.

Connections:
    The short forms come from the table of hook kinds (:mod:`hooked_mllm.hook_kinds`); used by
    :mod:`hooked_mllm.hook_points` (lookups), :mod:`hooked_mllm.cache` and :mod:`hooked_mllm.patching`.
    ``hooked_mllm.act_name`` and ``hooked_mllm.utils.get_act_name`` are :func:`act_name`.

Examples:
    >>> act_name("resid_post", 3)
    'blocks.3.hook_resid_post'
"""

from __future__ import annotations

import re

from .hook_kinds import BLOCK_KINDS

__all__ = ["SHORT", "HookNameError", "act_name", "tl_hint"]


class HookNameError(KeyError):
    """An unknown or unavailable hook name; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


#: TransformerLens' short forms of block hook points (from the table of hook kinds), with ``{l}`` for the
#: layer; ``"normalized"`` with a layer is ``ln1``'s.
SHORT: dict[str, str] = {kind.short: f"blocks.{{l}}.{kind.name}" for kind in BLOCK_KINDS if kind.short}
SHORT["normalized"] = SHORT["ln1"]


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
    if name in SHORT:
        if layer is None:
            raise ValueError(f"{name!r} needs a layer index, e.g. ({name!r}, 0)")
        return SHORT[name].format(l=layer)
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
        f"Unknown short hook name {name!r}; known: {', '.join(sorted(SHORT))}, embed, logits "
        "(and TransformerLens' aliases: attn, key, query, value, mlp_pre, mlp_post)"
    )
