"""Word-level Hugging Face tokenizer covering the toy world's vocabulary.

Purpose:
    The toy LLaVA needs a real ``PreTrainedTokenizerFast`` so that its checkpoint loads through
    ``AutoProcessor.from_pretrained`` like a Hub checkpoint. One token per word keeps the token positions of
    answers, colours and shapes trivial to find in interpretability experiments.

Connections:
    Words come from :mod:`hooked_mllm.toy.world`; :mod:`hooked_mllm.toy.processor` wraps this tokenizer in a
    ``LlavaProcessor``.

Contents:
    :data:`SPECIAL_TOKENS`, :data:`VOCAB` (fixed order: ids are stable), :func:`build_tokenizer`.

Text is split on whitespace only (``"top-left"`` and ``"USER:"`` are single words); special tokens are split
out before that, so ``"<image><image>"`` is two tokens. Encoding adds ``<s>`` in front (no ``</s>``);
decoding joins words with single spaces.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from hooked_mllm.toy.world import COLORS, NUMBERS, POSITIONS, SHAPES

__all__ = ["SPECIAL_TOKENS", "VOCAB", "build_tokenizer"]

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, IMAGE)
"""Ids 0..4, in this order."""

_WORDS: tuple[str, ...] = (
    "USER:", "ASSISTANT:",
    "what", "color", "is", "the", "shape", "object", "how", "many", "objects", "where",
    "there", "a", "and", ",", "?", ".", "yes", "no", "describe", "image",
)  # fmt: skip

VOCAB: tuple[str, ...] = tuple(
    dict.fromkeys(
        SPECIAL_TOKENS
        + _WORDS
        + tuple(COLORS)
        + SHAPES
        + tuple(p for row in POSITIONS for p in row)
        + NUMBERS
    )
)


def build_tokenizer(
    vocab: tuple[str, ...] = VOCAB, *, video_token: str | None = None
) -> PreTrainedTokenizerFast:
    """A fresh word-level tokenizer over ``vocab`` (default :data:`VOCAB`) with ``<s>`` prepended on encode.

    Args:
        vocab: the words in id order; the first five must be :data:`SPECIAL_TOKENS`.
        video_token: a word of ``vocab`` to split out as the video placeholder (``tokenizer.video_token``),
            as the toy video model's tokenizer does (:mod:`hooked_mllm.toy.video_processor`).

    Examples:
        >>> tok = build_tokenizer()
        >>> tok.decode(tok("what color is the circle ?").input_ids)
        '<s> what color is the circle ?'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    if vocab[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS or (
        video_token is not None and video_token not in vocab
    ):
        raise ValueError(
            f"vocab must start with {SPECIAL_TOKENS} and hold the video token {video_token!r}; "
            f"got {vocab[:6]}..."
        )
    ids = {w: i for i, w in enumerate(vocab)}
    core = Tokenizer(models.WordLevel(vocab=ids, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, ids[BOS])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE, **({"video_token": video_token} if video_token else {})},
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    return tok
