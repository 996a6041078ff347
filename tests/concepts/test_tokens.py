"""Word matching on decoded text with real tokenizer families, built offline from a few sentences."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hooked_mllm.concepts._tokens import find_subtokens, find_word, token_spans

SENTENCES = [
    "the dog runs after the red ball",
    "a Dog sleeps near the blue car",
    "two dogs and a cat",
    "hotdog stands sell food",
    "the doggedly patient cat watches",
] * 4


@pytest.fixture(scope="module")
def bpe():
    """Byte-level BPE (GPT-2 / Llama-3 / Qwen family): words carry a leading ``Ġ``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        SENTENCES,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="module")
def unigram():
    """SentencePiece-style Unigram (Llama-2 / Mistral / Gemma family): words carry a leading ``▁``."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        SENTENCES,
        trainers.UnigramTrainer(vocab_size=60, special_tokens=["<eos>", "<unk>"], unk_token="<unk>"),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


def pieces(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids, tokenizer.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("family", ["bpe", "unigram"])
def test_spans_rebuild_the_text(family, request):
    tokenizer = request.getfixturevalue(family)
    for text in ["the dog runs", "a Dog sleeps near the blue car", "hotdog stands"]:
        ids, _ = pieces(tokenizer, text)
        spans, decoded = token_spans(tokenizer, ids)
        assert decoded.strip() == text
        assert spans[0][0] == 0 and spans[-1][1] == len(decoded)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no gaps


@pytest.mark.parametrize("family", ["bpe", "unigram"])
def test_leading_space_and_case_variants_match(family, request):
    tokenizer = request.getfixturevalue(family)
    ids, toks = pieces(tokenizer, "the dog runs after the red ball")
    marker = "Ġ" if family == "bpe" else "▁"
    assert "dog" not in toks and any(t.startswith(marker) and "dog" in t for t in toks)  # the trap
    spans, text = token_spans(tokenizer, ids)
    sub = find_subtokens(spans, text, ["dog"])
    assert "".join(toks[i] for i in sub).replace(marker, "") == "dog"
    ids, toks = pieces(tokenizer, "a Dog sleeps")
    spans, text = token_spans(tokenizer, ids)
    assert find_subtokens(spans, text, ["dog"]) and not find_subtokens(
        spans, text, ["dog"], case_sensitive=True
    )


@pytest.mark.parametrize("family", ["bpe", "unigram"])
def test_multi_token_word_gives_all_its_subtokens(family, request):
    tokenizer = request.getfixturevalue(family)
    ids, toks = pieces(tokenizer, "the doggedly patient cat")
    spans, text = token_spans(tokenizer, ids)
    sub = find_subtokens(spans, text, ["doggedly"])
    assert len(sub) >= 2, toks  # a rare word is several tokens
    assert "".join(text[spans[i][0] : spans[i][1]] for i in sub).strip() == "doggedly"
    # whole words only: "dog" is not found inside "doggedly" or "hotdog", unless asked
    assert find_subtokens(spans, text, ["dog"]) == []
    assert (
        find_subtokens(spans, text, ["dog"], whole_word=False)
        == sub[: len(find_subtokens(spans, text, ["dog"], whole_word=False))]
    )


def test_find_word_classes_and_occurrences():
    assert [m[2] for m in find_word("a red and a blue ball, red again", ["blue", "red"])] == [
        "red",
        "blue",
        "red",
    ]
    spans = [(0, 1), (1, 5), (5, 9), (9, 13)]  # "a", " red", " cat", " red"
    assert find_subtokens(spans, "a red cat red", ["red"]) == [1]
    assert find_subtokens(spans, "a red cat red", ["red"], occurrence="last") == [3]
