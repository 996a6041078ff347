"""A tiny random InternVL model and its processor.

Examples:
    >>> from hooked_mllm.testing import tiny_internvl
    >>> model, processor = tiny_internvl()
    >>> model.config.model_type
    'internvl'
"""

from __future__ import annotations

import torch

from ._common import build_tiny, chat_template_for, text_kwargs, without_video, word_tokenizer

INTERNVL_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]


def tiny_internvl(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 64,
    tile: int = 16,
    patch_size: int = 2,
    max_tiles: int = 4,
):
    """A tiny random InternVL (shrunk from OpenGVLab/InternVL3-1B-hf: InternViT tower with layer
    scale, pixel shuffle by 0.5 and an MLP projector, Qwen2 LM) and its processor, with tiling on
    (``crop_to_patches``: up to ``max_tiles`` tiles of ``tile`` px plus a thumbnail).

    Each tile is ``(tile / patch_size) ** 2 / 4`` (16) ``<IMG_CONTEXT>`` tokens. Returns
    ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tok = word_tokenizer(
        INTERNVL_SPECIALS,
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    n_tokens = (tile // patch_size) ** 2 // 4
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=max_tiles
    )
    processor = without_video(tf.InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=None,
        image_seq_length=n_tokens,
        chat_template=chat_template_for("<IMG_CONTEXT>"),
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=[tile, tile],
        patch_size=[patch_size, patch_size],
        layer_scale_init_value=0.1,
    )
    text = dict(text_kwargs(tok, d_model, n_layers, 4), model_type="qwen2")
    config = tf.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_seq_length=n_tokens,
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=0.5,
    )
    model = build_tiny(tf.InternVLForConditionalGeneration, config, tok, seed, attn_implementation)
    with torch.no_grad():  # random layer scales, so that hooks see them apply per channel
        for layer in model.model.vision_tower.encoder.layer:
            layer.lambda_1.uniform_(0.05, 0.5)
            layer.lambda_2.uniform_(0.05, 0.5)
    return model, processor
