"""The families of the conformance suite: how to build each tiny model and what its inputs must look like.

Each :class:`Family` names an adapter, builds a tiny random HF model (shrunk from the real
checkpoint's config, see ``hooked_mllm.testing``) and a processor, and gives two rows of
images and prompts plus the image geometry the processor must produce, computed here
independently of the adapter (from the image sizes and the family's published rules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from hooked_mllm import testing as t


def image(seed: int, height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@dataclass(frozen=True)
class Family:
    """One family in the suite.

    Attributes:
        adapter: The adapter's name.
        build: ``() -> (hf_model, processor)`` with eager attention.
        images: Per row, its images.
        prompts: Per row, its prompt.
        geometry: Per image-token run, in order, ``(n_tokens, grid)`` as the family's rules give it.
        split_rows: Whether ``batch.row(i)`` can split the inputs.
        hf_patterns: Whether HF returns LM attentions to compare patterns with.
        projector_raster: Whether ``projector.hook_out`` rows are in sequence order.
    """

    adapter: str
    build: Callable[[], tuple[Any, Any]]
    images: list[list[Image.Image]]
    prompts: list[str]
    geometry: list[tuple[int, tuple[int, int] | None]]
    split_rows: bool = True
    hf_patterns: bool = True
    projector_raster: bool = True
    extra: dict = field(default_factory=dict)


PROMPTS = ["what color is the circle ?", "how many objects"]

FAMILIES = [
    Family(
        "llava",
        lambda: (t.tiny_llava("llama", attn_implementation="eager", n_layers=2), t.tiny_processor()),
        [[image(0, 32, 32)], [image(1, 32, 32)]],
        PROMPTS,
        [(16, (4, 4))] * 2,
    ),
    # Qwen2-VL: patch 4, 2x2 merge: a 16x24 image is 4x6 patches -> a 2x3 grid of 6 tokens.
    Family(
        "qwen2_vl",
        lambda: (t.tiny_qwen2_vl("2", attn_implementation="eager"), t.tiny_qwen2_vl_processor()),
        [[image(0, 16, 24)], [image(1, 16, 16)]],
        PROMPTS,
        [(6, (2, 3)), (4, (2, 2))],
    ),
    Family(
        "qwen2_5_vl",
        lambda: (t.tiny_qwen2_vl("2.5", attn_implementation="eager"), t.tiny_qwen2_vl_processor()),
        [[image(0, 32, 24)], [image(1, 16, 16)]],
        PROMPTS,
        [(12, (4, 3)), (4, (2, 2))],
        projector_raster=False,
    ),
    # Idefics2: 4 latents per crop, image splitting: each image is 4 crops + itself, 5 runs, no grid.
    Family(
        "idefics2",
        lambda: t.tiny_idefics2(attn_implementation="eager"),
        [[image(0, 32, 32)], [image(1, 32, 24)]],
        PROMPTS,
        [(4, None)] * 10,
    ),
    # Gemma 3: 32x32 image, patch 4 -> 8x8 patches, pooled to 16 tokens, a 4x4 grid.
    Family(
        "gemma3",
        lambda: t.tiny_gemma3(attn_implementation="eager"),
        [[image(0, 32, 32)], [image(1, 40, 24)]],
        PROMPTS,
        [(16, (4, 4))] * 2,
    ),
    # LLaVA-NeXT: two spans per image. A 16x16 base view (4x4 = 16 tokens), then the tiles: a 16x32
    # image picks the 16x32 pinpoint, 1x2 tiles -> a 4x8 map (+ 4 newlines, not in the span). A 32x32
    # image: 2x2 tiles, an 8x8 map (+ 8 newlines).
    Family(
        "llava_next",
        lambda: t.tiny_llava_next(attn_implementation="eager"),
        [[image(0, 16, 32)], [image(1, 32, 32)]],
        PROMPTS,
        [(16, (4, 4)), (32, (4, 8)), (16, (4, 4)), (64, (8, 8))],
        extra={"base_tiles": [0, 3], "geometry_key": "image_sizes", "views": 2, "newlines": 12},
    ),
    # LLaVA-NeXT-Video: LLaVA-NeXT's image geometry (CLIP tower, anyres tiles); its video is in
    # test_video_next_video.py.
    Family(
        "llava_next_video",
        lambda: t.tiny_llava_next_video(attn_implementation="eager"),
        [[image(0, 16, 32)], [image(1, 32, 32)]],
        PROMPTS,
        [(16, (4, 4)), (32, (4, 8)), (16, (4, 4)), (64, (8, 8))],
        extra={"base_tiles": [0, 3], "geometry_key": "image_sizes", "views": 2, "newlines": 12},
    ),
    # LLaVA-OneVision: the same geometry with a SigLIP tower ("full": no CLS to drop).
    Family(
        "llava_onevision",
        lambda: t.tiny_llava_onevision(attn_implementation="eager"),
        [[image(0, 16, 32)], [image(1, 32, 32)]],
        PROMPTS,
        [(16, (4, 4)), (32, (4, 8)), (16, (4, 4)), (64, (8, 8))],
        extra={"base_tiles": [0, 3], "geometry_key": "image_sizes", "views": 2, "newlines": 12},
    ),
    # Mistral 3: patch 4, 2x2 merge -> one [IMG] token per 8x8 px; longest edge 32. A 16x24 image
    # stays 16x24: 2 rows x 3 cols = 6 tokens (+ [IMG_BREAK], [IMG_END]). A 40x24 image is scaled by
    # 32/40 to 32x19, padded up to 32x24: 4 rows x 3 cols = 12 tokens.
    Family(
        "mistral3",
        lambda: t.tiny_mistral3(attn_implementation="eager"),
        [[image(0, 16, 24)], [image(1, 40, 24)]],
        PROMPTS,
        [(6, (2, 3)), (12, (4, 3))],
        extra={"geometry_key": "image_sizes"},
    ),
    # Pixtral (mistral-community/pixtral-12b: LLaVA with a Pixtral tower; the `llava` adapter specialised to
    # `pixtral`): patch 4, no merge -> one [IMG] token per 4x4 px; longest edge 16. An 8x12 image stays 8x12:
    # 8/4 = 2 rows x 12/4 = 3 cols = 6 tokens (+ [IMG_BREAK], [IMG_END]). A 40x24 image is scaled by 16/40 to
    # 16 x floor(9.6) = 16x9, padded up to 16x12: 4 rows x 3 cols = 12 tokens.
    Family(
        "pixtral",
        lambda: t.tiny_pixtral(attn_implementation="eager"),
        [[image(0, 8, 12)], [image(1, 40, 24)]],
        PROMPTS,
        [(6, (2, 3)), (12, (4, 3))],
        extra={"geometry_key": "image_sizes"},
    ),
    # Mllama: no image tokens in the sequence (one <|image|> placeholder each, cross-attention to
    # the vision states), so no spans. A text position's cross-attention MLP is kept where it may
    # see at least one image tile (HF's full_text_row_masked_out_mask).
    Family(
        "mllama",
        lambda: t.tiny_mllama(attn_implementation="eager"),
        [[image(0, 16, 16)], [image(1, 16, 32)]],
        PROMPTS,
        [],
        extra={"row_mask": lambda batch: batch.inputs["cross_attention_mask"].flatten(2).bool().any(-1)},
    ),
    # Idefics3: images resized to a longest edge of 32 px, then cut into 16 px tiles (+ the global image).
    # A 32x32 image is 2x2 tiles + global = 5 spans; a 16x32 image is 1x2 tiles + global = 3 spans. A tile
    # is 8x8 patches of 2 px; pixel shuffle 2 -> a 4x4 grid of 16 tokens per span.
    Family(
        "idefics3",
        lambda: t.tiny_idefics3(attn_implementation="eager"),
        [[image(0, 32, 32)], [image(1, 16, 32)]],
        PROMPTS,
        [(16, (4, 4))] * 8,
    ),
    # SmolVLM: longest edge 64 px, 32 px tiles: 64x64 -> 2x2 + global = 5 spans, 32x64 -> 1x2 + global = 3.
    # A tile is 16x16 patches of 2 px; pixel shuffle 4 -> a 4x4 grid of 16 tokens per span.
    Family(
        "smolvlm",
        lambda: t.tiny_smolvlm(attn_implementation="eager"),
        [[image(0, 64, 64)], [image(1, 32, 64)]],
        PROMPTS,
        [(16, (4, 4))] * 8,
    ),
    # PaliGemma (Gemma LM) and PaliGemma 2 (Gemma 2 LM): every image resized to 16x16, patch 4 -> 4x4 = 16.
    Family(
        "paligemma",
        lambda: t.tiny_paligemma("1", attn_implementation="eager"),
        [[image(0, 16, 16)], [image(1, 24, 16)]],
        PROMPTS,
        [(16, (4, 4))] * 2,
    ),
    Family(
        "paligemma2",
        lambda: t.tiny_paligemma("2", attn_implementation="eager"),
        [[image(0, 16, 16)], [image(1, 24, 16)]],
        PROMPTS,
        [(16, (4, 4))] * 2,
    ),
    # InternVL: 16 px tiles of 8x8 patches, pixel shuffle 0.5 -> 16 tokens per tile, at most 4 tiles. A 16x32
    # image (aspect 2) takes 2 cols x 1 row + a thumbnail = 3 tiles = 48 tokens in one run (no grid); a 16x16
    # image takes 1 tile (2x2 ties on aspect but would cover more than twice its area), no thumbnail: 4x4.
    Family(
        "internvl",
        lambda: t.tiny_internvl(attn_implementation="eager"),
        [[image(0, 16, 32)], [image(1, 16, 16)]],
        PROMPTS,
        [(48, None), (16, (4, 4))],
    ),
    # Qwen3-VL: patch 4, 2x2 merge: 32x24 is 8x6 patches -> a 4x3 grid; 16x16 -> 2x2. DeepStack mergers'
    # outputs are added at the image positions between LM layers 0/1 and 1/2.
    Family(
        "qwen3_vl",
        lambda: t.tiny_qwen3_vl(attn_implementation="eager"),
        [[image(0, 32, 24)], [image(1, 16, 16)]],
        PROMPTS,
        [(12, (4, 3)), (4, (2, 2))],
        extra={"between_layers": "model.visual.deepstack_merger_list"},
    ),
    # Molmo2: 20 px crops of 5x5 patches (4 px), overlap margins of 1 patch per side, so a crop's window is
    # 3 patches (12 px) and a canvas of r x c crops is (12r + 8) x (12c + 8) px; r x c is the first tiling
    # (at most 4 crops, ordered by area then rows) whose scale min(12r / (H - 8), 12c / (W - 8)) is the
    # smallest one >= 1. Canvas patches are pooled 2x2, rounding up. Each image is two spans: the low-res
    # view (resized to one crop: 5x5 patches -> 3x3 = 9 tokens, one run) and the high-res view.
    # 20x32 (H x W): 12x24 -> 1x1 scales 0.5, 1x2 scales 1 -> a 20x32 canvas, 5x8 patches -> 3x4 = 12.
    # 20x20: 12x12 -> 1x1 -> 5x5 patches -> 3x3 = 9. 32x20: 24x12 -> 1x1 and 1x2 scale 0.5, 2x1 scales 1
    # -> 32x20, 8x5 patches -> 4x3 = 12. The projector's rows are added to the <im_patch> embeddings.
    Family(
        "molmo2",
        lambda: t.tiny_molmo2(attn_implementation="eager"),
        [[image(0, 20, 32)], [image(1, 20, 20), image(2, 32, 20)]],
        PROMPTS,
        [(9, (3, 3)), (12, (3, 4)), (9, (3, 3)), (9, (3, 3)), (9, (3, 3)), (12, (4, 3))],
        extra={"geometry_key": "image_grids", "projector_added": True},
    ),
]
