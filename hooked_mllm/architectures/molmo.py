"""Molmo, original release (``MolmoForCausalLM`` from ``trust_remote_code``, e.g. allenai/Molmo-7B-D-0924).

**Not verified.** Molmo's modeling code lives in the checkpoint's repository and loads
only with ``trust_remote_code=True``; this adapter is written from that code's published
module layout and has never run on a Molmo model (there is no conformance model). It is
matched by the config class name ``MolmoConfig`` (``model_type="molmo"``); the test suite
checks only that every hook point's path exists in a module tree of this exact layout.
Natively supported Molmo2 (``Molmo2ForConditionalGeneration``) is a different layout, served by
:mod:`.molmo2`.

Module tree (remote code, OLMo-style blocks)::

    MolmoForCausalLM
    └── model: Molmo
        ├── transformer: ModuleDict
        │   ├── wte: Embedding (base + new embedding parameters)   -> hook_embed
        │   ├── blocks[i]: MolmoSequentialBlock
        │   │   ├── attn_norm                                       -> ln1.hook_normalized
        │   │   ├── att_proj (fused q, k, v)                        (no per-head q / k / v)
        │   │   ├── attn_out (output projection)                    -> attn.hook_z (input), hook_attn_out
        │   │   ├── ff_norm                                         -> ln2.hook_normalized
        │   │   ├── ff_proj (fused gate and up) -> act (SwiGLU) -> ff_out   -> mlp.hook_pre / hook_post / hook_mlp_out
        │   ├── ln_f                                                -> ln_final.hook_normalized
        │   └── ff_out (LM head, untied)                            -> hook_logits
        └── vision_backbone: MolmoVisionBackbone
            ├── image_vit: VisionTransformer (CLIP ViT-L/14 336)
            │   ├── patch_embedding (Linear over flattened patches) -> vision.hook_embed
            │   └── transformer.resblocks[i]{attention_norm, attention{wq,wk,wv,wo}, ffn_norm, feed_forward{w1,w2}}
            ├── image_pooling_2d (attention pooling of 2x2 patches)
            └── image_projector (SwiGLU MLP)                        -> projector.hook_in / hook_out

The attention is a method of the block, not a module, so there is no
``attn.hook_pattern``; ``attn.hook_z`` is the input of ``attn_out``. Image features are
added to the embeddings at the positions given by the processor's ``image_input_idx``;
the config names no image token id, so batches carry no image spans for this adapter
(image selectors select nothing) and vision per-head hook points are not offered.
"""

from __future__ import annotations

from .base import Adapter, BlockLayout

MOLMO_BLOCK = BlockLayout(attn="attn_out", mlp="ff_out", ln1="attn_norm", ln2="ff_norm", q=None, k=None, v=None,
                          o="attn_out", mlp_pre="ff_proj", mlp_down="ff_out", attn_index=None, pattern_index=None)

MOLMO_VIT_BLOCK = BlockLayout(attn="attention", mlp="feed_forward", ln1="attention_norm", ln2="ffn_norm", q=None,
                              k=None, v=None, o="attention.wo", mlp_pre="feed_forward.w1",
                              mlp_down="feed_forward.w2", norm="layer", attn_index=None, pattern_index=None)

MOLMO = Adapter(
    name="molmo",
    config_classes=("MolmoConfig",),
    lm_layers="model.transformer.blocks",
    embed="model.transformer.wte",
    final_norm="model.transformer.ln_f",
    unembed="model.transformer.ff_out",
    block=MOLMO_BLOCK,
    vision_layers="model.vision_backbone.image_vit.transformer.resblocks",
    vision_embed="model.vision_backbone.image_vit.patch_embedding",
    vision_block=MOLMO_VIT_BLOCK,
    projector="model.vision_backbone.image_projector",
    image_grid=lambda n, cfg: None,
    hidden_states_normed=False,
    verified=False,
    test_model="none: remote code (trust_remote_code); only the hook paths are checked on a module tree of "
               "allenai/Molmo-7B-D-0924's layout",
    notes="NOT verified: written from the published remote-code layout, never run on a Molmo model. Fused "
          "qkv (no per-head q/k/v, no patterns); no image spans (no image token id in the config).",
)
