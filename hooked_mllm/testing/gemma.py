"""Tiny random Gemma 3, PaliGemma and PaliGemma 2 models and their processors.

Examples:
    >>> from hooked_mllm.testing import tiny_paligemma
    >>> model, processor = tiny_paligemma("2")
    >>> model.config.text_config.model_type
    'gemma2'
"""

from __future__ import annotations

import torch

from ._common import build_tiny, chat_template_for, text_kwargs, word_tokenizer

GEMMA3_SPECIALS = ["<start_of_image>", "<image_soft_token>", "<end_of_image>"]


def tiny_gemma3(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 64,
    image_size: int = 32,
    patch_size: int = 4,
    tokens_per_image: int = 16,
):
    """A tiny random Gemma 3 (shrunk from google/gemma-3-4b-it: SigLIP tower, average-pool
    projector to ``tokens_per_image`` tokens, Gemma 3 LM with sandwich norms) and its processor.

    HF initialises the projector's ``mm_input_projection_weight`` to zeros (so the image would
    never reach the text); it is drawn at random here. Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = word_tokenizer(
        GEMMA3_SPECIALS,
        boi_token="<start_of_image>",
        image_token="<image_soft_token>",
        eoi_token="<end_of_image>",
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = tf.Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=tokens_per_image,
        chat_template=chat_template_for("<start_of_image>"),
    )
    text = dict(
        text_kwargs(tok, d_model, n_layers, 4),
        head_dim=16,
        sliding_window=8,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"][:n_layers] + ["full_attention"] * (n_layers - 2),
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    ids = {
        name: tok.convert_tokens_to_ids(t)
        for name, t in (
            ("image_token_index", "<image_soft_token>"),
            ("boi_token_index", "<start_of_image>"),
            ("eoi_token_index", "<end_of_image>"),
        )
    }
    config = tf.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image, **ids
    )
    model = build_tiny(tf.Gemma3ForConditionalGeneration, config, tok, seed, attn_implementation)
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    return model, processor


def tiny_paligemma(
    version: str = "2",
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 32,
    image_size: int = 16,
    patch_size: int = 4,
):
    """A tiny random PaliGemma 2 (``version="2"``, shrunk from google/paligemma2-3b-pt-224: SigLIP
    tower, linear projector, Gemma 2 LM with sandwich norms, logit soft-capping and alternating
    sliding-window layers) or PaliGemma (``"1"``, from google/paligemma-3b-pt-224: Gemma LM) and
    its processor (no chat template, as the real one).

    ``(image_size / patch_size) ** 2`` (16) image tokens per image. The processor adds PaliGemma's
    1024 ``<locXXXX>`` and 128 ``<segXXX>`` tokens, so the vocabulary is built after it.
    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch_size) ** 2  # type: ignore[attr-defined]  # read by the processor
    tok = word_tokenizer(["<image>"], image_token="<image>")
    processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    text = dict(text_kwargs(tok, d_model, n_layers, 4), head_dim=8, hidden_activation="gelu_pytorch_tanh")
    if version == "2":
        text.update(
            model_type="gemma2",
            sliding_window=8,
            query_pre_attn_scalar=8,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            layer_types=["sliding_attention", "full_attention"] * (n_layers // 2)
            + ["sliding_attention"] * (n_layers % 2),
        )
    else:
        text.update(model_type="gemma", num_key_value_heads=1)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,
    )
    config = tf.PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        projection_dim=d_model,
        hidden_size=d_model,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vocab_size=len(tok),
    )
    return build_tiny(tf.PaliGemmaForConditionalGeneration, config, tok, seed, attn_implementation), processor
