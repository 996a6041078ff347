"""LLaVA-NeXT-Video (``LlavaNextVideoForConditionalGeneration``, e.g. llava-hf/LLaVA-NeXT-Video-7B-hf).

Module tree (transformers 5): LLaVA-NeXT's (:mod:`.llava_next`: CLIP tower, two-layer projector,
``image_newline``, a Llama/Mistral/Vicuna LM) plus a ``vision_resampler`` that pools video frames::

    LlavaNextVideoForConditionalGeneration
    ├── model: LlavaNextVideoModel
    │   ├── vision_tower: CLIPVisionModel {embeddings, encoder.layers[i]}
    │   ├── vision_resampler: LlavaNextVideoPooler (average / max pool, or a conv, stride 2)
    │   ├── multi_modal_projector
    │   ├── image_newline (a parameter; images only)
    │   └── language_model: {embed_tokens, layers[i], norm}
    └── lm_head

Images: anyres tiles exactly as LLaVA-NeXT (a base view and a high-resolution view per image,
newline vectors after each high-resolution row).

Video (``model.prepare(videos=...)``, docs/video.md): ``pixel_values_videos`` is ``[videos, frames, C,
H, W]`` (every video of a batch has the same frame count), each frame resized on its shortest edge and
centre-cropped to the tower's ``image_size``. Each frame runs through the tower alone; its
``(image_size / patch_size)`` square map (the CLS token dropped under the ``"default"`` strategy) is
pooled by ``vision_resampler`` with ``spatial_pool_stride`` (``side // stride`` square, no rounding
up), then projected. The frames are laid out one after the other, each row-major, with no newline:
``frames * (side // stride) ** 2`` ``<video>`` tokens per video, a
:class:`~hooked_mllm.spans.VideoSpan` of ``frames`` time steps (one frame each). The tower's hook
points see ``[videos * frames, patches, d]`` on a video batch; ``projector.hook_in`` sees the pooled
frames ``[videos * frames, (side // stride) ** 2, d_vision]``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .base import Metadata
from .llava_next import LLAVA_NEXT
from .split import PerVideo


def _pooled_frames(inputs: dict, config: Any) -> list[tuple[int, int, int, int]]:
    """Each video's ``(frames, side, side, 1)``: ``pixel_values_videos`` ``[videos, frames, C, H, W]``,
    each frame's ``image_size / patch_size`` square map pooled with stride ``spatial_pool_stride``
    (HF's ``LlavaNextVideoPooler``: ``side // stride``)."""
    videos = inputs.get("pixel_values_videos")
    if videos is None:
        return []
    side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
    pooled = side // int(config.spatial_pool_stride)
    return [(int(videos.shape[1]), pooled, pooled, 1)] * int(videos.shape[0])


LLAVA_NEXT_VIDEO = replace(
    LLAVA_NEXT,
    name="llava_next_video",
    config_classes=("LlavaNextVideoConfig",),
    tokens=replace(LLAVA_NEXT.tokens, videos=_pooled_frames, video_trailing=0),
    inputs=replace(
        LLAVA_NEXT.inputs,
        split={**dict(LLAVA_NEXT.inputs.split), "pixel_values_videos": PerVideo()},
    ),
    about=Metadata(
        test_model="tiny random from llava-hf/LLaVA-NeXT-Video-7B-hf's config: CLIP tower, Llama LM, anyres "
        "pinpoints 16/32, average pooling stride 2 (processor: LlavaNextVideoProcessor with a plain-torch "
        "video processor)",
        notes="Images: anyres tiles + image_newline as LLaVA-NeXT (two spans per image). Video: one time "
        "step per frame, each frame's map pooled by vision_resampler (side // stride square), no newline.",
    ),
)
