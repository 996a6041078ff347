"""Mistral 3 (``Mistral3ForConditionalGeneration``, e.g. mistralai/Mistral-Small-3.1-24B-Instruct-2503).

Module tree (transformers 5)::

    Mistral3ForConditionalGeneration
    ├── model: Mistral3Model
    │   ├── vision_tower: PixtralVisionModel
    │   │   ├── patch_conv (Conv2d)                       -> vision.hook_embed  [n_images, d, H/p, W/p]
    │   │   ├── ln_pre (RMSNorm), patch_positional_embedding (2D axial RoPE)
    │   │   └── transformer.layers[i]: PixtralAttentionLayer
    │   │       ├── attention_norm, attention{q,k,v,o}_proj
    │   │       └── ffn_norm, feed_forward{gate,up,down}_proj
    │   ├── multi_modal_projector: Mistral3MultiModalProjector  -> projector.hook_in / hook_out
    │   │   ├── norm (RMSNorm), patch_merger{merging_layer}  (each 2x2 block of patches -> one token)
    │   │   └── linear_1, act, linear_2
    │   └── language_model: MistralModel
    │       ├── embed_tokens                              -> hook_embed
    │       ├── layers[i]: MistralDecoderLayer
    │       │   ├── input_layernorm, self_attn{q,k,v,o}_proj
    │       │   └── post_attention_layernorm, mlp{gate,up,down}_proj
    │       └── norm                                      -> ln_final.hook_normalized
    └── lm_head                                           -> hook_logits

Image tokens: the processor resizes each image (aspect ratio kept, longest edge at most
``longest_edge``) to a multiple of ``patch_size * spatial_merge_size`` pixels and writes
``rows`` lines of ``cols`` ``[IMG]`` tokens, each line ended by ``[IMG_BREAK]`` and the
last by ``[IMG_END]`` instead, where ``rows = height / (patch * merge)`` and
``cols = width / (patch * merge)`` (merge 2 for Mistral 3, 1 for Pixtral). An image's
``[IMG]`` tokens are therefore **not contiguous**: its :class:`~hooked_mllm.inputs.ImageSpan`
lists their positions (``span.token_positions``, break and end tokens excluded) with the
grid ``(rows, cols)``, read from ``image_sizes`` and checked against the token layout.
Grid cell ``(r, c)`` is the merged 2x2 patch block at row ``r``, column ``c`` of the
resized image, row-major as the patch merger unfolds them; image selectors, ``cache.image``
and cell patching never touch the break tokens (which are special tokens).

Inputs: ``pixel_values`` ``[n_images, 3, H_max, W_max]`` (padded to the largest image)
with ``image_sizes`` ``[n_images, 2]``; both split per image. The vision tower runs all
images as one packed sequence (``[1, total patches, d]``, attention blocked per image),
so vision hook points have batch size 1; ``projector.hook_in`` is
``[total patches, d_vision]`` and ``projector.hook_out`` ``[total image tokens, d_model]``,
in sequence order.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockLayout, Metadata, ModuleLayout, TokenLayout
from .blocks import PIXTRAL_BLOCK


def pixtral_grids(inputs: dict, config: Any) -> list[tuple[int, int] | None]:
    """Each image's ``(rows, cols)`` of tokens from ``image_sizes`` (resized pixels).

    One token covers ``patch_size * spatial_merge_size`` pixels each way; configs without a
    ``spatial_merge_size`` (LLaVA's with a Pixtral tower, :data:`~.llava.LLAVA_PIXTRAL`)
    merge nothing (1).
    """
    sizes = inputs.get("image_sizes")
    if sizes is None:
        return []
    step = int(config.vision_config.patch_size) * int(getattr(config, "spatial_merge_size", 1) or 1)
    return [(int(h) // step, int(w) // step) for h, w in sizes.tolist()]


MISTRAL3 = Adapter(
    name="mistral3",
    config_classes=("Mistral3Config",),
    modules=ModuleLayout(
        block=BlockLayout(),
        vision_layers="model.vision_tower.transformer.layers",
        vision_embed="model.vision_tower.patch_conv",
        vision_block=PIXTRAL_BLOCK,
        projector="model.multi_modal_projector",
        hidden_states_normed=True,
    ),
    tokens=TokenLayout(grids=pixtral_grids, row_break="[IMG_BREAK]"),
    about=Metadata(
        test_model="tiny random from mistralai/Mistral-Small-3.1-24B-Instruct-2503's config: Pixtral tower "
        "(patch 4), 2x2 patch merger, Mistral LM (processor: PixtralProcessor, PixtralImageProcessorPil)",
        notes="Rows of [IMG] tokens separated by [IMG_BREAK]: spans list their image-token positions; grid "
        "(h/2p, w/2p) from image_sizes; vision tower packs all images in one sequence.",
    ),
)
