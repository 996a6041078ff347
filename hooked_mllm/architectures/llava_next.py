"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``, e.g. llava-hf/llava-v1.6-mistral-7b-hf).

Module tree (transformers 5)::

    LlavaNextForConditionalGeneration
    ├── model: LlavaNextModel
    │   ├── vision_tower: CLIPVisionModel-like
    │   │   ├── embeddings                       -> vision.hook_embed
    │   │   └── encoder.layers[i]{layer_norm1, self_attn{q,k,v,out}_proj, layer_norm2, mlp{fc1, fc2}}
    │   ├── multi_modal_projector                -> projector.hook_in / hook_out (per tile)
    │   ├── image_newline (a learned vector, a parameter, not a module)
    │   └── language_model: MistralModel / LlamaModel / ...
    │       ├── embed_tokens                     -> hook_embed
    │       ├── layers[i]{input_layernorm, self_attn{q,k,v,o}_proj, post_attention_layernorm, mlp}
    │       └── norm                             -> ln_final.hook_normalized
    └── lm_head                                  -> hook_logits

Image tokens ("anyres"): each image is resized to the best of ``image_grid_pinpoints``,
cut into tiles plus a downscaled whole image, and every tile goes through the tower and
the projector (``projector.hook_out`` is ``[n_tiles_total, (size/patch)**2, d]``). The LM
sees one run of image-token ids per image: first the whole-image features (a square
``size/patch`` grid), then the tiles stitched into one feature map, with padding rows /
columns removed to restore the aspect ratio, and one ``image_newline`` vector appended to
every row of that map. Each image is therefore **two spans** (:func:`anyres_views`): the
base view, the first ``(size/patch)**2`` tokens with the square grid ``(size/patch,
size/patch)``, then the high-resolution view, ``rows x cols`` after unpadding (computed with
HF's own ``get_anyres_image_grid_shape`` and ``unpad_image`` from ``image_sizes``), whose
span lists its positions with the newline token ending each row excluded. Grid cell
``(r, c)`` of the high-resolution view is the patch at row ``r``, column ``c`` of the
stitched (unpadded) tiles. Where the token runs do not hold exactly the counts this gives,
each image stays one span without a grid (with a warning). ``image=`` indices in maps and
``cache.image`` count spans: image ``i``'s base view is span ``2 i`` and its
high-resolution view ``2 i + 1``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from .base import InputLayout, Metadata, TokenLayout, no_grid
from .llava import LLAVA
from .split import Computed


def anyres_views(
    inputs: dict, config: Any
) -> list[tuple[int, list[tuple[tuple[int, ...], tuple[int, int]]]]] | None:
    """Each image's token count and its two views ``(offsets, (rows, cols))``, from ``image_sizes``.

    The base view is offsets ``[0, side**2)`` with grid ``(side, side)``, ``side = size / patch``;
    the high-resolution view is ``rows x cols`` with one newline token after each row, its
    offsets skipping them. ``rows``/``cols`` follow HF's ``pack_image_features``: the best
    pinpoint's tile grid times ``side``, unpadded to the image's aspect ratio, and for OneVision
    (``vision_aspect_ratio="anyres_max_N"``) pooled to ``int(rows // ratio) x int(cols // ratio)``
    where ``ratio = sqrt(rows * cols / (N * side**2)) > 1.1``. None (no views: one gridless span
    per image) where the config or inputs do not say (no ``image_sizes``, no pinpoints, a
    ``"full"`` CLIP feature strategy that keeps the CLS token).

    Examples:
        >>> from types import SimpleNamespace as NS
        >>> cfg = NS(vision_config=NS(image_size=16, patch_size=4), image_grid_pinpoints=[[16, 32]],
        ...          vision_feature_select_strategy="default")
        >>> [(n, [g for _, g in v]) for n, v in anyres_views({"image_sizes": torch.tensor([[16, 32]])}, cfg)]
        [(52, [(4, 4), (4, 8)])]
    """
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        image_size_to_num_patches,
        unpad_image,
    )

    sizes = inputs.get("image_sizes")
    vision = getattr(config, "vision_config", None)
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    if sizes is None or vision is None or not isinstance(pinpoints, list):
        return None
    if (
        getattr(config, "vision_feature_select_strategy", "default") != "default"
        and getattr(vision, "model_type", "") == "clip_vision_model"
    ):
        return None
    tile = int(vision.image_size)
    side = tile // int(vision.patch_size)
    aspect = getattr(config, "vision_aspect_ratio", None)
    max_tiles = (
        int(aspect.removeprefix("anyres_max_"))
        if isinstance(aspect, str) and aspect.startswith("anyres_max_")
        else None
    )
    out = []
    for size in sizes.tolist():
        if image_size_to_num_patches(size, pinpoints, tile) < 2:
            return None
        tiles_h, tiles_w = get_anyres_image_grid_shape(size, pinpoints, tile)
        rows, cols = unpad_image(torch.empty(0, tiles_h * side, tiles_w * side), size).shape[1:]
        if max_tiles is not None:
            ratio = math.sqrt(rows * cols / (max_tiles * side**2))
            if ratio > 1.1:
                rows, cols = int(rows // ratio), int(cols // ratio)
        base = side * side
        high = tuple(base + r * (cols + 1) + c for r in range(rows) for c in range(cols))
        out.append((base + rows * (cols + 1), [(tuple(range(base)), (side, side)), (high, (rows, cols))]))
    return out


def _per_image(key: str) -> Any:
    """The split rule for a key with one entry per image (``pixel_values``, ``image_sizes``) when
    each image is one span (gridless) or two (its views)."""

    def take(batch: Any, rows: list[int]) -> torch.Tensor:
        value = batch.inputs[key]
        spans = sum(batch.images_per_row)
        per_image = spans // value.shape[0] if value.shape[0] else 1
        if per_image not in (1, 2) or per_image * value.shape[0] != spans:
            raise ValueError(
                f"Cannot split {key!r} ({value.shape[0]} images) over {spans} image spans by row."
            )
        starts = [sum(batch.images_per_row[:r]) // per_image for r in range(len(batch.images_per_row))]
        index = [i for r in rows for i in range(starts[r], starts[r] + batch.images_per_row[r] // per_image)]
        return value[index]

    return take


# The same module tree as LLaVA (CLIP-style tower only: no Pixtral specialisation); only the
# image-token geometry differs.
LLAVA_NEXT = replace(
    LLAVA,
    name="llava_next",
    config_classes=("LlavaNextConfig",),
    specialize=None,
    variants=(),
    tokens=TokenLayout(grid=no_grid, views=anyres_views),
    inputs=InputLayout(
        split={
            "pixel_values": Computed(_per_image("pixel_values")),
            "image_sizes": Computed(_per_image("image_sizes")),
        }
    ),
    about=Metadata(
        test_model="tiny random from llava-hf/llava-v1.6-mistral-7b-hf's config, anyres pinpoints 16/32 "
        "(processor: LlavaNextImageProcessorPil)",
        notes="Anyres tiles + image_newline: two spans per image, the base view (square grid) and the "
        "unpadded high-resolution view (rows x cols from image_sizes, newline tokens excluded).",
    ),
)
