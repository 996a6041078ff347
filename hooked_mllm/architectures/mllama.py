"""Mllama / Llama 3.2 Vision (``MllamaForConditionalGeneration``, e.g.
meta-llama/Llama-3.2-11B-Vision-Instruct).

Module tree (transformers 5)::

    MllamaForConditionalGeneration
    ├── model: MllamaModel
    │   ├── vision_model: MllamaVisionModel
    │   │   ├── patch_embedding (Conv2d)               -> vision.hook_embed
    │   │   ├── class_embedding, gated_positional_embedding, pre/post_tile_positional_embedding
    │   │   ├── transformer.layers[i]: MllamaVisionEncoderLayer     -> vision.blocks.{i}
    │   │   │   ├── input_layernorm, self_attn{q,k,v,o}_proj
    │   │   │   └── post_attention_layernorm, mlp{fc1, fc2}
    │   │   ├── global_transformer.layers[j] (gated: tanh(gate_attn), tanh(gate_ffn); not hooked)
    │   │   └── layernorm_pre, layernorm_post
    │   ├── multi_modal_projector: Linear               -> projector.hook_in / hook_out
    │   └── language_model: MllamaTextModel
    │       ├── embed_tokens                            -> hook_embed
    │       ├── layers[l]: MllamaSelfAttentionDecoderLayer         (l not in cross_attention_layers)
    │       │   ├── input_layernorm, self_attn{q,k,v,o}_proj        -> blocks.{l}.attn.*, hook_attn_out
    │       │   └── post_attention_layernorm, mlp{gate,up,down}_proj
    │       ├── layers[l]: MllamaCrossAttentionDecoderLayer        (l in cross_attention_layers)
    │       │   ├── input_layernorm, cross_attn{q,k,v,o}_proj, q_norm, k_norm  -> blocks.{l}.cross_attn.*
    │       │   ├── cross_attn_attn_gate, cross_attn_mlp_gate (scalars)
    │       │   └── post_attention_layernorm, mlp{gate,up,down}_proj
    │       └── norm                                    -> ln_final.hook_normalized
    └── lm_head                                         -> hook_logits

Hook points. Every LM layer is ``blocks.{l}``, in order, cross-attention layers included
(``cfg.n_layers`` counts both kinds). Self-attention layers have the usual points. A
cross-attention layer computes::

    mid  = pre + tanh(cross_attn_attn_gate) * cross_attn(input_layernorm(pre), vision_states)
    post = mid + tanh(cross_attn_mlp_gate) * row_mask * mlp(post_attention_layernorm(mid))

and has ``blocks.{l}.cross_attn.hook_q|k|v|z|pattern`` (queries from the text, keys and
values from the projected vision states: ``hook_k`` / ``hook_v`` are
``[batch * n_images * n_tiles, n_patches + pad, n_kv_heads, d_head]``, one row per image
tile, not per sequence position (and they fire on the prompt only: generation steps reuse
the cached keys);
the pattern is ``[batch, n_heads, pos, vision_token]``) and
``blocks.{l}.hook_cross_attn_out``, the cross-attention module's output **before** the
gate; there is no ``hook_attn_out`` or ``attn.*`` on these layers. ``hook_mlp_out`` is
the MLP's output before its gate and the row mask (``row_mask`` is 0 at text positions
that see no image, i.e. before the first ``<|image|>`` token, where the cross-attention
is uniform). ``hook_resid_mid`` is read at the input of ``post_attention_layernorm`` and is
read-only there. So ``resid_pre + attn_out == resid_mid`` becomes
``resid_pre + tanh(g_attn) * cross_attn_out == resid_mid`` on these layers (the conformance
suite checks exactly that), and ``decompose_resid`` / ``stack_head_results``, which assume
ungated self-attention blocks, do not apply to them. When no image is given, HF skips
the cross-attention layers entirely and their hook points do not fire.

Image tokens: **none in the LM sequence**. Each image is one ``<|image|>`` placeholder
token; the image reaches the text only through the cross-attention layers (keys and
values from ``projector.hook_out``, ``[batch, n_images, n_tiles, n_patches + pad, d_model]``),
and the processor's ``cross_attention_mask`` says which tiles each text position sees.
The batch therefore has no image spans and no image mask (the placeholder is a special
token); ``positions.image(...)``, ``"image"`` and ``cache.image(...)`` raise a
``ValueError`` saying so. Vision hook points see ``[batch * n_images * n_tiles, patches, d]``.

Inputs: ``pixel_values`` ``[batch, max_images, max_tiles, 3, H, W]``, ``aspect_ratio_ids``
and ``aspect_ratio_mask`` split by row; ``cross_attention_mask``
``[batch, pos, max_images, max_tiles]`` is split like the tokens.
"""

from __future__ import annotations

from .base import (
    Adapter,
    BlockLayout,
    CrossAttention,
    InputLayout,
    Metadata,
    ModuleLayout,
    TokenLayout,
    no_grid,
)
from .split import PerRow, Tokens

MLLAMA_VISION_BLOCK = BlockLayout(o="self_attn.o_proj", mlp_pre="mlp.fc1", mlp_down="mlp.fc2", norm="layer")

MLLAMA_CROSS_BLOCK = BlockLayout(
    attn="cross_attn",
    q="cross_attn.q_proj",
    k="cross_attn.k_proj",
    v="cross_attn.v_proj",
    o="cross_attn.o_proj",
)

MLLAMA = Adapter(
    name="mllama",
    config_classes=("MllamaConfig",),
    modules=ModuleLayout(
        block=BlockLayout(),
        vision_layers="model.vision_model.transformer.layers",
        vision_embed="model.vision_model.patch_embedding",
        vision_block=MLLAMA_VISION_BLOCK,
        projector="model.multi_modal_projector",
        hidden_states_normed=True,
        cross=CrossAttention(
            block=MLLAMA_CROSS_BLOCK,
            layers_attr="cross_attention_layers",
            gates=("cross_attn_attn_gate", "cross_attn_mlp_gate"),
        ),
    ),
    tokens=TokenLayout(grid=no_grid, in_sequence=False),
    inputs=InputLayout(
        split={
            "pixel_values": PerRow(),
            "aspect_ratio_ids": PerRow(),
            "aspect_ratio_mask": PerRow(),
            "cross_attention_mask": Tokens(),
        },
        nested_images=True,
    ),
    about=Metadata(
        test_model="tiny random from meta-llama/Llama-3.2-11B-Vision-Instruct's config: 3 LM layers, layer 1 "
        "cross-attention with open gates, 2 local + 1 global vision layers (processor: MllamaProcessor, "
        "MllamaImageProcessorPil)",
        notes="Gated cross-attention layers: blocks.{l}.cross_attn.* and hook_cross_attn_out (before the "
        "tanh gate); no image tokens in the sequence, so image selectors raise. Global vision layers not "
        "hooked.",
    ),
)
