"""The seed families' published sizes, built on the ``meta`` device: hook names, image tokens, cache bytes.

:data:`PRESETS` writes down, as Hugging Face config keywords, the configuration of each seed
family's flagship checkpoints (each with the ``config.json`` / model card it comes from), and
the settings of its image processor. :func:`build` makes the model on the ``meta`` device (no
weights are allocated or downloaded; a 7B model takes well under a second) and wraps it in
:class:`~hooked_mllm.model.HookedMLLM`, so ``model.hook_names()``, ``model.cfg`` and
``estimate_cache(model, ...)`` give the real model's numbers. :func:`prepare` runs the real image
processor class with the checkpoint's settings (and a small stand-in tokenizer: image tokens are
counted exactly, text tokens are the stand-in's words) on an image of a given size.

Molmo-7B-D is written down but not buildable: its classes live in the checkpoint's remote code,
which is not part of transformers.

Examples:
    >>> from hooked_mllm import geometry
    >>> model = geometry.build("llava-1.5-7b")
    >>> model.cfg.d_model, model.cfg.n_layers, len(model.hook_names())
    (4096, 32, 790)
    >>> batch = geometry.prepare(model, "llava-1.5-7b", (640, 480))
    >>> int(batch.image_mask.sum())
    576
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from .inputs import MultimodalBatch
from .model import HookedMLLM

__all__ = ["PRESETS", "Preset", "build", "hf_config", "prepare", "processor"]

_CLIP_L_336 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)
_SIGLIP_SO400M = dict(
    model_type="siglip_vision_model",
    hidden_size=1152,
    intermediate_size=4304,
    num_attention_heads=16,
    patch_size=14,
)
_QWEN2_VL_TOWER = dict(
    depth=32,
    embed_dim=1280,
    mlp_ratio=4,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
_QWEN_IDS = dict(
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653
)
_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]


def _llama(d: int, d_mlp: int, layers: int, heads: int) -> dict[str, Any]:
    return dict(
        model_type="llama",
        hidden_size=d,
        intermediate_size=d_mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )


def _qwen2(d: int, d_mlp: int, heads: int, kv: int, vocab: int, tie: bool, **extra: Any) -> dict[str, Any]:
    return dict(
        hidden_size=d,
        intermediate_size=d_mlp,
        num_hidden_layers=28,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        **extra,
    )


@dataclass(frozen=True)
class Preset:
    """One checkpoint's published configuration.

    Attributes:
        repo: The Hugging Face repository it describes.
        model_class: The transformers class (``None``: remote code only, not buildable here).
        config_class: The transformers config class.
        config: Keyword arguments of ``config_class`` (the checkpoint's ``config.json`` values).
        image_processor: The image processor class name and its settings (the checkpoint's
            ``preprocessor_config.json`` values).
        source: Where the numbers come from.
        notes: What a reader should know (tokens per image, what is not buildable).
    """

    repo: str
    model_class: str | None
    config_class: str
    config: dict[str, Any]
    image_processor: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    notes: str = ""


PRESETS: dict[str, Preset] = {
    "llava-1.5-7b": Preset(
        "llava-hf/llava-1.5-7b-hf",
        "LlavaForConditionalGeneration",
        "LlavaConfig",
        dict(
            vision_config=_CLIP_L_336,
            text_config=_llama(4096, 11008, 32, 32),
            image_token_id=32000,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            image_seq_length=576,
            projector_hidden_act="gelu",
        ),
        dict(cls="CLIPImageProcessorPil", image_size=336, patch_size=14),
        "llava-hf/llava-1.5-7b-hf config.json (Llama-2-7B LM, openai/clip-vit-large-patch14-336 tower)",
        "576 image tokens for any image (resized to 336 on the short side, center-cropped).",
    ),
    "llava-1.5-13b": Preset(
        "llava-hf/llava-1.5-13b-hf",
        "LlavaForConditionalGeneration",
        "LlavaConfig",
        dict(
            vision_config=_CLIP_L_336,
            text_config=_llama(5120, 13824, 40, 40),
            image_token_id=32000,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            image_seq_length=576,
            projector_hidden_act="gelu",
        ),
        dict(cls="CLIPImageProcessorPil", image_size=336, patch_size=14),
        "llava-hf/llava-1.5-13b-hf config.json (Llama-2-13B LM, CLIP ViT-L/14-336 tower)",
        "576 image tokens for any image.",
    ),
    "qwen2-vl-7b": Preset(
        "Qwen/Qwen2-VL-7B-Instruct",
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLConfig",
        dict(
            text_config=_qwen2(
                3584,
                18944,
                28,
                4,
                152064,
                False,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            ),
            vision_config=dict(_QWEN2_VL_TOWER, hidden_size=3584),
            **_QWEN_IDS,
        ),
        dict(cls="Qwen2VLImageProcessorPil", min_pixels=3136, max_pixels=12845056),
        "Qwen/Qwen2-VL-7B-Instruct config.json and preprocessor_config.json (min_pixels 3136, "
        "max_pixels 12845056)",
        "Dynamic resolution: one token per 28x28 pixels after resizing to multiples of 28.",
    ),
    "qwen2-vl-2b": Preset(
        "Qwen/Qwen2-VL-2B-Instruct",
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLConfig",
        dict(
            text_config=_qwen2(
                1536,
                8960,
                12,
                2,
                151936,
                True,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            ),
            vision_config=dict(_QWEN2_VL_TOWER, hidden_size=1536),
            **_QWEN_IDS,
        ),
        dict(cls="Qwen2VLImageProcessorPil", min_pixels=3136, max_pixels=12845056),
        "Qwen/Qwen2-VL-2B-Instruct config.json and preprocessor_config.json",
        "Same tower and image processing as the 7B.",
    ),
    "idefics2-8b": Preset(
        "HuggingFaceM4/idefics2-8b",
        "Idefics2ForConditionalGeneration",
        "Idefics2Config",
        dict(
            text_config=dict(
                model_type="mistral",
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=32003,
                max_position_embeddings=32768,
                rms_norm_eps=1e-5,
            ),
            vision_config=dict(
                _SIGLIP_SO400M, model_type="idefics2_vision", num_hidden_layers=27, image_size=980
            ),
            perceiver_config=dict(
                hidden_size=4096,
                resampler_n_latents=64,
                resampler_depth=3,
                resampler_n_heads=16,
                resampler_head_dim=96,
                num_key_value_heads=4,
            ),
            image_token_id=32001,
        ),
        dict(cls="Idefics2ImageProcessorPil", shortest_edge=378, longest_edge=980, do_image_splitting=False),
        "HuggingFaceM4/idefics2-8b config.json and preprocessor_config.json (Mistral-7B LM, SigLIP-so400m "
        "tower at 980 px, 64-latent perceiver)",
        "64 image tokens per image (5 x 64 with do_image_splitting=True).",
    ),
    "llava-onevision-7b": Preset(
        "llava-hf/llava-onevision-qwen2-7b-ov-hf",
        "LlavaOnevisionForConditionalGeneration",
        "LlavaOnevisionConfig",
        dict(
            text_config=dict(_qwen2(3584, 18944, 28, 4, 152128, False, rope_theta=1e6), model_type="qwen2"),
            vision_config=dict(_SIGLIP_SO400M, num_hidden_layers=26, image_size=384),
            image_grid_pinpoints=_PINPOINTS,
            image_token_id=151646,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        ),
        dict(cls="LlavaOnevisionImageProcessorPil", image_size=384, num_image_tokens=729),
        "llava-hf/llava-onevision-qwen2-7b-ov-hf config.json (Qwen2-7B LM, SigLIP-so400m/384 tower with "
        "26 layers, anyres_max_9 over 384 px tiles)",
        "729 tokens per 384 px tile: a base view plus up to 36 tiles, pooled down to at most 9 tiles' worth.",
    ),
    "molmo-7b-d": Preset(
        "allenai/Molmo-7B-D-0924",
        None,
        "MolmoConfig (remote code)",
        dict(
            d_model=3584,
            n_layers=28,
            n_heads=28,
            n_kv_heads=4,
            mlp_hidden_size=37888,  # gate and up together: d_mlp 18944
            vocab_size=152064,
            vision_backbone="CLIP ViT-L/14 336 px, 23 of 24 layers",
            max_crops=12,
            tokens_per_crop=144,
        ),
        {},
        "allenai/Molmo-7B-D-0924 config.json and model card (Qwen2-7B LM, CLIP ViT-L/14-336 tower)",
        "Not buildable here: its model and processor classes are the checkpoint's remote code. Up to 12 "
        "336 px crops plus a global view, 12 x 12 = 144 tokens each after 2x2 pooling.",
    ),
}


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; known: {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    if preset.model_class is None:
        raise ValueError(f"{name} ({preset.repo}) is not buildable: {preset.notes}")
    return preset


def hf_config(name: str, *, n_layers: int | None = None, vision_layers: int | None = None, **text: Any):
    """The preset's HF config, optionally with fewer LM / vision layers or other LM sizes.

    Args:
        name: A key of :data:`PRESETS`.
        n_layers: LM layers (default the published number).
        vision_layers: Vision tower layers (default the published number).
        **text: Other LM config keys to change (``hidden_size=512``...).

    Returns:
        A ``transformers.PreTrainedConfig``.

    Examples:
        >>> hf_config("llava-1.5-7b", n_layers=2).text_config.num_hidden_layers
        2
    """
    import transformers

    preset = _preset(name)
    kwargs = copy.deepcopy(preset.config)
    text_cfg = kwargs["text_config"]
    text_cfg.update(text)
    if n_layers is not None:
        text_cfg["num_hidden_layers"] = n_layers
    if vision_layers is not None:
        key = "depth" if "depth" in kwargs["vision_config"] else "num_hidden_layers"
        kwargs["vision_config"][key] = vision_layers
    return getattr(transformers, preset.config_class)(**kwargs)


def build(
    name: str,
    *,
    n_layers: int | None = None,
    vision_layers: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "meta",
    with_processor: bool = True,
    **text: Any,
) -> HookedMLLM:
    """The preset's model, wrapped, on the ``meta`` device (no memory, nothing downloaded).

    Args:
        name: A key of :data:`PRESETS`.
        n_layers: LM layers (default the published number).
        vision_layers: Vision tower layers (default the published number).
        dtype: The parameters' dtype (what ``estimate_cache`` counts by default).
        device: ``"meta"`` (default), or a real device for random weights (the real size:
            a 7B model in bfloat16 takes 14 GB).
        with_processor: Attach :func:`processor` and use its stand-in tokenizer's image token ids
            (so :func:`prepare` batches mark image positions); sizes are unchanged.
        **text: Other LM config keys to change (``hidden_size=512``...).

    Returns:
        A :class:`~hooked_mllm.model.HookedMLLM`.

    Examples:
        >>> build("qwen2-vl-7b").cfg.n_kv_heads
        4
    """
    import transformers

    preset = _preset(name)
    config = hf_config(name, n_layers=n_layers, vision_layers=vision_layers, **text)
    proc = processor(name) if with_processor else None
    if proc is not None:
        tok = proc.tokenizer
        for key, token in (
            ("image_token_id", getattr(proc, "image_token", None)),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ):
            if token is not None and getattr(config, key, None) is not None:
                setattr(config, key, tok.convert_tokens_to_ids(token))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf = getattr(transformers, str(preset.model_class))(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return HookedMLLM.from_hf(hf, proc)


def processor(name: str) -> Any:
    """The preset's processor: its real image processor class and settings, a stand-in tokenizer.

    Image token counts and grids are the checkpoint's; the text is tokenized into the stand-in's words.

    Examples:
        >>> type(processor("qwen2-vl-7b").image_processor).__name__
        'Qwen2VLImageProcessorPil'
    """
    import transformers as tf

    from .testing._common import (
        CHAT_TEMPLATE,
        chat_template_for,
        tiny_tokenizer,
        without_video,
        word_tokenizer,
    )

    settings = dict(_preset(name).image_processor)
    cls = settings.pop("cls")
    if cls == "CLIPImageProcessorPil":
        from .testing import tiny_processor

        return tiny_processor(image_size=settings["image_size"], patch_size=settings["patch_size"])
    if cls == "Qwen2VLImageProcessorPil":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from .testing.qwen import QWEN_SPECIALS

        tok = word_tokenizer(QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>")
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=14,
            merge_size=2,
            temporal_patch_size=2,
            size={"shortest_edge": settings["min_pixels"], "longest_edge": settings["max_pixels"]},
        )
        template = chat_template_for("<|vision_start|><|image_pad|><|vision_end|>")
        return without_video(tf.Qwen2VLProcessor)(
            image_processor=image_processor, tokenizer=tok, chat_template=template
        )
    if cls == "Idefics2ImageProcessorPil":
        from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

        from .testing.idefics import IDEFICS_SPECIALS

        idefics_images = Idefics2ImageProcessorPil(
            do_image_splitting=settings["do_image_splitting"],
            size={"shortest_edge": settings["shortest_edge"], "longest_edge": settings["longest_edge"]},
        )
        return tf.Idefics2Processor(
            image_processor=idefics_images,
            tokenizer=word_tokenizer(IDEFICS_SPECIALS),
            image_seq_len=64,
            chat_template=chat_template_for("<image>"),
        )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    side = settings["image_size"]
    tiles = LlavaOnevisionImageProcessorPil(
        size={"height": side, "width": side}, image_grid_pinpoints=_PINPOINTS
    )
    return without_video(tf.LlavaOnevisionProcessor)(
        image_processor=tiles,
        tokenizer=tiny_tokenizer(),
        num_image_tokens=settings["num_image_tokens"],
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=CHAT_TEMPLATE,
    )


def prepare(
    model: HookedMLLM, name: str, size: tuple[int, int], prompt: str = "what color is the circle ?"
) -> MultimodalBatch:
    """A one-row batch of a blank ``size = (width, height)`` image through the preset's processor.

    Args:
        model: The model :func:`build` made (its processor is used).
        name: The preset it was built from.
        size: The image's ``(width, height)`` in pixels.
        prompt: The question (words of the stand-in vocabulary).

    Returns:
        A :class:`~hooked_mllm.inputs.MultimodalBatch` (inputs on the CPU).

    Examples:
        >>> qwen = build("qwen2-vl-7b")
        >>> int(prepare(qwen, "qwen2-vl-7b", (1280, 960)).image_mask.sum())
        1564
    """
    from PIL import Image

    _preset(name)
    if model.processor is None:
        raise ValueError(
            f"prepare needs the model built with a processor: build({name!r}, with_processor=True)."
        )
    return model.prepare(images=[Image.new("RGB", size, (128, 128, 128))], prompts=[prompt])
