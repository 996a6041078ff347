"""Shared pieces of the tiny builders: a word-level vocabulary, tokenizers, chat templates, images.

:func:`tiny_tokenizer` (LLaVA's ``<image>`` vocabulary) and :func:`word_tokenizer` (the same
words plus a family's special tokens) build real HF fast tokenizers; ``chat_template_for``
writes the user turn with a family's image placeholder; :func:`random_image` and
:func:`image_pair` make seeded inputs. The private helpers (``build_tiny``, ``text_kwargs``,
``without_video``) are shared by the family modules beside this one.

Examples:
    >>> from hooked_mllm.testing import word_tokenizer
    >>> tok = word_tokenizer(["<image>"], image_token="<image>")
    >>> tok.convert_ids_to_tokens(tok("what <image>")["input_ids"])
    ['what', '<image>']
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

WORDS = (
    "what color is the circle square triangle red green blue yellow purple how many objects "
    "where left right top bottom yes no a an and of there one two three describe image picture "
    "USER ASSISTANT : ? . , hello world"
).split()
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER : "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image> "
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT :{% endif %}"
)


def tiny_tokenizer():
    """A word-level HF tokenizer over a small English vocabulary, with ``<image>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    return tok


def image_pair(model, seeds: tuple[int, int], prompt: str = "what color is the circle ?"):
    """Two one-row batches with the same prompt and layout and different random images (clean, corrupted)."""
    return tuple(model.prepare(images=[random_image(seed)], prompts=[prompt]) for seed in seeds)


def random_image(seed: int, size: int = 32) -> Image.Image:
    """A seeded random RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def word_tokenizer(specials: list[str], **special_tokens: str):
    """A word-level tokenizer over :data:`WORDS` plus ``specials`` (added first, never split).

    ``special_tokens`` names extra special tokens (``image_token="<image>"``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(base + specials + list(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=special_tokens,
    )
    tok.add_special_tokens(
        {"additional_special_tokens": [s for s in specials if s not in special_tokens.values()]}
    )
    return tok


def chat_template_for(image: str, video: str | None = None) -> str:
    videos = "" if video is None else "{% elif item['type'] == 'video' %}" + video + " "
    return (
        "{% for message in messages %}{% if message['role'] == 'user' %}USER : "
        "{% for item in message['content'] %}{% if item['type'] == 'image' %}" + image + " " + videos + ""
        "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT :{% endif %}"
    )


def build_tiny(model_cls, config, tok, seed: int, attn_implementation: str | None):
    """``model_cls(config)`` with seeded random weights, the attention implementation, eval mode and the
    tokenizer's special ids in its generation config."""
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    return model


def text_kwargs(tok, d_model: int, n_layers: int, n_heads: int) -> dict:
    return dict(
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2),
        vocab_size=len(tok),
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def without_video(processor_cls):
    """``processor_cls`` accepting ``video_processor=None`` or a PIL-only video processor (the class
    check of video processors needs torchvision)."""

    class ImageOnly(processor_cls):  # type: ignore[misc, valid-type]  # a class given at run time
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnly.__name__ = processor_cls.__name__
    return ImageOnly
