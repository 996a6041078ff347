"""Tiny random Pixtral and Mistral 3 models (both with a Pixtral tower) and their processors.

Mistral 3 and Pixtral share :func:`_pixtral_processor_cls` (``PixtralProcessor`` without
torchvision); Pixtral's model is a ``LlavaForConditionalGeneration``.

Examples:
    >>> from hooked_mllm.testing import tiny_mistral3
    >>> model, processor = tiny_mistral3()
    >>> processor.image_break_token
    '[IMG_BREAK]'
"""

from __future__ import annotations

from typing import Any

from ._common import build_tiny, chat_template_for, text_kwargs, word_tokenizer

PIXTRAL_SPECIALS = ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]


def _pixtral_processor_cls():
    """``PixtralProcessor`` without torchvision: its module imports the torchvision image
    processor only for a token-count helper, which is pointed at the PIL one while it loads."""
    import importlib
    import sys
    import types

    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    name = "transformers.models.pixtral.processing_pixtral"
    if name not in sys.modules:
        stub = types.ModuleType("transformers.models.pixtral.image_processing_pixtral")
        stub.get_resize_output_image_size = pil.get_resize_output_image_size  # type: ignore[attr-defined]
        missing = stub.__name__ not in sys.modules
        if missing:
            sys.modules[stub.__name__] = stub
        try:
            importlib.import_module(name)
        finally:
            if missing:
                del sys.modules[stub.__name__]
    return sys.modules[name].PixtralProcessor


def _pixtral_parts(
    d_model: int, n_layers: int, patch_size: int, longest_edge: int, *, merge: int
) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """The tokenizer, ``PixtralProcessor`` (``merge``: its spatial merge size), Mistral text config and tiny
    Pixtral vision config shared by :func:`tiny_mistral3` and :func:`tiny_pixtral`."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    tok = word_tokenizer(PIXTRAL_SPECIALS, image_token="[IMG]")
    image_processor = PixtralImageProcessorPil(size={"longest_edge": longest_edge}, patch_size=patch_size)
    processor = _pixtral_processor_cls()(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        spatial_merge_size=merge,
        chat_template=chat_template_for("[IMG]"),
    )
    text = dict(
        text_kwargs(tok, d_model, n_layers, 4),
        model_type="mistral",
        head_dim=d_model // 2,
        sliding_window=None,
    )
    vision = dict(
        model_type="pixtral",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=8,
        image_size=longest_edge,
        patch_size=patch_size,
    )
    return tok, processor, text, vision


def tiny_mistral3(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 32,
    patch_size: int = 4,
    longest_edge: int = 32,
):
    """A tiny random Mistral 3 (shrunk from mistralai/Mistral-Small-3.1-24B-Instruct-2503: Pixtral
    tower with 2D RoPE, RMSNorm projector with a 2x2 patch merger, Mistral LM with ``head_dim``
    set apart from ``d_model / n_heads``) and its ``PixtralProcessor`` (PIL image processor).

    Images are resized to a longest edge of at most ``longest_edge`` px and to multiples of
    ``2 * patch_size``; each ``2 * patch_size`` block is one ``[IMG]`` token, rows ended by
    ``[IMG_BREAK]`` (the last by ``[IMG_END]``). Returns ``(model, processor)``.
    """
    import transformers as tf

    tok, processor, text, vision = _pixtral_parts(d_model, n_layers, patch_size, longest_edge, merge=2)
    config = tf.Mistral3Config(
        text_config=text,
        vision_config=vision,
        spatial_merge_size=2,
        vision_feature_layer=-1,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
    )
    return build_tiny(tf.Mistral3ForConditionalGeneration, config, tok, seed, attn_implementation), processor


def tiny_pixtral(
    seed: int = 0,
    attn_implementation: str | None = None,
    n_layers: int = 2,
    d_model: int = 32,
    patch_size: int = 4,
    longest_edge: int = 16,
):
    """A tiny random Pixtral on LLaVA (shrunk from mistral-community/pixtral-12b's config:
    ``LlavaForConditionalGeneration`` with a Pixtral tower (2D RoPE, gated SiLU MLP), LLaVA's
    two-layer projector, Mistral LM with ``head_dim`` set apart from ``d_model / n_heads``, last
    vision layer with ``vision_feature_select_strategy="full"``) and its ``PixtralProcessor``
    (PIL image processor, no patch merging).

    Images are resized to a longest edge of at most ``longest_edge`` px and up to multiples of
    ``patch_size``; each patch is one ``[IMG]`` token, rows ended by ``[IMG_BREAK]`` (the last
    by ``[IMG_END]``). Returns ``(model, processor)``.
    """
    import transformers as tf

    tok, processor, text, vision = _pixtral_parts(d_model, n_layers, patch_size, longest_edge, merge=1)
    vision["hidden_act"] = "silu"
    config = tf.LlavaConfig(  # type: ignore[call-arg]  # HF configs take token ids as extra keywords
        text_config=text,
        vision_config=vision,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        pad_token_id=tok.pad_token_id,
    )
    return build_tiny(tf.LlavaForConditionalGeneration, config, tok, seed, attn_implementation), processor
