"""Tiny random Idefics2, Idefics3 and SmolVLM models and their processors (image splitting on).

Examples:
    >>> from hooked_mllm.testing import tiny_idefics3
    >>> model, processor = tiny_idefics3()
    >>> processor.image_seq_len
    16
"""

from __future__ import annotations

from typing import Any

from ._common import build_tiny, chat_template_for, text_kwargs, without_video, word_tokenizer

IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]


def tiny_idefics2(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 64,
    n_latents: int = 4,
):
    """A tiny random Idefics2 (shrunk from HuggingFaceM4/idefics2-8b: SigLIP tower, perceiver
    resampler of ``n_latents`` latents, Mistral LM) and its processor (image splitting on).

    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    tok = word_tokenizer(IDEFICS_SPECIALS)
    image_processor = Idefics2ImageProcessorPil(
        do_image_splitting=True, size={"shortest_edge": 16, "longest_edge": 32}
    )
    processor = tf.Idefics2Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=n_latents,
        chat_template=chat_template_for("<image>"),
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    perceiver = dict(
        hidden_size=d_model,
        resampler_n_latents=n_latents,
        resampler_depth=1,
        resampler_n_heads=4,
        resampler_head_dim=8,
        num_key_value_heads=2,
    )
    config = tf.Idefics2Config(  # type: ignore[call-arg]  # HF configs take token ids as extra keywords
        vision_config=vision,
        perceiver_config=perceiver,
        text_config=dict(text_kwargs(tok, d_model, n_layers, 4), model_type="mistral"),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    return build_tiny(tf.Idefics2ForConditionalGeneration, config, tok, seed, attn_implementation), processor


IDEFICS3_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]


def _idefics3_like(smol: bool, seed: int, attn_implementation: str | None, n_layers: int, d_model: int):
    import transformers as tf

    tok = word_tokenizer(IDEFICS3_SPECIALS)
    # Idefics3: 16px tiles of 8x8 patches (patch 2), shuffled by 2 -> 16 tokens per tile.
    # SmolVLM: 32px tiles of 16x16 patches (patch 2), shuffled by 4 -> 16 tokens per tile.
    tile, scale = (32, 4) if smol else (16, 2)
    n_tokens = (tile // 2) ** 2 // scale**2
    sizes: dict[str, Any] = dict(
        do_image_splitting=True, size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=tile,
        patch_size=2,
    )
    text = dict(text_kwargs(tok, d_model, n_layers, 4), model_type="llama")
    if smol:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
        from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

        processor = without_video(tf.SmolVLMProcessor)(
            image_processor=SmolVLMImageProcessorPil(**sizes),
            tokenizer=tok,
            video_processor=SmolVLMVideoProcessor(),
            image_seq_len=n_tokens,
            chat_template=chat_template_for("<image>"),
        )
        config_cls: type[tf.PreTrainedConfig] = tf.SmolVLMConfig
        model_cls: type[tf.PreTrainedModel] = tf.SmolVLMForConditionalGeneration
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        processor = tf.Idefics3Processor(
            image_processor=Idefics3ImageProcessorPil(**sizes),
            tokenizer=tok,
            image_seq_len=n_tokens,
            chat_template=chat_template_for("<image>"),
        )
        config_cls, model_cls = tf.Idefics3Config, tf.Idefics3ForConditionalGeneration
    config = config_cls(  # type: ignore[call-arg]  # HF configs take token ids as extra keywords
        vision_config=vision,
        text_config=text,
        scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    return build_tiny(model_cls, config, tok, seed, attn_implementation), processor


def tiny_idefics3(
    seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2, d_model: int = 64
):
    """A tiny random Idefics3 (shrunk from HuggingFaceM4/Idefics3-8B-Llama3: SigLIP tower, pixel
    shuffle by 2 and a linear projection, Llama LM) and its processor (image splitting on).

    Tiles are 16 px (8x8 patches of 2 px), so each tile gives 16 ``<image>`` tokens; images are
    resized to a longest edge of 32 px before splitting. Returns ``(model, processor)``.
    """
    return _idefics3_like(False, seed, attn_implementation, n_layers, d_model)


def tiny_smolvlm(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2, d_model: int = 64):
    """A tiny random SmolVLM (shrunk from HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP tower, pixel
    shuffle by 4, Llama (SmolLM2) LM) and its processor (image splitting on; needs ``num2words``).

    Tiles are 32 px (16x16 patches of 2 px), shuffled by 4 into 16 ``<image>`` tokens; images are
    resized to a longest edge of 64 px before splitting. Returns ``(model, processor)``.
    """
    return _idefics3_like(True, seed, attn_implementation, n_layers, d_model)
