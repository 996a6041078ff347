"""Block layouts that several families share: the CLIP / SigLIP vision block, Pixtral's, Gemma's decoder.

Purpose:
    A :class:`~hooked_mllm.architectures.BlockLayout` names the modules inside one block. Layouts that
    more than one family uses live here, so a family imports a shared layout, never another family's
    file. A Llama-style decoder block is ``BlockLayout()`` (the defaults).

Connections:
    Imported by the adapters (``llava``, ``gemma3``, ``idefics2``, ``paligemma``, ``molmo2``,
    ``mistral3``); read by :mod:`hooked_mllm.hook_kinds` site rules through the adapter.

Contents:
    :data:`CLIP_BLOCK`, :data:`PIXTRAL_BLOCK`, :data:`GEMMA_BLOCK`.

Examples:
    >>> CLIP_BLOCK.o, PIXTRAL_BLOCK.o
    ('self_attn.out_proj', 'attention.o_proj')
"""

from __future__ import annotations

from .base import BlockLayout

__all__ = ["CLIP_BLOCK", "GEMMA_BLOCK", "PIXTRAL_BLOCK"]

#: A CLIP or SigLIP vision encoder layer (LLaVA, Gemma 3, Idefics2, PaliGemma, Molmo2 derive from it).
CLIP_BLOCK = BlockLayout(
    attn="self_attn",
    mlp="mlp",
    ln1="layer_norm1",
    ln2="layer_norm2",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    mlp_pre="mlp.fc1",
    mlp_down="mlp.fc2",
    norm="layer",
)

#: A Pixtral vision layer (Pixtral, Mistral 3).
PIXTRAL_BLOCK = BlockLayout(
    attn="attention",
    mlp="feed_forward",
    ln1="attention_norm",
    ln2="ffn_norm",
    q="attention.q_proj",
    k="attention.k_proj",
    v="attention.v_proj",
    o="attention.o_proj",
    mlp_pre="feed_forward.gate_proj",
    mlp_down="feed_forward.down_proj",
    norm="rms",
)

#: A Gemma 2 / Gemma 3 decoder layer: sandwich norms, RMSNorm ``(1 + w)`` (Gemma 3, PaliGemma 2).
GEMMA_BLOCK = BlockLayout(
    ln2="pre_feedforward_layernorm",
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    norm_offset=1.0,
)
