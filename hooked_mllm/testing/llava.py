"""Tiny random LLaVA, LLaVA-NeXT, LLaVA-NeXT-Video and LLaVA-OneVision models and their processors.

:func:`tiny_llava` and :func:`tiny_processor` are the default tiny model of the tests,
benchmarks and the demo's fallback: shrunk from llava-1.5-7b's config (CLIP ViT-L/14 tower,
Llama-2 LM) to the same module tree with a few thousand parameters.

Examples:
    >>> from hooked_mllm import HookedMLLM
    >>> from hooked_mllm.testing import tiny_llava, tiny_processor
    >>> HookedMLLM.from_hf(tiny_llava("qwen2"), tiny_processor()).cfg.n_layers
    3
"""

from __future__ import annotations

from ._common import (
    CHAT_TEMPLATE,
    build_tiny,
    chat_template_for,
    text_kwargs,
    tiny_tokenizer,
    without_video,
    word_tokenizer,
)


def tiny_processor(image_size: int = 32, patch_size: int = 8):
    """A ``LlavaProcessor`` (PIL CLIP image processor, tiny tokenizer, chat template)."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llava(
    text: str = "llama",
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    attn_implementation: str | None = None,
    n_layers: int = 3,
    d_model: int = 64,
    vision_d_model: int = 32,
    vision_layers: int = 2,
    n_heads: int = 4,
):
    """A tiny random LlavaForConditionalGeneration with a Llama, Qwen2 or Mistral LM."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        MistralConfig,
        Qwen2Config,
    )

    tok = tiny_tokenizer()
    vocab = len(tok)
    text_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[text]
    vision = CLIPVisionConfig(
        hidden_size=vision_d_model,
        intermediate_size=2 * vision_d_model,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_d_model,
    )
    text_cfg = text_cls(
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2),
        vocab_size=vocab,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(  # type: ignore[call-arg]  # HF configs take token ids as extra keywords
        vision_config=vision,
        text_config=text_cfg,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(image_size // patch_size) ** 2,
        pad_token_id=tok.pad_token_id,
    )
    return build_tiny(LlavaForConditionalGeneration, config, tok, seed, attn_implementation)


def tiny_llava_next(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 64,
    image_size: int = 16,
    patch_size: int = 4,
):
    """A tiny random LLaVA-NeXT (shrunk from llava-hf/llava-v1.6-mistral-7b-hf: CLIP tower,
    anyres tiles over pinpoints ``[[16, 32], [32, 16], [32, 32]]``, Mistral LM) and its processor.

    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = tiny_tokenizer()
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        image_grid_pinpoints=pinpoints,
        crop_size={"height": image_size, "width": image_size},
    )
    processor = tf.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = tf.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = tf.MistralConfig(**text_kwargs(tok, d_model, n_layers, 4))
    config = tf.LlavaNextConfig(  # type: ignore[call-arg]  # HF configs take token ids as extra keywords
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=pinpoints,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    return build_tiny(tf.LlavaNextForConditionalGeneration, config, tok, seed, attn_implementation), processor


def tiny_llava_onevision(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 64,
    image_size: int = 16,
    patch_size: int = 4,
):
    """A tiny random LLaVA-OneVision (shrunk from llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP
    tower, anyres tiles over pinpoints ``[[16, 32], [32, 16], [32, 32]]``, Qwen2 LM) and its processor
    (PIL image processor; the torch video processor of :mod:`.video`, frames resized to ``image_size``).

    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from .video import TorchLlavaOnevisionVideoProcessor

    tok = word_tokenizer(["<image>", "<video>"], image_token="<image>", video_token="<video>")
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints
    )
    processor = without_video(tf.LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=TorchLlavaOnevisionVideoProcessor(size=image_size),
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=chat_template_for("<image>", video="<video>"),
    )
    vision = tf.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = tf.Qwen2Config(**text_kwargs(tok, d_model, n_layers, 4))
    config = tf.LlavaOnevisionConfig(  # type: ignore[call-arg]  # HF configs take token ids as extra keywords
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=pinpoints,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        pad_token_id=tok.pad_token_id,
    )
    return build_tiny(
        tf.LlavaOnevisionForConditionalGeneration, config, tok, seed, attn_implementation
    ), processor


def tiny_llava_next_video(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 64,
    image_size: int = 16,
    patch_size: int = 4,
):
    """A tiny random LLaVA-NeXT-Video (shrunk from llava-hf/LLaVA-NeXT-Video-7B-hf: CLIP tower, anyres
    tiles over pinpoints ``[[16, 32], [32, 16], [32, 32]]``, average pooling of video frames with stride 2,
    Llama LM) and its processor (PIL image processor; the torch video processor of :mod:`.video`, frames
    resized on their shortest edge and centre-cropped to ``image_size``).

    Returns ``(model, processor)``.

    Examples:
        >>> model, processor = tiny_llava_next_video()
        >>> type(model).__name__, model.config.spatial_pool_stride
        ('LlavaNextVideoForConditionalGeneration', 2)
    """
    import transformers as tf
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from .video import TorchLlavaNextVideoVideoProcessor

    tok = word_tokenizer(["<image>", "<video>"], image_token="<image>", video_token="<video>")
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        image_grid_pinpoints=pinpoints,
        crop_size={"height": image_size, "width": image_size},
    )
    processor = without_video(tf.LlavaNextVideoProcessor)(
        video_processor=TorchLlavaNextVideoVideoProcessor(size=image_size),
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template_for("<image>", video="<video>"),
    )
    vision = tf.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = tf.LlamaConfig(**text_kwargs(tok, d_model, n_layers, 4))
    config = tf.LlavaNextVideoConfig(  # type: ignore[call-arg]  # HF configs take token ids as extra keywords
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=pinpoints,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_mode="average",
        spatial_pool_stride=2,
        pad_token_id=tok.pad_token_id,
    )
    return build_tiny(
        tf.LlavaNextVideoForConditionalGeneration, config, tok, seed, attn_implementation
    ), processor
