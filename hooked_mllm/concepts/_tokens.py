"""Finding a word among a tokenizer's tokens by its decoded text, for any tokenizer.

Real tokenizers never hold ``"dog"`` as a token: byte-level BPE writes it ``Ġdog`` (or splits
it into ``Ġd`` ``og``), SentencePiece ``▁dog``, and capitalised or sentence-initial forms are
other tokens again. So the search works on text: each token gets the character span it adds
to the decoded string, the word is found in that string (whole word, any case by default),
and the tokens whose spans overlap the match are its sub-tokens.

Used by :mod:`hooked_mllm.concepts.extract` for the ``token`` / ``predicting`` rules.

Examples:
    >>> spans, text = token_spans(tokenizer, ids)                 # doctest: +SKIP
    >>> find_subtokens(spans, text, ["dog"])                       # doctest: +SKIP
    [3, 4]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


def token_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[list[tuple[int, int]], str]:
    """Character span ``[start, end)`` that each token adds to the decoded text, and that text.

    Spans come from decoding growing prefixes, so leading-space markers (``Ġ``, ``▁``) and
    multi-byte characters split over several byte tokens are handled by the tokenizer itself.
    Special tokens decode to empty spans.
    """
    ids = [int(i) for i in ids]

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    text = decode(ids)
    spans, previous = [], 0
    for i in range(len(ids)):
        end = min(len(decode(ids[: i + 1])), len(text)) if i + 1 < len(ids) else len(text)
        end = max(end, previous)
        spans.append((previous, end))
        previous = end
    return spans, text


def find_word(
    text: str, words: Sequence[str], *, case_sensitive: bool = False, whole_word: bool = True
) -> list[tuple[int, int, str]]:
    """Every match ``(start, end, word)`` of any of ``words`` in ``text``, in text order.

    Examples:
        >>> find_word("A Dog and a dogma", ["dog"])
        [(2, 5, 'dog')]
    """
    flags = 0 if case_sensitive else re.IGNORECASE
    found = []
    for word in words:
        word = word.strip()
        if not word:
            continue
        pattern = re.escape(word)
        if whole_word:
            pattern = rf"(?<!\w){pattern}(?!\w)"
        found += [(m.start(), m.end(), word) for m in re.finditer(pattern, text, flags)]
    return sorted(found)


def overlapping(spans: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose non-empty span overlaps ``[start, end)``."""
    return [i for i, (s, e) in enumerate(spans) if e > s and s < end and e > start]


def find_subtokens(
    spans: Sequence[tuple[int, int]],
    text: str,
    words: Sequence[str],
    *,
    occurrence: str = "first",
    case_sensitive: bool = False,
    whole_word: bool = True,
) -> list[int]:
    """Token indices of the first (or last) occurrence of any of ``words``; [] when absent."""
    matches = find_word(text, words, case_sensitive=case_sensitive, whole_word=whole_word)
    if not matches:
        return []
    start, end, _ = matches[0] if occurrence == "first" else matches[-1]
    return overlapping(spans, start, end)
