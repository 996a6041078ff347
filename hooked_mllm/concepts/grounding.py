"""Grounding concepts in words (through the unembedding) and in images (top samples, patch maps).

:func:`text_grounding` decodes each concept vector through the model's LM head, with or
without the final norm first (the CoX-LMM reference code uses the LM head *without* the
norm; ``apply_norm=True`` reads the vector as the model would read a residual), takes the
top ``top_k`` tokens and keeps real words (alphabetic, longer than ``min_length``, not
stopwords). :func:`visual_grounding` gives each concept's top-activating samples;
:func:`concept_map` turns one image's per-token features into a per-patch activation map.

Examples:
    >>> words = text_grounding(model, dec.components_, top_k=50, n_words=10)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..model import HookedMLLM

STOPWORDS = frozenset(
    "the and for are but not you all any can had her was one our out has him his how its may new now old see "
    "two way who did get let put say she too use that with have this will your from they know want been good "
    "much some time very when come here just like long make many more only over such take than them well "
    "were what there which their would about these other into could".split()
)


def text_grounding(
    model: HookedMLLM,
    components: Any,
    *,
    top_k: int = 50,
    n_words: int = 10,
    apply_norm: bool = False,
    min_length: int = 2,
    stopwords: frozenset[str] = STOPWORDS,
) -> list[list[str]]:
    """The words each concept vector (rows of ``components`` ``[K, d]``) decodes to."""
    u = torch.as_tensor(getattr(components, "components_", components), dtype=torch.float32)
    head = model.adapter.module(model.hf_model, model.adapter.modules.unembed)
    x = u.to(device=model.device, dtype=head.weight.dtype)  # type: ignore[arg-type]  # nn.Module attribute
    with torch.no_grad():
        if apply_norm:
            x = model.final_norm()(x)
        logits = head(x).float()
    tokenizer = model.processor.tokenizer
    out = []
    for row in logits:
        ids = row.topk(min(top_k, row.numel())).indices.tolist()
        words = []
        for token in tokenizer.convert_ids_to_tokens(ids):
            word = token.lstrip("▁Ġ").lower()
            if word.isalpha() and len(word) > min_length and word not in stopwords and word not in words:
                words.append(word)
        out.append(words[:n_words])
    return out


def shift_grounding(model: HookedMLLM, result: Any, **kwargs: Any) -> dict[str, Any]:
    """Words of a :class:`~hooked_mllm.concepts.shift.ShiftResult`'s concepts and shift vectors.

    Returns ``{"original", "shifted", "shift", "finetuned"}`` word lists (one per concept; ``finetuned``
    is None without ``concepts_b``) and, when the result has a matching, ``"overlap_original"`` and
    ``"overlap_shifted"``: per matched pair, the fraction of the fine-tuned concept's words that the
    original / shifted concept shares (the paper's grounded-word overlap; higher after the shift means
    the shift moved the concept's meaning toward the fine-tuned model's). ``kwargs`` go to
    :func:`text_grounding`.

    Examples:
        >>> words = shift_grounding(model, analyze_shift(A, B, dec_a, dec_b))   # doctest: +SKIP
        >>> words["shift"][0]                                                  # doctest: +SKIP
        ['red', 'crimson', ...]
    """
    out: dict[str, Any] = {
        "original": text_grounding(model, result.concepts_a, **kwargs),
        "shifted": text_grounding(model, result.shifted, **kwargs),
        "shift": text_grounding(model, result.shift_vectors, **kwargs),
        "finetuned": None
        if result.concepts_b is None
        else text_grounding(model, result.concepts_b, **kwargs),
    }
    if result.improvement is not None and out["finetuned"] is not None:
        m = result.improvement.matching

        def share(words: list[str], target: list[str]) -> float:
            return len(set(words) & set(target)) / len(set(target)) if target else 0.0

        pairs = list(zip(m.index_x, m.index_y))
        out["overlap_original"] = [share(out["original"][k], out["finetuned"][j]) for k, j in pairs]
        out["overlap_shifted"] = [share(out["shifted"][k], out["finetuned"][j]) for k, j in pairs]
    return out


def visual_grounding(activations: Float[Any, "n k"], ids: Sequence[str], top: int = 5) -> list[list[str]]:
    """Per concept, the ids of the ``top`` samples that activate it most."""
    v = np.asarray(activations)
    if v.shape[0] != len(ids):
        raise ValueError(f"{v.shape[0]} activation rows for {len(ids)} ids")
    order = np.argsort(-v, axis=0, kind="stable")[:top]
    return [[ids[i] for i in order[:, k]] for k in range(v.shape[1])]


def concept_map(
    decomposer: Any, token_features: Float[Tensor, "n_tokens d"], grid: tuple[int, int], concept: int
) -> Float[np.ndarray, "rows cols"]:
    """One concept's activation on each image token, shaped like the image's token grid."""
    rows, cols = grid
    if token_features.shape[0] != rows * cols:
        raise ValueError(f"{token_features.shape[0]} token features do not fill a {rows}x{cols} grid")
    v = np.asarray(decomposer.transform(token_features))
    return v[:, concept].reshape(rows, cols)
