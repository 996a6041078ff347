"""A tiny random Mllama (Llama 3.2 Vision: gated cross-attention layers) model and its processor.

Examples:
    >>> from hooked_mllm.testing import tiny_mllama
    >>> model, processor = tiny_mllama()
    >>> model.config.model_type
    'mllama'
"""

from __future__ import annotations

import torch

from ._common import build_tiny, chat_template_for, text_kwargs, word_tokenizer


def tiny_mllama(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 3,
    d_model: int = 32,
    cross_layers: tuple[int, ...] = (1,),
    image_size: int = 16,
    patch_size: int = 4,
):
    """A tiny random Mllama (shrunk from meta-llama/Llama-3.2-11B-Vision-Instruct: tiled vision
    encoder with local and gated global layers, linear projector, Llama LM whose layers
    ``cross_layers`` cross-attend to the vision states) and its ``MllamaProcessor``.

    Tiles are ``image_size`` px (``(image_size / patch_size)**2`` patches + CLS), at most 2 per
    image (aspect ratios 1x1, 1x2, 2x1). The cross-attention gates, zero at initialisation
    in HF, are set to random non-zero values so that the image reaches the text.
    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tok = word_tokenizer(["<|image|>"], image_token="<|image|>")
    image_processor = MllamaImageProcessorPil(
        size={"height": image_size, "width": image_size}, max_image_tiles=2
    )
    processor = tf.MllamaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=chat_template_for("<|image|>")
    )
    text = dict(text_kwargs(tok, d_model, n_layers, 4), cross_attention_layers=list(cross_layers))
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        max_num_tiles=2,
        intermediate_layers_indices=[0],
        vision_output_dim=64,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    )
    config = tf.MllamaConfig(
        text_config=text, vision_config=vision, image_token_index=tok.convert_tokens_to_ids("<|image|>")
    )
    model = build_tiny(tf.MllamaForConditionalGeneration, config, tok, seed, attn_implementation)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("_gate", ".gate", "gate_attn", "gate_ffn")) and param.numel() == 1:
                param.uniform_(0.3, 1.0)
    return model, processor
