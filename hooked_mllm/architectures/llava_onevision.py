"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, e.g. llava-hf/llava-onevision-qwen2-7b-ov-hf).

Module tree (transformers 5): the same as LLaVA-NeXT's (:mod:`.llava_next`), with a SigLIP
tower (no CLS token, ``vision_feature_select_strategy="full"``) and usually a Qwen2 LM::

    LlavaOnevisionForConditionalGeneration
    ├── model: LlavaOnevisionModel
    │   ├── vision_tower: SiglipVisionModel-like {embeddings, encoder.layers[i]}
    │   ├── multi_modal_projector
    │   ├── image_newline (a parameter)
    │   └── language_model: Qwen2Model {embed_tokens, layers[i], norm}
    └── lm_head

Image tokens: anyres tiles as in LLaVA-NeXT (base image, then the stitched tiles with a
newline vector per row), so each image is two spans, the base view and the high-resolution
view (:func:`~.llava_next.anyres_views`). ``vision_aspect_ratio="anyres_max_N"`` pools a
high-resolution map of more than ``N`` tiles' worth of patches (bilinearly, ratio over 1.1)
to ``int(rows // ratio) x int(cols // ratio)`` before the newlines are added: the view's grid
is then that pooled map, each cell a blend of neighbouring patches.
``batch_num_images`` holds one count per row.

Video (``model.prepare(videos=...)``, docs/video.md): ``pixel_values_videos`` is ``[videos,
frames, C, H, W]`` (every video of a batch has the same frame count), each frame resized to the
tower's ``image_size``. Each frame runs through the tower and the projector, its
``(image_size / patch_size)`` square map is pooled bilinearly to ``ceil(side / 2)`` square
(``apply_pooling``), the frames are laid out one after the other (each row-major) and one
``image_newline`` vector follows the last frame. The sequence holds ``frames * ceil(side / 2) ** 2
+ 1`` ``<video>`` tokens per video: a :class:`~hooked_mllm.spans.VideoSpan` of ``frames`` time
steps (one frame each) covers all but the last, the newline, which stays a video token outside
every frame. The tower's hook points see ``[videos * frames, patches, d]`` on a video batch.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from .base import Metadata
from .llava_next import LLAVA_NEXT
from .split import PerRow, PerVideo


def _pooled_frames(inputs: dict, config: Any) -> list[tuple[int, int, int, int]]:
    """Each video's ``(frames, side, side, 1)``: ``pixel_values_videos`` ``[videos, frames, C, H, W]``,
    each frame's ``image_size / patch_size`` square map pooled to ``ceil(side / 2)`` (HF's
    ``apply_pooling``)."""
    videos = inputs.get("pixel_values_videos")
    if videos is None:
        return []
    side = math.ceil(int(config.vision_config.image_size) // int(config.vision_config.patch_size) / 2)
    return [(int(videos.shape[1]), side, side, 1)] * int(videos.shape[0])


LLAVA_ONEVISION = replace(
    LLAVA_NEXT,
    name="llava_onevision",
    config_classes=("LlavaOnevisionConfig",),
    tokens=replace(LLAVA_NEXT.tokens, videos=_pooled_frames, video_trailing=1),
    inputs=replace(
        LLAVA_NEXT.inputs,
        split={
            **dict(LLAVA_NEXT.inputs.split),
            "batch_num_images": PerRow(),
            "pixel_values_videos": PerVideo(),
            "image_sizes_videos": PerVideo(),
        },
    ),
    about=Metadata(
        test_model="tiny random from llava-hf/llava-onevision-qwen2-7b-ov-hf's config: SigLIP tower, Qwen2 "
        "LM, anyres pinpoints 16/32 (processor: LlavaOnevisionImageProcessorPil)",
        notes="Anyres tiles + image_newline as LLaVA-NeXT: two spans per image (base view, high-resolution "
        "view, pooled by anyres_max_N where HF pools). Video: one time step per frame, each frame's map "
        "pooled 2x (ceil(side/2) square), one newline token after the last frame (outside every frame).",
    ),
)
