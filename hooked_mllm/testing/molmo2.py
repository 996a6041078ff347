"""Tiny random Molmo2 and its processor, with image and video processors that need no torchvision.

transformers' ``Molmo2ImageProcessor`` exists only as a torchvision-backend class, and the
package hides it behind a torchvision check. Its rules (the tiling, the overlapping crops,
the patch and pooling indices, the image grids) are plain torch code; torchvision does
two things in it for PIL images: the bilinear resize and the normalization of float
tensors. :func:`molmo2_image_processor` loads the HF class itself and stands in those two
methods with the torch operations torchvision runs for float tensors
(``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, nothing when
the size is unchanged; ``(x - mean) / std``), so everything else, and the
``Molmo2Processor``'s token layout, is the HF code. (Arrays or tensors given instead of PIL
images are also turned from grayscale to RGB in plain torch.) :func:`molmo2_video_processor`
does the same for HF's ``Molmo2VideoProcessor`` (frame sampling, the square resize of each frame,
patches and pooling indices are HF's code).

Examples:
    >>> from hooked_mllm.testing import tiny_molmo2
    >>> model, processor = tiny_molmo2()
    >>> processor.image_processor.size["height"], model.config.adapter_config.vision_feature_layer
    (20, [-1, -2])
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ._common import build_tiny, chat_template_for, text_kwargs, without_video, word_tokenizer

MOLMO2_SPECIALS = ["<|image|>", "<|video|>"]
# The image-layout tokens, appended after the base vocabulary as the checkpoint's additional
# vocabulary (``additional_vocab_size``): embedded, but outside the LM head's ``vocab_size`` rows.
MOLMO2_IMAGE_TOKENS = [
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<low_res_im_start>",
    "<im_low>",
    "<frame_start>",
    "<frame_end>",
]


class _PlainTorch:
    """The three methods of HF's torchvision backend that Molmo2's processors call, in plain torch."""

    def resize(
        self,
        image: Float[Tensor, "*batch channels height width"],
        size: Any,
        resample: Any = None,
        antialias: bool = True,
        **kwargs: Any,
    ) -> Float[Tensor, "*batch channels new_height new_width"]:
        from transformers.image_utils import PILImageResampling

        if resample not in (None, PILImageResampling.BILINEAR) or not (size.height and size.width):
            raise ValueError(
                f"This Molmo2 processor resizes bilinearly to a height and width only; got "
                f"resample={resample!r}, size={size}."
            )
        new = (int(size.height), int(size.width))
        if tuple(image.shape[-2:]) == new:
            return image
        if not image.is_floating_point():
            raise ValueError(f"Resizing needs a float image (Molmo2 resizes in float), got {image.dtype}.")
        flat = image.reshape(-1, *image.shape[-3:])
        out = F.interpolate(flat, size=list(new), mode="bilinear", align_corners=False, antialias=antialias)
        return out.reshape(*image.shape[:-2], *new)

    def normalize(
        self,
        image: Float[Tensor, "*batch channels height width"],
        mean: Any,
        std: Any,
        inplace: bool = False,
        **kwargs: Any,
    ) -> Float[Tensor, "*batch channels height width"]:
        mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        std = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        return (image - mean) / std

    def convert_to_rgb(self, image: torch.Tensor, input_data_format: Any = None) -> torch.Tensor:
        """``[C, H, W]`` or ``[T, C, H, W]`` (a video's frames) with 3 channels (grayscale repeated)."""
        if image.ndim == 2:
            image = image[None]
        channels = -3
        if image.shape[channels] == 1:
            return image.expand(*image.shape[:channels], 3, *image.shape[-2:]).contiguous()
        if image.shape[channels] != 3:
            raise ValueError(
                f"Give RGB images (or PIL images of any mode), not {image.shape[channels]} channels."
            )
        return image


@functools.cache
def _molmo2_image_processor_cls() -> type:
    module = importlib.import_module("transformers.models.molmo2.image_processing_molmo2")

    class Molmo2ImageProcessor(_PlainTorch, module.Molmo2ImageProcessor):  # type: ignore[name-defined]
        """HF's ``Molmo2ImageProcessor`` with its torchvision resize and normalize in plain torch."""

    return Molmo2ImageProcessor


@functools.cache
def _molmo2_video_processor_cls() -> type:
    module = importlib.import_module("transformers.models.molmo2.video_processing_molmo2")

    class Molmo2VideoProcessor(_PlainTorch, module.Molmo2VideoProcessor):  # type: ignore[name-defined]
        """HF's ``Molmo2VideoProcessor`` with its torchvision resize and normalize in plain torch."""

    return Molmo2VideoProcessor


def molmo2_image_processor(**kwargs: Any) -> Any:
    """transformers' ``Molmo2ImageProcessor`` (its own rules and outputs) working without torchvision.

    ``kwargs`` are the HF image processor's (``size``, ``patch_size``, ``max_crops``,
    ``overlap_margins``, ``pooling_size``...). Only bilinear resizing (Molmo2's) is supported.

    Examples:
        >>> from hooked_mllm.testing import random_image
        >>> processor = molmo2_image_processor(size={"height": 20, "width": 20}, patch_size=4,
        ...                                    overlap_margins=[1, 1])
        >>> processor(random_image(0), return_tensors="pt")["image_grids"].tolist()
        [[3, 3, 4, 4]]
    """
    processor = _molmo2_image_processor_cls()(**kwargs)
    crop_patches = int(processor.size["height"]) // int(processor.patch_size)
    if crop_patches - sum(processor.overlap_margins) <= 0:
        raise ValueError(
            f"Crops of {crop_patches} patches leave no window inside the overlap margins "
            f"{list(processor.overlap_margins)} (in patches); use smaller margins or larger crops."
        )
    return processor


_VIDEO_FLAGS = dict(do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True)
"""The steps Molmo2's image processor takes by default and its video class leaves unset (without them
the frames reach the model as raw bytes)."""


def molmo2_video_processor(**kwargs: Any) -> Any:
    """transformers' ``Molmo2VideoProcessor`` (its own rules and outputs) working without torchvision.

    The HF class itself, with the bilinear resize and the normalization that torchvision would run
    in plain torch (as :func:`molmo2_image_processor`): HF's frame sampling (every frame of a clip
    shorter than ``num_frames`` at ``max_fps``; frames given as they are carry no fps, so HF assumes
    ``max_fps`` and warns), each frame resized to one square crop (``size``, bilinear without
    antialiasing, in float, rounded back to bytes), normalized, cut into patches, and the pooling
    windows of the frame's patch grid (``pooling_size``, padded with -1), giving
    ``pixel_values_videos`` ``[frames, patches, patch * patch * 3]``, ``video_token_pooling``
    ``[video tokens, pool_h * pool_w]`` (each video's indices from its own first patch) and
    ``video_grids`` ``[videos, 3]`` (frames, pooled rows, pooled cols). ``kwargs`` are the HF
    video processor's (``size``, ``patch_size``, ``pooling_size``, ``max_fps``, ``num_frames``...);
    the class leaves ``do_rescale`` / ``do_normalize`` / ``do_convert_rgb`` unset (the image
    processor sets them by default), so give them as :func:`tiny_molmo2` does, or its frames stay
    raw bytes.

    Examples:
        >>> import numpy as np
        >>> processor = molmo2_video_processor(size={"height": 20, "width": 20}, patch_size=4,
        ...                                    pooling_size=[3, 3])
        >>> out = processor([np.zeros((3, 16, 24, 3), dtype=np.uint8)], return_tensors="pt")
        >>> out["video_grids"].tolist(), tuple(out["pixel_values_videos"].shape)
        ([[3, 2, 2]], (3, 25, 48))
    """
    return _molmo2_video_processor_cls()(**kwargs)


def tiny_molmo2(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    crop_size: int = 20,
    patch_size: int = 4,
    max_crops: int = 4,
):
    """A tiny random Molmo2 and its ``Molmo2Processor``, shrunk from allenai/Molmo2-8B's config.

    As the checkpoint (whose config transformers' Molmo2 defaults describe): a ViT whose
    features from two layers (here the last and the one before, ``[-1, -2]``) are
    concatenated, pooled by 2x2 attention pooling and projected by a SwiGLU MLP, the result
    added to the embeddings of the ``<im_patch>`` tokens; a Qwen3-style LM (per-head q/k
    RMSNorm, grouped-query attention). Images are processed as by the checkpoint's
    processor (``Molmo2ImageProcessor`` rules, see :func:`molmo2_image_processor`), shrunk:
    ``crop_size`` px crops of ``(crop_size / patch_size)**2`` patches (5x5, odd like the
    checkpoint's 27x27, so pooling pads), overlap margins of 1 patch on each side (4 in the
    checkpoint), at most ``max_crops`` crops (8). The processor writes no ``<im_col>`` in the
    low-resolution view (``use_single_crop_col_tokens=False``, as the checkpoint's
    ``processor_config.json``) and one after each row of the high-resolution view. Videos
    (:func:`molmo2_video_processor`): each frame resized to one ``crop_size`` crop and pooled 3x3
    (HF's video default; 5x5 patches give a 2x2 grid, the last window of each row and column
    padded), each frame written as a timestamp then ``<frame_start>`` + its ``<im_patch>`` tokens +
    ``<frame_end>`` (no ``<im_col>``, HF's default ``video_use_col_tokens=False``).

    Returns ``(model, processor)``.
    """
    import transformers as tf

    tok = word_tokenizer(MOLMO2_SPECIALS, image_token="<|image|>", video_token="<|video|>")
    n_base = len(tok)
    tok.add_special_tokens({"additional_special_tokens": MOLMO2_IMAGE_TOKENS})
    image_processor = molmo2_image_processor(
        size={"height": crop_size, "width": crop_size},
        patch_size=patch_size,
        max_crops=max_crops,
        overlap_margins=[1, 1],
        pooling_size=[2, 2],
    )
    video_processor = molmo2_video_processor(
        size={"height": crop_size, "width": crop_size},
        patch_size=patch_size,
        pooling_size=[3, 3],
        **_VIDEO_FLAGS,
    )
    processor = without_video(tf.Molmo2Processor)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        image_use_col_tokens=True,
        use_single_crop_col_tokens=False,
        use_single_crop_start_token=True,
        chat_template=chat_template_for("<|image|>", "<|video|>"),
    )
    text = dict(
        text_kwargs(tok, d_model, n_layers, n_heads),
        vocab_size=n_base,
        additional_vocab_size=len(tok) - n_base,
        head_dim=d_model // n_heads,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        image_size=[crop_size, crop_size],
        patch_size=patch_size,
    )
    adapter = dict(
        vision_feature_layer=[-1, -2],
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        intermediate_size=64,
        text_hidden_size=d_model,
    )
    ids = {
        name: tok.convert_tokens_to_ids(token)
        for name, token in (
            ("image_start_token_id", "<im_start>"),
            ("low_res_image_start_token_id", "<low_res_im_start>"),
            ("image_end_token_id", "<im_end>"),
            ("image_patch_id", "<im_patch>"),
            ("frame_start_token_id", "<frame_start>"),
            ("frame_end_token_id", "<frame_end>"),
        )
    }
    config = tf.Molmo2Config(text_config=text, vision_config=vision, adapter_config=adapter, **ids)
    return build_tiny(tf.Molmo2ForConditionalGeneration, config, tok, seed, attn_implementation), processor
