"""Molmo, original release (``MolmoForCausalLM`` from ``trust_remote_code``, e.g. allenai/Molmo-7B-D-0924).

**Checked by script, not by the conformance suite.** Molmo's modeling code lives in the
checkpoint's repository and loads only with ``trust_remote_code=True``, so it cannot be part
of this repository or its test suite. ``benchmarks/molmo_remote_check.py`` builds a tiny
random ``MolmoForCausalLM`` from a folder holding that code and checks this adapter against it:
logits and every LM residual against Molmo's own ``hidden_states`` (the last one is after
``ln_f``: ``hidden_states_normed``), the residual identities of every LM and ViT block, the
projector's rows at ``image_input_idx``, and that every writable hook point takes writes while
the ViT blocks after the last one ``vit_layers`` reads are read-only (Molmo-7B-D reads blocks
[-2, -9] of 23, so its last ViT block never reaches the output). All pass under
transformers 5.24 (2026-12-02, with the public copy of ``modeling_molmo.py`` in
reubzdubz/Molmo7B_D_NF4Quant). Not covered: ``generate`` (that remote code's model has no
``generate`` under transformers >= 4.50, whose ``PreTrainedModel`` no longer inherits
``GenerationMixin``; Molmo's own ``generate_from_batch`` is not wrapped), image spans (the
config names no image token id; image positions are the processor's ``image_input_idx``), and
real weights. It is matched by the config class name ``MolmoConfig`` (``model_type="molmo"``).
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
        │   │   ├── ff_proj (fused gate and up) -> act (SwiGLU)     -> mlp.hook_pre / mlp.hook_post
        │   │   ├── ff_out                                          -> hook_mlp_out
        │   ├── ln_f                                                -> ln_final.hook_normalized
        │   └── ff_out (LM head, untied)                            -> hook_logits
        └── vision_backbone: MolmoVisionBackbone
            ├── image_vit: VisionTransformer (CLIP ViT-L/14 336)
            │   ├── patch_embedding (Linear over flattened patches) -> vision.hook_embed
            │   └── transformer.resblocks[i]{attention_norm, attention{wq,wk,wv,wo}, ffn_norm,
            │                                feed_forward{w1,w2}}
            ├── image_pooling_2d (attention pooling of 2x2 patches)
            └── image_projector (SwiGLU MLP)                        -> projector.hook_in / hook_out

The attention is a method of the block, not a module, so there is no
``attn.hook_pattern``; ``attn.hook_z`` is the input of ``attn_out``. Image features are
added to the embeddings at the positions given by the processor's ``image_input_idx``;
the config names no image token id, so batches carry no image spans for this adapter
(image selectors select nothing) and vision per-head hook points are not offered.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockLayout, Metadata, ModuleLayout, TokenLayout, no_grid


def _vit_layers_read(hf_model: Any, n_layers: int) -> int:
    """How many ViT blocks reach the projector: the model's ``vit_layers`` index the blocks' outputs
    (Molmo-7B-D reads [-2, -9] of 23, so its last block never reaches the output)."""
    layers = getattr(getattr(getattr(hf_model, "model", None), "config", None), "vit_layers", None)
    if not layers:
        return n_layers
    return max(int(k) % n_layers for k in layers) + 1


MOLMO_BLOCK = BlockLayout(
    attn="attn_out",
    mlp="ff_out",
    ln1="attn_norm",
    ln2="ff_norm",
    q=None,
    k=None,
    v=None,
    o="attn_out",
    mlp_pre="ff_proj",
    mlp_down="ff_out",
    attn_index=None,
    pattern_index=None,
)

MOLMO_VIT_BLOCK = BlockLayout(
    attn="attention",
    mlp="feed_forward",
    ln1="attention_norm",
    ln2="ffn_norm",
    q=None,
    k=None,
    v=None,
    o="attention.wo",
    mlp_pre="feed_forward.w1",
    mlp_down="feed_forward.w2",
    norm="layer",
    attn_index=None,
    pattern_index=None,
)

MOLMO = Adapter(
    name="molmo",
    config_classes=("MolmoConfig",),
    modules=ModuleLayout(
        lm_layers="model.transformer.blocks",
        embed="model.transformer.wte",
        final_norm="model.transformer.ln_f",
        unembed="model.transformer.ff_out",
        block=MOLMO_BLOCK,
        vision_layers="model.vision_backbone.image_vit.transformer.resblocks",
        vision_embed="model.vision_backbone.image_vit.patch_embedding",
        vision_block=MOLMO_VIT_BLOCK,
        projector="model.vision_backbone.image_projector",
        hidden_states_normed=True,
        vision_layers_read_rule=_vit_layers_read,
    ),
    tokens=TokenLayout(grid=no_grid),
    about=Metadata(
        verified=False,
        checked_by="benchmarks/molmo_remote_check.py",
        test_model="none in the suite (remote code); benchmarks/molmo_remote_check.py runs a tiny random "
        "MolmoForCausalLM built from the remote code",
        notes="Checked by benchmarks/molmo_remote_check.py on the public remote code, transformers 5.24, "
        "2026-12-02: logits, residuals vs hidden_states, identities, projector rows at image_input_idx, "
        "writes at every point pass; generate not wrapped (that code has no generate under transformers >= "
        "4.50). Fused qkv (no per-head q/k/v, no patterns); no image spans (no image token id in the "
        "config).",
    ),
)
