"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

Module tree (transformers 5; Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct)::

    Qwen2VLForConditionalGeneration
    ├── model: Qwen2VLModel
    │   ├── visual: Qwen2VisionTransformerPretrainedModel
    │   │   ├── patch_embed{proj: Conv3d}              -> vision.hook_embed
    │   │   ├── blocks[i]: Qwen2VLVisionBlock          (2.5: Qwen2_5_VLVisionBlock)
    │   │   │   ├── norm1 (LayerNorm; 2.5: RMSNorm), attn{qkv (fused), proj}
    │   │   │   └── norm2, mlp{fc1, fc2}               (2.5: mlp{gate_proj, up_proj, down_proj})
    │   │   └── merger: PatchMerger{ln_q, mlp}         -> projector.hook_in / hook_out
    │   └── language_model: Qwen2VLTextModel
    │       ├── embed_tokens                           -> hook_embed
    │       ├── layers[i]: Qwen2VLDecoderLayer
    │       │   ├── input_layernorm, self_attn{q,k,v,o}_proj
    │       │   └── post_attention_layernorm, mlp{gate,up,down}_proj
    │       └── norm                                   -> ln_final.hook_normalized
    └── lm_head                                        -> hook_logits

Inputs: ``pixel_values`` is ``[total patches, C * T * P * P]`` for all images together,
with ``image_grid_thw`` ``[n_images, 3]`` giving each image's (t, h, w) in patches. Each
image is ``<|vision_start|>`` + ``t*h*w / 4`` copies of ``<|image_pad|>`` +
``<|vision_end|>``: the merger folds each 2x2 block of patches into one token, so an
image's LM grid is ``(h / 2, w / 2)``, row-major (read from ``image_grid_thw``, not guessed
from the count, since images keep their aspect ratio). Positions are M-RoPE (temporal,
height, width sections), computed by the HF model from ``image_grid_thw``; hooks see the
residual stream, not the position ids. Splitting a batch into rows slices
``pixel_values`` by each image's ``t*h*w`` patches.

Video (``model.prepare(videos=...)``, docs/video.md): ``pixel_values_videos`` packs every video's
patches as ``pixel_values`` does, with ``video_grid_thw`` ``[n_videos, 3]``; each video is
``<|vision_start|>`` + ``t*h*w / 4`` copies of ``<|video_pad|>`` + ``<|vision_end|>``, ``t``
time steps of ``temporal_patch_size`` (2) frames, each step's ``(h / 2, w / 2)`` tokens
row-major, step after step (:class:`~hooked_mllm.spans.VideoSpan`). M-RoPE's temporal
section counts the steps. The tower runs once for the images and once for the videos of a
forward, so on a batch holding both its hook points fire twice (``hook.call`` 0, then 1) and the
cache holds the image call's rows, then the video call's.

Vision tower: blocks see ``[patches, d]`` with no batch dimension (all images packed,
attention restricted per image, or per window in 2.5). The fused ``qkv`` projection gives
no per-head q / k / v hook points, and the attention module returns a tensor, so the
tower has no ``attn.hook_pattern``; ``vision.blocks.{l}.attn.hook_z`` is the input of
``attn.proj``. Qwen2.5-VL permutes patches into windows before the blocks and undoes
the permutation after the merger: its vision blocks and ``projector.hook_out`` are in
window order, not raster order.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockLayout, InputLayout, Metadata, ModuleLayout, TokenLayout
from .split import Patches, PerImage, PerVideo, Tokens


def _merged_grids(inputs: dict, config: Any) -> list[tuple[int, int] | None]:
    """Each image's LM grid ``(h / merge, w / merge)`` from ``image_grid_thw``."""
    thw = inputs.get("image_grid_thw")
    if thw is None:
        return []
    merge = int(config.vision_config.spatial_merge_size)
    return [(int(h) // merge, int(w) // merge) if int(t) == 1 else None for t, h, w in thw.tolist()]


def _video_geometry(inputs: dict, config: Any) -> list[tuple[int, int, int, int]]:
    """Each video's ``(time, rows, cols, frames per step)`` from ``video_grid_thw``: ``t`` temporal
    patches of ``temporal_patch_size`` frames, each ``(h / merge, w / merge)`` tokens."""
    thw = inputs.get("video_grid_thw")
    if thw is None:
        return []
    merge = int(config.vision_config.spatial_merge_size)
    step = int(getattr(config.vision_config, "temporal_patch_size", 1))
    return [(int(t), int(h) // merge, int(w) // merge, step) for t, h, w in thw.tolist()]


VIDEO_TOKENS = TokenLayout(grids=_merged_grids, videos=_video_geometry)
"""Image and video tokens (Qwen3-VL's layout too: its time steps are separate runs)."""

_IMAGE_SPLIT = {
    "pixel_values": Patches("image_grid_thw"),
    "image_grid_thw": PerImage(),
    "mm_token_type_ids": Tokens(),
}
VIDEO_INPUTS = InputLayout(
    split=dict(
        _IMAGE_SPLIT,
        pixel_values_videos=Patches("video_grid_thw", per="video"),
        video_grid_thw=PerVideo(),
        second_per_grid_ts=PerVideo(),
    )
)

_VISION: dict[str, Any] = dict(
    attn="attn",
    mlp="mlp",
    ln1="norm1",
    ln2="norm2",
    q=None,
    k=None,
    v=None,
    o="attn.proj",
    attn_index=None,
    pattern_index=None,
)

_MODULES: dict[str, Any] = dict(
    block=BlockLayout(),
    vision_layers="model.visual.blocks",
    vision_embed="model.visual.patch_embed",
    projector="model.visual.merger",
    hidden_states_normed=True,
)

QWEN2_VL = Adapter(
    name="qwen2_vl",
    config_classes=("Qwen2VLConfig",),
    modules=ModuleLayout(
        **_MODULES, vision_block=BlockLayout(**_VISION, mlp_pre="mlp.fc1", mlp_down="mlp.fc2", norm="layer")
    ),
    tokens=VIDEO_TOKENS,
    inputs=VIDEO_INPUTS,
    about=Metadata(
        test_model="tiny random from Qwen/Qwen2-VL-2B-Instruct's config (processor: "
        "Qwen2VLImageProcessorPil)",
        notes="Grid (h/2, w/2) per image from image_grid_thw; M-RoPE; vision tower has no per-head q/k/v "
        "or patterns (fused qkv). Video: time steps of 2 frames, each (h/2, w/2), from video_grid_thw.",
    ),
)

QWEN2_5_VL = Adapter(
    name="qwen2_5_vl",
    config_classes=("Qwen2_5_VLConfig",),
    modules=ModuleLayout(
        **_MODULES,
        vision_block=BlockLayout(**_VISION, mlp_pre="mlp.gate_proj", mlp_down="mlp.down_proj", norm="rms"),
    ),
    tokens=VIDEO_TOKENS,
    inputs=VIDEO_INPUTS,
    about=Metadata(
        test_model="tiny random from Qwen/Qwen2.5-VL-3B-Instruct's config (processor: "
        "Qwen2VLImageProcessorPil)",
        notes="As Qwen2-VL (video too); vision blocks and projector.hook_out are in window order "
        "(windowed attention).",
    ),
)
