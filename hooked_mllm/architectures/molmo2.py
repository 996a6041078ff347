"""Molmo2 (``Molmo2ForConditionalGeneration``, e.g. allenai/Molmo2-8B), native in transformers.

Not the original Molmo (remote code, :mod:`.molmo`): another module tree and token layout.

Module tree (transformers 5)::

    Molmo2ForConditionalGeneration
    ├── model: Molmo2Model
    │   ├── vision_tower: Molmo2VisionModel               (SigLIP-style ViT, one crop per row)
    │   │   ├── patch_embedding (Linear over flattened patches)  -> vision.hook_embed
    │   │   ├── positional_embedding (a Parameter, added after the embedding)
    │   │   └── layers[i]: Molmo2VisionEncoderLayer
    │   │       ├── layer_norm1, self_attn{q,k,v,o}_proj
    │   │       └── layer_norm2, mlp{fc1, fc2}
    │   ├── multi_modal_projector: Molmo2Adapter           -> projector.hook_in / hook_out
    │   │   ├── image_pooling_2d (attention pooling: each pooling window's mean queries its patches)
    │   │   └── image_projector{gate,up,down}_proj (SwiGLU)
    │   └── language_model: Molmo2TextModel
    │       ├── embed_tokens (vocab_size + additional_vocab_size rows)  -> hook_embed
    │       ├── layers[i]: Molmo2DecoderLayer
    │       │   ├── input_layernorm, self_attn{q,k,v,o}_proj, self_attn{q,k}_norm
    │       │   └── post_attention_layernorm, mlp{gate,up,down}_proj
    │       └── norm                                      -> ln_final.hook_normalized
    └── lm_head                                           -> hook_logits

Image tokens: the processor turns each image into a low-resolution view (the image resized
to one crop) and a high-resolution canvas cut into overlapping crops, and writes
``<low_res_im_start>`` + ``rh * rw`` ``<im_patch>`` + ``<im_end>``, then ``<im_start>`` +
``h`` rows of ``w`` ``<im_patch>`` each ended by ``<im_col>`` + ``<im_end>``, where
``image_grids[i] = (rh, rw, h, w)`` counts pooled tokens (2x2 windows of patches, rounded
up). Each image is therefore **two spans**: the low-resolution view (grid ``(rh, rw)``; one
contiguous run with ``use_single_crop_col_tokens=False``, as in allenai/Molmo2-8B's processor
config, rows split by ``<im_col>`` otherwise) and the high-resolution view (grid ``(h, w)``;
its span lists its ``<im_patch>`` positions, the ``<im_col>`` tokens excluded, checked
against the rows).
Both are row-major. Unlike most families the projector's rows are **added** to the
``<im_patch>`` embeddings (``blocks.0.hook_resid_pre = hook_embed + projector.hook_out`` at
image positions), and every image-layout token of a row (``mm_token_type_ids == 1``)
attends to all the others, across images, bidirectionally; the rest is causal.

Inputs: ``pixel_values`` ``[total crops, patches, patch * patch * 3]`` (each image's
low-resolution crop, then its high-resolution crops), ``image_token_pooling``
``[total image tokens, 4]`` (indices into the images' patches, -1 for padding),
``image_grids`` and ``image_num_crops`` (one row per image), ``mm_token_type_ids``. Up to
transformers 5.24 the pooling indices of each image are offset by the patches of the images before
it; from 5.25 they start at 0 for each image and the model adds the offsets itself. Splitting a
batch into rows reads which of the two it was given from the indices and keeps it (rules below).
The vision tower runs every crop as one row, so vision hook points have one row per crop;
``projector.hook_in`` is the concatenated features of the ViT layers in
``adapter_config.vision_feature_layer``
(``[crops, patches, len(vision_feature_layer) * d_vision]``) and ``projector.hook_out`` is
``[total image tokens, d_model]``, in sequence order (the adapter returns a ``ModelOutput``;
the hook points see its ``last_hidden_state``).

Video (``model.prepare(videos=...)``, docs/video.md): every frame is resized to one square crop
and takes the low-resolution path only (no high-resolution crops): ``pixel_values_videos``
``[total frames, patches, patch * patch * 3]``, ``video_grids`` ``[videos, 3]`` (frames, pooled
rows, pooled cols; 3x3 pooling windows in HF's video processor) and ``video_token_pooling``
``[total video tokens, pool_h * pool_w]``, each video's indices starting at its own first patch
(HF's ``get_video_features`` adds the offsets, a video's frames standing for an image's crops;
splitting rows keeps the index space the indices came in, as for images). The processor writes
each frame as a timestamp (``"0.5 "``), ``<frame_start>`` + ``rows`` rows of ``cols``
``<im_patch>`` (each ended by ``<im_col>`` with ``video_use_col_tokens=True``, not the default) +
``<frame_end>``, so a video is a :class:`~hooked_mllm.spans.VideoSpan` of ``frames`` time steps
(``frames_per_step`` 1) of ``(rows, cols)``, listing its ``<im_patch>`` positions (timestamps,
markers and column tokens excluded). Frames use the **image token**: the ``<im_patch>`` tokens of a
batch carrying ``video_grids`` are video tokens (``"image"`` selects none of them), and a batch
holding both images and videos is refused, as HF's forward refuses ``pixel_values`` with
``pixel_values_videos``. The processor takes at most one video per prompt. Every frame token
(markers included) attends to the others bidirectionally, across frames; the timestamps are text.
The projector adds the pooled features to the ``<im_patch>`` embeddings as for images; vision
hook points have one row per frame.

Verified on a tiny random model shrunk from allenai/Molmo2-8B's config, against HF: hidden
states, logits, residual identities (LM and vision), LM patterns, generation, hook cleanup,
the projector's rows at the image positions, image geometry (the conformance suite), and
that a row split from a batch has exactly the inputs the processor gives for that row alone,
that writing ``projector.hook_out`` reaches the model, and that the spans and grids are the
same with column tokens in both views or in none (``tests/architectures/test_layouts.py``);
video through every entry point, its geometry against HF's ``get_video_features``, rows against
the processor (``tests/architectures/test_video_molmo2.py``). The tiny model's processor is HF's
``Molmo2Processor`` with ``Molmo2ImageProcessor`` and ``Molmo2VideoProcessor``, their torchvision
resize and normalize replaced by plain torch (:mod:`hooked_mllm.testing.molmo2`). Not covered:
images and videos in one batch (refused, as by HF), text configs with ``norm_after=True``
(post-norm blocks), which are refused, and real checkpoints.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .base import Adapter, BlockLayout, ConfigKeys, InputLayout, Metadata, ModuleLayout, TokenLayout
from .blocks import CLIP_BLOCK
from .split import Computed, PerVideo, Tokens

MOLMO2_VISION_BLOCK = replace(CLIP_BLOCK, o="self_attn.o_proj")


def _grids(inputs: dict, config: Any) -> list[tuple[int, int] | None]:
    """Each image's two spans' grids, ``(rh, rw)`` then ``(h, w)``, from ``image_grids``."""
    grids = inputs.get("image_grids")
    if grids is None:
        return []
    return [grid for rh, rw, h, w in grids.tolist() for grid in ((rh, rw), (h, w))]


def _images(batch: Any, rows: list[int]) -> list[int]:
    """The indices (in processor order) of the images of ``rows``: two spans per image."""
    if any(n % 2 for n in batch.images_per_row):
        raise ValueError(
            f"Molmo2 batches have two image spans per image, got {list(batch.images_per_row)} per row."
        )
    starts = [sum(batch.images_per_row[:r]) // 2 for r in range(len(batch.images_per_row))]
    return [i for r in rows for i in range(starts[r], starts[r] + batch.images_per_row[r] // 2)]


def _ranges(counts: Int[Tensor, " n"]) -> list[tuple[int, int]]:
    """``[start, end)`` of each of ``n`` consecutive blocks of ``counts[i]`` entries."""
    ends = counts.cumsum(0).tolist()
    return [(end - int(n), end) for n, end in zip(counts.tolist(), ends)]


def _take_images(key: str):
    """The rule for a key with one entry per image (``image_grids``, ``image_num_crops``)."""

    def take(batch: Any, rows: list[int]) -> Int[Tensor, "images *rest"]:  # noqa: F821 (jaxtyping shape string)
        return batch.inputs[key][_images(batch, rows)]

    return take


def _take_crops(batch: Any, rows: list[int]) -> Float[Tensor, "crops patches pixels"]:
    """``pixel_values`` of ``rows``: each image's ``image_num_crops`` crops, in order."""
    crops = _ranges(batch.inputs["image_num_crops"])
    pixels = batch.inputs["pixel_values"]
    return torch.cat([pixels[slice(*crops[i])] for i in _images(batch, rows)] or [pixels[:0]])


def _indexes_whole_batch(
    pooling: Int[Tensor, "tokens window"],
    tokens: list[tuple[int, int]],
    crops: list[tuple[int, int]],
    patches: int,
) -> bool:
    """Whether ``image_token_pooling`` (or ``video_token_pooling``, a video's frames standing for an
    image's crops) indexes all images' patches together, read off the data.

    The processor of transformers <= 5.24 offsets each image's indices by the patches of the images
    before it (one index space for the batch); from 5.25 each image's indices start at its own first
    patch and the model adds the offsets from ``image_num_crops``. An image's first pooling window
    always reads its first patch, so its smallest index is its own offset in the first layout and 0
    in the second: the first image with a non-zero offset decides. A single image reads the same in
    both; then the installed model says which it expects (it takes ``image_num_crops`` from 5.25).
    """
    for (start, end), (first_crop, _) in zip(tokens, crops):
        offset = first_crop * patches
        valid = pooling[start:end][pooling[start:end] >= 0]
        if offset > 0 and valid.numel():
            return bool(valid.min() >= offset)
    from transformers.models.molmo2 import modeling_molmo2

    features = modeling_molmo2.Molmo2Model.get_image_features
    return "image_num_crops" not in inspect.signature(features).parameters


def _rebased(
    pooling: Int[Tensor, "tokens window"],
    tokens: list[tuple[int, int]],
    crops: list[tuple[int, int]],
    patches: int,
    items: list[int],
) -> Int[Tensor, "taken window"]:
    """The pooling rows of ``items`` (images or videos, in order, repeats allowed), in the index space
    they came in: indices into the whole batch's patches (transformers <= 5.24) are re-based to the
    taken crops; per-item indices (transformers >= 5.25) are kept as they are
    (:func:`_indexes_whole_batch`). ``tokens[i]`` / ``crops[i]`` are item ``i``'s rows of ``pooling``
    and of the pixel tensor (crops, or a video's frames), each of ``patches`` patches."""
    whole_batch = _indexes_whole_batch(pooling, tokens, crops, patches)
    pieces, offset = [], 0
    for i in items:
        piece = pooling[slice(*tokens[i])]
        if whole_batch:
            shift = offset - crops[i][0] * patches
            piece = torch.where(piece >= 0, piece + shift, piece)
        pieces.append(piece)
        offset += (crops[i][1] - crops[i][0]) * patches
    return torch.cat(pieces or [pooling[:0]])


def _take_pooling(batch: Any, rows: list[int]) -> Int[Tensor, "tokens window"]:
    """``image_token_pooling`` of ``rows``: each image's token rows (:func:`_rebased`)."""
    inputs = batch.inputs
    grids = inputs["image_grids"]
    tokens = _ranges(grids[:, 0] * grids[:, 1] + grids[:, 2] * grids[:, 3])
    crops = _ranges(inputs["image_num_crops"])
    patches = inputs["pixel_values"].shape[1]
    return _rebased(inputs["image_token_pooling"], tokens, crops, patches, _images(batch, rows))


def _video_geometry(inputs: dict, config: Any) -> list[tuple[int, int, int, int]]:
    """Each video's ``(frames, rows, cols, 1)`` from ``video_grids`` (frames, pooled rows, pooled cols)."""
    grids = inputs.get("video_grids")
    if grids is None:
        return []
    return [(int(f), int(r), int(c), 1) for f, r, c in grids.tolist()]


def _videos(batch: Any, rows: list[int]) -> list[int]:
    """The indices (in processor order) of the videos of ``rows``."""
    per_row = list(batch.videos_per_row) or [0] * len(batch)
    return [i for r in rows for i in range(sum(per_row[:r]), sum(per_row[: r + 1]))]


def _take_frames(batch: Any, rows: list[int]) -> Float[Tensor, "frames patches pixels"]:
    """``pixel_values_videos`` of ``rows``: each video's frames (``video_grids[:, 0]``), in order."""
    frames = _ranges(batch.inputs["video_grids"][:, 0])
    pixels = batch.inputs["pixel_values_videos"]
    return torch.cat([pixels[slice(*frames[i])] for i in _videos(batch, rows)] or [pixels[:0]])


def _take_video_pooling(batch: Any, rows: list[int]) -> Int[Tensor, "tokens window"]:
    """``video_token_pooling`` of ``rows``: each video's ``frames * rows * cols`` token rows
    (:func:`_rebased`, a video's frames standing for an image's crops, as HF's ``get_video_features``
    reads them)."""
    inputs = batch.inputs
    grids = inputs["video_grids"]
    tokens = _ranges(grids.prod(-1))
    frames = _ranges(grids[:, 0])
    patches = inputs["pixel_values_videos"].shape[1]
    return _rebased(inputs["video_token_pooling"], tokens, frames, patches, _videos(batch, rows))


def _refuse_post_norm(adapter: Adapter, config: Any) -> Adapter:
    if getattr(adapter.text_cfg(config), "norm_after", False):
        raise ValueError(
            "This Molmo2 checkpoint's language model normalizes each block's outputs (text_config.norm_after="
            "True, post-norm), which the molmo2 adapter does not map: its ln1/ln2 hook points would name the "
            "wrong values. Only pre-norm Molmo2 models (norm_after=False) are supported."
        )
    return adapter


MOLMO2 = Adapter(
    name="molmo2",
    config_classes=("Molmo2Config",),
    modules=ModuleLayout(
        block=BlockLayout(),
        vision_layers="model.vision_tower.layers",
        vision_embed="model.vision_tower.patch_embedding",
        vision_block=MOLMO2_VISION_BLOCK,
        projector="model.multi_modal_projector",
        hidden_states_normed=True,
    ),
    config_keys=ConfigKeys(vision_feature_layer=None),  # the config trims the tower to the last layer read
    tokens=TokenLayout(grids=_grids, row_break="<im_col>", videos=_video_geometry),
    inputs=InputLayout(
        split={
            "mm_token_type_ids": Tokens(),
            "pixel_values": Computed(_take_crops),
            "image_token_pooling": Computed(_take_pooling),
            "image_grids": Computed(_take_images("image_grids")),
            "image_num_crops": Computed(_take_images("image_num_crops")),
            "pixel_values_videos": Computed(_take_frames),
            "video_token_pooling": Computed(_take_video_pooling),
            "video_grids": PerVideo(),
        },
    ),
    about=Metadata(
        test_model="tiny random from allenai/Molmo2-8B's config: 20 px crops of 5x5 patches, overlap "
        "margins 1, 2x2 pooling (3x3 for video), Qwen3-style LM (processor: Molmo2Processor with HF's "
        "Molmo2ImageProcessor and Molmo2VideoProcessor, their torchvision resize / normalize in plain torch)",
        notes="Two spans per image (low-res view, then high-res crops: rows split by <im_col>), grids from "
        "image_grids; projector output added to the <im_patch> embeddings; image tokens attend "
        "bidirectionally. Video: one time step per frame (its pooled crop, from video_grids), a "
        "timestamp and frame markers around each; frames use <im_patch> too, so images and videos in "
        "one batch are refused (as by HF). Not covered: norm_after=True (refused).",
    ),
    specialize=_refuse_post_norm,
)
