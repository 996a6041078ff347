"""Tiny random Qwen2-VL, Qwen2.5-VL and Qwen3-VL models and their processors (PIL image processor).

Examples:
    >>> from hooked_mllm.testing import tiny_qwen2_vl, tiny_qwen2_vl_processor
    >>> model, processor = tiny_qwen2_vl("2.5"), tiny_qwen2_vl_processor()
    >>> type(model).__name__
    'Qwen2_5_VLForConditionalGeneration'
"""

from __future__ import annotations

from typing import Any

from ._common import build_tiny, chat_template_for, text_kwargs, without_video, word_tokenizer

QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def tiny_qwen2_vl_processor(patch_size: int = 4, version: str = "2"):
    """A ``Qwen2VLProcessor`` (``version="2.5"``: ``Qwen2_5_VLProcessor``, which adds each video's
    ``second_per_grid_ts``): PIL Qwen2-VL image processor (patch 4, 2x2 merge), the torch video
    processor of :mod:`.video` (2 frames per temporal patch), tiny tokenizer."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .video import TorchQwen2VLVideoProcessor

    tok = word_tokenizer(QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>")
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 8 * 8, "longest_edge": 32 * 32},
    )
    video_processor = TorchQwen2VLVideoProcessor(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8, max_pixels=32 * 32
    )
    template = chat_template_for(
        "<|vision_start|><|image_pad|><|vision_end|>", video="<|vision_start|><|video_pad|><|vision_end|>"
    )
    processor_cls = Qwen2_5_VLProcessor if version == "2.5" else Qwen2VLProcessor
    return without_video(processor_cls)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=template,
    )


def tiny_qwen2_vl(
    version: str = "2",
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    patch_size: int = 4,
):
    """A tiny random Qwen2-VL (``version="2"``, shrunk from Qwen/Qwen2-VL-2B-Instruct) or
    Qwen2.5-VL (``"2.5"``, from Qwen/Qwen2.5-VL-3B-Instruct): 2 vision blocks of width 32."""
    import transformers as tf

    tok = word_tokenizer(QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>")
    head_dim = d_model // n_heads
    mrope = [head_dim // 4, head_dim // 8, head_dim // 8]  # temporal, height, width: head_dim / 2 in all
    text = dict(
        text_kwargs(tok, d_model, n_layers, n_heads),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
    )
    vision: dict[str, Any] = dict(
        depth=2,
        hidden_size=d_model,
        num_heads=4,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    ids = {
        name: tok.convert_tokens_to_ids(t)
        for name, t in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    config: tf.PreTrainedConfig
    model_cls: type[tf.PreTrainedModel]
    if version == "2":
        vision.update(embed_dim=32, mlp_ratio=2)
        config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls = tf.Qwen2VLForConditionalGeneration
    else:
        vision.update(
            out_hidden_size=d_model,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            window_size=4 * patch_size,
            fullatt_block_indexes=[1],
        )
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls = tf.Qwen2_5_VLForConditionalGeneration
    return build_tiny(model_cls, config, tok, seed, attn_implementation)


def tiny_qwen3_vl(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 3,
    d_model: int = 64,
    n_heads: int = 4,
    patch_size: int = 4,
):
    """A tiny random Qwen3-VL (shrunk from Qwen/Qwen3-VL-2B-Instruct: 3 vision blocks of width 32,
    2x2 merger, deepstack mergers after vision blocks 0 and 1 feeding LM layers 0 and 1, Qwen3 LM
    with interleaved M-RoPE) and its processor (PIL image processor, the torch video processor of
    :mod:`.video`; Qwen3-VL's processor writes a ``<t seconds>`` timestamp before each time step).

    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .video import TorchQwen2VLVideoProcessor

    tok = word_tokenizer(QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>")
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 8 * 8, "longest_edge": 32 * 32},
    )
    video_processor = TorchQwen2VLVideoProcessor(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8, max_pixels=32 * 32
    )
    processor = without_video(tf.Qwen3VLProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=chat_template_for(
            "<|vision_start|><|image_pad|><|vision_end|>", video="<|vision_start|><|video_pad|><|vision_end|>"
        ),
    )
    head_dim = d_model // n_heads
    mrope = [head_dim // 4, head_dim // 8, head_dim // 8]  # temporal, height, width: head_dim / 2 in all
    text = dict(
        text_kwargs(tok, d_model, n_layers, n_heads),
        head_dim=head_dim,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope,
            "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=d_model,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1],
    )
    ids = {
        name: tok.convert_tokens_to_ids(t)
        for name, t in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
    return build_tiny(tf.Qwen3VLForConditionalGeneration, config, tok, seed, attn_implementation), processor
