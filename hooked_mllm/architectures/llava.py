"""LLaVA (``LlavaForConditionalGeneration``, e.g. llava-hf/llava-1.5-7b-hf).

Module tree (transformers 5)::

    LlavaForConditionalGeneration
    ├── model: LlavaModel
    │   ├── vision_tower: CLIPVisionTransformer-like
    │   │   ├── embeddings                       -> vision.hook_embed
    │   │   ├── pre_layrnorm
    │   │   └── encoder.layers[i]: CLIPEncoderLayer
    │   │       ├── layer_norm1, self_attn{q,k,v,out}_proj, layer_norm2
    │   │       └── mlp{fc1, fc2}
    │   ├── multi_modal_projector                -> projector.hook_in / hook_out
    │   └── language_model: LlamaModel / Qwen2Model / MistralModel
    │       ├── embed_tokens                     -> hook_embed
    │       ├── layers[i]: *DecoderLayer
    │       │   ├── input_layernorm, self_attn{q,k,v,o}_proj
    │       │   └── post_attention_layernorm, mlp{gate,up,down}_proj
    │       └── norm                             -> ln_final.hook_normalized
    └── lm_head                                  -> hook_logits

Image tokens: the processor expands each ``<image>`` into ``(size/patch)**2`` copies of
the image token id (one more with ``vision_feature_select_strategy="full"``, which then
has no grid); the projector's output rows are scattered into those positions in order.
The grid is square, rows then columns, as the CLIP patch embedding flattens them.
"""

from __future__ import annotations

from .base import Adapter, BlockLayout

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

LLAVA = Adapter(
    name="llava",
    config_classes=("LlavaConfig",),
    lm_layers="model.language_model.layers",
    embed="model.language_model.embed_tokens",
    final_norm="model.language_model.norm",
    unembed="lm_head",
    block=BlockLayout(),
    vision_layers="model.vision_tower.encoder.layers",
    vision_embed="model.vision_tower.embeddings",
    vision_block=CLIP_BLOCK,
    projector="model.multi_modal_projector",
    hidden_states_normed=True,
    test_model="tiny random from llava-hf/llava-1.5-7b-hf's config, Llama LM (processor: CLIPImageProcessorPil)",
    notes="Llama, Qwen2 and Mistral text backbones verified on tiny random models.",
)
