"""Idefics2 (``Idefics2ForConditionalGeneration``, e.g. HuggingFaceM4/idefics2-8b).

Module tree (transformers 5)::

    Idefics2ForConditionalGeneration
    ├── model: Idefics2Model
    │   ├── vision_model: Idefics2VisionTransformer (SigLIP, NaViT-style sizes)
    │   │   ├── embeddings                           -> vision.hook_embed
    │   │   ├── encoder.layers[i]: Idefics2EncoderLayer
    │   │   │   ├── layer_norm1, self_attn{q,k,v,out}_proj
    │   │   │   └── layer_norm2, mlp{fc1, fc2}
    │   │   └── post_layernorm
    │   ├── connector: Idefics2Connector            -> projector.hook_in / hook_out
    │   │   ├── modality_projection: Idefics2MLP  (vision width -> LM width, per patch)
    │   │   └── perceiver_resampler: Idefics2PerceiverResampler
    │   │       ├── latents (n_latents x d), layers[i]{input_latents_norm, input_context_norm,
    │   │       │   self_attn (latents attend to [context; latents]), post_attention_layernorm, mlp}
    │   │       └── norm
    │   └── text_model: MistralModel
    │       ├── embed_tokens                         -> hook_embed
    │       ├── layers[i]: MistralDecoderLayer
    │       │   ├── input_layernorm, self_attn{q,k,v,o}_proj
    │       │   └── post_attention_layernorm, mlp{gate,up,down}_proj
    │       └── norm                                 -> ln_final.hook_normalized
    └── lm_head                                      -> hook_logits

Image tokens: each image (and, with image splitting, each of its 4 crops before the
whole image) becomes ``<fake_token_around_image>`` + ``n_latents`` (64) ``<image>``
tokens, the crops sharing boundary tokens; each run of ``<image>`` tokens is one span.
The perceiver's latents are learned queries, not patches, so the spans have **no grid**
(``ImageSpan.grid is None``; ``cache.image(...)`` gives ``[n_latents, d]`` per span).
``projector.hook_in`` is ``[n_crops, patches, d_vision]`` (real crops only, padding crops
dropped); ``projector.hook_out`` is ``[n_crops, n_latents, d_model]``.

Inputs: ``pixel_values`` ``[batch, max_crops, 3, H, W]`` and ``pixel_attention_mask``
``[batch, max_crops, H, W]`` are indexed by row, so a batch splits into rows by row index.
"""

from __future__ import annotations

from .base import Adapter, BlockLayout, InputLayout, Metadata, ModuleLayout, TokenLayout, no_grid
from .blocks import CLIP_BLOCK
from .split import PerRow

IDEFICS2 = Adapter(
    name="idefics2",
    config_classes=("Idefics2Config",),
    modules=ModuleLayout(
        lm_layers="model.text_model.layers",
        embed="model.text_model.embed_tokens",
        final_norm="model.text_model.norm",
        block=BlockLayout(),
        vision_layers="model.vision_model.encoder.layers",
        vision_embed="model.vision_model.embeddings",
        vision_block=CLIP_BLOCK,
        projector="model.connector",
        hidden_states_normed=True,
    ),
    tokens=TokenLayout(grid=no_grid),
    inputs=InputLayout(split={"pixel_values": PerRow(), "pixel_attention_mask": PerRow()}),
    about=Metadata(
        test_model="tiny random from HuggingFaceM4/idefics2-8b's config, image splitting on "
        "(processor: Idefics2ImageProcessorPil)",
        notes="Perceiver resampler: image tokens have no grid; one span per crop (4 crops + whole image).",
    ),
)
