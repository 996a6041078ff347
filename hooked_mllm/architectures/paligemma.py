"""PaliGemma and PaliGemma 2 (``PaliGemmaForConditionalGeneration``).

Checkpoints: google/paligemma-3b-pt-224 (Gemma LM), google/paligemma2-3b-pt-224 (Gemma 2 LM).
One config class serves both; the text backbone (``text_config.model_type``) decides the
block layout, so the registered adapter ``paligemma`` (Gemma) turns into ``paligemma2``
(Gemma 2) through :meth:`~.base.Adapter.for_config`.

Module tree (transformers 5)::

    PaliGemmaForConditionalGeneration
    ├── model: PaliGemmaModel
    │   ├── vision_tower: SiglipVisionModel
    │   │   ├── embeddings                               -> vision.hook_embed
    │   │   ├── encoder.layers[i]: SiglipEncoderLayer
    │   │   │   ├── layer_norm1, self_attn{q,k,v,out}_proj
    │   │   │   └── layer_norm2, mlp{fc1, fc2}
    │   │   └── post_layernorm
    │   ├── multi_modal_projector: {linear}              -> projector.hook_in / hook_out
    │   └── language_model: GemmaModel / Gemma2Model
    │       ├── embed_tokens: *TextScaledWordEmbedding (x sqrt(d_model) inside)  -> hook_embed
    │       ├── layers[i]: GemmaDecoderLayer
    │       │   ├── input_layernorm, self_attn{q,k,v,o}_proj
    │       │   └── post_attention_layernorm (the pre-MLP norm), mlp{gate,up,down}_proj
    │       │   Gemma2DecoderLayer (sandwich norms, as Gemma 3):
    │       │   ├── input_layernorm -> self_attn -> post_attention_layernorm  -> hook_attn_out
    │       │   └── pre_feedforward_layernorm -> mlp -> post_feedforward_layernorm  -> hook_mlp_out
    │       └── norm                                     -> ln_final.hook_normalized
    └── lm_head                                          -> hook_logits

Image tokens: the processor puts ``image_seq_length`` (``(224/14)**2 = 256``) ``<image>``
tokens per image before the prompt, then BOS, the prompt and a newline; there is no chat
template (``model.prepare`` puts the placeholders first itself, and drops the all-ignored
``labels`` the processor adds unless a ``suffix`` is given). The projector is one
linear map per SigLIP patch, so each image is one span whose tokens form the tower's square
patch grid, row-major. The image features are *not* scaled by ``sqrt(d_model)`` (only
text embeddings are, inside ``embed_tokens``), so ``projector.hook_out`` rows are exactly
the image positions of ``blocks.0.hook_resid_pre``.

Attention: ``token_type_ids`` is 0 on the whole prompt (the prefix), which attends
bidirectionally, image and text alike; generated tokens are causal. Positions are
1-based and ignore left padding (RoPE is relative, so padding only shifts them all).
Gemma 2 alternates sliding-window and global layers and soft-caps attention scores.

Logits: Gemma 2 soft-caps the logits, ``30 * tanh(lm_head / 30)``, after ``lm_head``, so
``hook_logits`` (the ``lm_head`` output, what ``logit_attrs`` decomposes) differs from the
model's returned logits, which are capped. Gemma's RMSNorm scales by ``1 + weight``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .base import Adapter, BlockLayout, InputLayout, Metadata, ModuleLayout
from .blocks import CLIP_BLOCK, GEMMA_BLOCK
from .split import Tokens


def _for_backbone(adapter: Adapter, config: Any) -> Adapter:
    """The Gemma 1 layout as registered, or the Gemma 2 one (sandwich norms)."""
    kind = getattr(adapter.text_cfg(config), "model_type", "gemma")
    if kind == "gemma":
        return adapter
    if kind == "gemma2":
        return PALIGEMMA2
    raise ValueError(f"PaliGemma with a {kind!r} text backbone has no adapter (known: 'gemma', 'gemma2').")


_PALIGEMMA = Adapter(
    name="paligemma",
    config_classes=("PaliGemmaConfig",),
    modules=ModuleLayout(
        block=BlockLayout(norm_offset=1.0),
        vision_layers="model.vision_tower.encoder.layers",
        vision_embed="model.vision_tower.embeddings",
        vision_block=CLIP_BLOCK,
        projector="model.multi_modal_projector",
        hidden_states_normed=True,
    ),
    inputs=InputLayout(split={"labels": Tokens()}),
    about=Metadata(
        test_model="tiny random from google/paligemma-3b-pt-224's config, Gemma LM (processor: "
        "SiglipImageProcessorPil, no chat template)",
        notes="Gemma LM: pre-norm block, RMSNorm (1 + w); bidirectional prefix, no chat template. A Gemma 2 "
        "LM (PaliGemma 2) gives the `paligemma2` layout. Not covered: training inputs (suffix / labels).",
    ),
)

PALIGEMMA2 = replace(
    _PALIGEMMA,
    name="paligemma2",
    modules=replace(_PALIGEMMA.modules, block=GEMMA_BLOCK),
    about=Metadata(
        test_model="tiny random from google/paligemma2-3b-pt-224's config, Gemma 2 LM (processor: "
        "SiglipImageProcessorPil, no chat template)",
        notes="PaliGemma 2 (PaliGemmaConfig with a Gemma 2 LM): sandwich norms as Gemma 3, hook_logits "
        "before the logit soft-cap; bidirectional prefix, no chat template. Not covered: training inputs.",
    ),
)

PALIGEMMA = replace(_PALIGEMMA, specialize=_for_backbone, variants=(PALIGEMMA2,))
