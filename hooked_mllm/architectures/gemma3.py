"""Gemma 3 (``Gemma3ForConditionalGeneration``, e.g. google/gemma-3-4b-it).

Module tree (transformers 5)::

    Gemma3ForConditionalGeneration
    ├── model: Gemma3Model
    │   ├── vision_tower: SiglipVisionModel
    │   │   ├── embeddings                            -> vision.hook_embed
    │   │   ├── encoder.layers[i]: SiglipEncoderLayer
    │   │   │   ├── layer_norm1, self_attn{q,k,v,out}_proj
    │   │   │   └── layer_norm2, mlp{fc1, fc2}
    │   │   └── post_layernorm
    │   ├── multi_modal_projector: Gemma3MultiModalProjector  -> projector.hook_in / hook_out
    │   │   └── avg_pool (patches -> mm_tokens_per_image), mm_soft_emb_norm, mm_input_projection_weight
    │   └── language_model: Gemma3TextModel
    │       ├── embed_tokens: Gemma3TextScaledWordEmbedding (x sqrt(d_model) inside)  -> hook_embed
    │       ├── layers[i]: Gemma3DecoderLayer
    │       │   ├── input_layernorm -> self_attn{q,k,v,o}_proj (+ q_norm, k_norm)
    │       │   ├── post_attention_layernorm          -> hook_attn_out (what the residual adds)
    │       │   ├── pre_feedforward_layernorm         -> ln2.hook_normalized
    │       │   └── mlp{gate,up,down}_proj -> post_feedforward_layernorm  -> hook_mlp_out
    │       └── norm                                  -> ln_final.hook_normalized
    └── lm_head                                       -> hook_logits

Sandwich norms: the block computes ``mid = pre + post_attention_layernorm(attn(ln1(pre)))``
and ``post = mid + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(mid)))``, so
``hook_attn_out`` / ``hook_mlp_out`` are the post-norms' outputs and the residual
identities hold. ``attn.hook_z`` is before ``o_proj``, so ``z @ W_O`` is *not*
``hook_attn_out`` here (the post-attention norm lies between). Gemma's RMSNorm scales by
``1 + weight`` (``norm_offset=1``).

Image tokens: ``<start_of_image>`` + ``mm_tokens_per_image`` (256) ``<image_soft_token>``
+ ``<end_of_image>``; the projector average-pools the SigLIP patch grid to a square
``sqrt(256) x sqrt(256)`` grid, row-major. The processor's ``token_type_ids`` mark image
tokens, which attend to each other bidirectionally. Layers alternate sliding-window and
global attention.
"""

from __future__ import annotations

from .base import Adapter, InputLayout, Metadata, ModuleLayout
from .blocks import CLIP_BLOCK, GEMMA_BLOCK

GEMMA3 = Adapter(
    name="gemma3",
    config_classes=("Gemma3Config",),
    modules=ModuleLayout(
        block=GEMMA_BLOCK,
        vision_layers="model.vision_tower.encoder.layers",
        vision_embed="model.vision_tower.embeddings",
        vision_block=CLIP_BLOCK,
        projector="model.multi_modal_projector",
        hidden_states_normed=True,
    ),
    inputs=InputLayout(nested_images=True),
    about=Metadata(
        test_model="tiny random from google/gemma-3-4b-it's config (processor: Gemma3ImageProcessorPil)",
        notes="Sandwich norms: attn_out / mlp_out are the post-norms' outputs; RMSNorm (1 + w).",
    ),
)
