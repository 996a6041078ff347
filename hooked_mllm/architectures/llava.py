"""LLaVA (``LlavaForConditionalGeneration``, e.g. llava-hf/llava-1.5-7b-hf), and Pixtral on it.

One config class serves two vision-tower layouts; ``vision_config.model_type`` decides, so
the registered adapter ``llava`` (CLIP-style tower) turns into ``pixtral`` (Pixtral tower,
e.g. mistral-community/pixtral-12b) through :meth:`~.base.Adapter.for_config`.

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

Pixtral tower (``vision_config.model_type == "pixtral"``, adapter ``pixtral``)::

    LlavaModel
    ├── vision_tower: PixtralVisionModel
    │   ├── patch_conv (Conv2d)                  -> vision.hook_embed  [n_images, d, H/p, W/p]
    │   ├── ln_pre (RMSNorm), patch_positional_embedding (2D axial RoPE)
    │   └── transformer.layers[i]: PixtralAttentionLayer
    │       ├── attention_norm, attention{q,k,v,o}_proj
    │       └── ffn_norm, feed_forward{gate,up,down}_proj
    ├── multi_modal_projector {linear_1, act, linear_2}  -> projector.hook_in / hook_out
    └── language_model: MistralModel            (as above)

The processor (``PixtralProcessor``, no patch merging) resizes each image (aspect ratio
kept, longest edge at most ``longest_edge``) up to multiples of ``patch_size`` pixels and
writes ``rows`` lines of ``cols`` ``[IMG]`` tokens, each line ended by ``[IMG_BREAK]`` and
the last by ``[IMG_END]`` instead, ``rows = height / patch`` and ``cols = width / patch``:
one token per patch. As for Mistral 3 (:mod:`.mistral3`), an image's ``[IMG]`` tokens are
not contiguous: its span lists their positions (break and end tokens excluded) with the
grid ``(rows, cols)`` read from ``image_sizes`` and checked against the token layout; grid
cell ``(r, c)`` is the patch at row ``r``, column ``c`` of the resized image. The tower
runs all images as one packed sequence (batch size 1 at the vision hook points, attention
blocked per image); ``projector.hook_in`` is ``[1, total patches, d_vision]`` and
``projector.hook_out`` ``[1, total image tokens, d_model]``, in sequence order. The
checkpoint selects the last vision layer with ``vision_feature_select_strategy="full"``
(a Pixtral tower has no CLS token to drop).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .base import Adapter, BlockLayout, InputLayout, Metadata, ModuleLayout, TokenLayout
from .blocks import CLIP_BLOCK, PIXTRAL_BLOCK
from .mistral3 import pixtral_grids


def _for_vision_tower(adapter: Adapter, config: Any) -> Adapter:
    """The layout as registered (CLIP-style towers: CLIP, SigLIP), or the Pixtral-tower one.

    Other towers keep the registered layout, which :meth:`~.base.Adapter.validate` then
    checks against the module tree (a clear error where it does not fit).
    """
    vision = adapter.vision_cfg(config)
    if getattr(vision, "model_type", None) == "pixtral":
        return LLAVA_PIXTRAL
    return adapter


_LLAVA = Adapter(
    name="llava",
    config_classes=("LlavaConfig",),
    modules=ModuleLayout(
        block=BlockLayout(),
        vision_layers="model.vision_tower.encoder.layers",
        vision_embed="model.vision_tower.embeddings",
        vision_block=CLIP_BLOCK,
        projector="model.multi_modal_projector",
        hidden_states_normed=True,
    ),
    inputs=InputLayout(pixel_values_per_span=True),
    about=Metadata(
        test_model="tiny random from llava-hf/llava-1.5-7b-hf's config, Llama LM (processor: "
        "CLIPImageProcessorPil)",
        notes="Llama, Qwen2 and Mistral text backbones verified on tiny random models. With a Pixtral vision "
        "tower the adapter is `pixtral` (next row).",
    ),
)

LLAVA_PIXTRAL = replace(
    _LLAVA,
    name="pixtral",
    modules=replace(
        _LLAVA.modules,
        vision_layers="model.vision_tower.transformer.layers",
        vision_embed="model.vision_tower.patch_conv",
        vision_block=PIXTRAL_BLOCK,
    ),
    tokens=TokenLayout(grids=pixtral_grids, row_break="[IMG_BREAK]"),
    inputs=InputLayout(),
    about=Metadata(
        test_model="tiny random from mistral-community/pixtral-12b's config: Pixtral tower (patch 4, no "
        "merge), Mistral LM (processor: PixtralProcessor, PixtralImageProcessorPil)",
        notes="`LlavaConfig` whose vision_config is a `PixtralVisionConfig` (`llava` specialised). Rows of "
        "[IMG] tokens separated by [IMG_BREAK]: spans list their image-token positions; grid (h/p, w/p) "
        "from image_sizes; vision tower packs all images in one sequence.",
    ),
)

LLAVA = replace(_LLAVA, specialize=_for_vision_tower, variants=(LLAVA_PIXTRAL,))
