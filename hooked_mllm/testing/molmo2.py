"""Tiny random Molmo2 and its processor, with an image processor that needs no torchvision.

transformers' ``Molmo2ImageProcessor`` exists only as a torchvision-backend class, and the
package hides it behind a torchvision check. Its rules (the tiling, the overlapping crops,
the patch and pooling indices, the image grids) are plain torch code; torchvision does
two things in it for PIL images: the bilinear resize and the normalization of float
tensors. :func:`molmo2_image_processor` loads the HF class itself and stands in those two
methods with the torch operations torchvision runs for float tensors
(``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, nothing when
the size is unchanged; ``(x - mean) / std``), so everything else, and the
``Molmo2Processor``'s token layout, is the HF code. (Arrays or tensors given instead of PIL
images are also turned from grayscale to RGB in plain torch.)

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


@functools.cache
def _molmo2_image_processor_cls() -> type:
    module = importlib.import_module("transformers.models.molmo2.image_processing_molmo2")
    from transformers.image_utils import PILImageResampling

    class Molmo2ImageProcessor(module.Molmo2ImageProcessor):  # type: ignore[name-defined]  # loaded at run time
        """HF's ``Molmo2ImageProcessor`` with its torchvision resize and normalize in plain torch."""

        def resize(
            self,
            image: Float[Tensor, "*batch channels height width"],
            size: Any,
            resample: Any = None,
            antialias: bool = True,
            **kwargs: Any,
        ) -> Float[Tensor, "*batch channels new_height new_width"]:
            if resample not in (None, PILImageResampling.BILINEAR) or not (size.height and size.width):
                raise ValueError(
                    f"This Molmo2 image processor resizes bilinearly to a height and width only; got "
                    f"resample={resample!r}, size={size}."
                )
            new = (int(size.height), int(size.width))
            if tuple(image.shape[-2:]) == new:
                return image
            if not image.is_floating_point():
                raise ValueError(
                    f"Resizing needs a float image (Molmo2 resizes in float), got {image.dtype}."
                )
            flat = image.reshape(-1, *image.shape[-3:])
            out = F.interpolate(
                flat, size=list(new), mode="bilinear", align_corners=False, antialias=antialias
            )
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
            if image.ndim == 2:
                image = image[None]
            if image.shape[0] == 1:
                return image.expand(3, *image.shape[1:]).contiguous()
            if image.shape[0] != 3:
                raise ValueError(
                    f"Give RGB images (or PIL images of any mode), not {image.shape[0]} channels."
                )
            return image

    return Molmo2ImageProcessor


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
    ``processor_config.json``) and one after each row of the high-resolution view.

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
    processor = without_video(tf.Molmo2Processor)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=None,
        image_use_col_tokens=True,
        use_single_crop_col_tokens=False,
        use_single_crop_start_token=True,
        chat_template=chat_template_for("<|image|>"),
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
