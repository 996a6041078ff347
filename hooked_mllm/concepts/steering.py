"""Steering vectors from features, applied through the hook library during generation.

After the representation-shift paper: a steering vector is the mean of a target set's
features minus the mean of a source set's (e.g. samples answered "no" minus samples
answered "yes", at one layer), or the difference of two concept vectors. It is added as
``alpha * vector`` to ``blocks.{layer}.hook_resid_post`` with a position schedule
(:class:`hooked_mllm.hooks.Steer`), and :func:`evaluate_steering` reports how often answers
become the target and how accuracy on other questions moves, with answers normalised as the VQA
evaluation does (:func:`normalize_answer`), VQA soft accuracy (:func:`vqa_accuracy`), per-answer-type
accuracy, changed answers and answer histograms; :func:`rank_steering_vectors` ranks many candidates.

Examples:
    >>> v = mean_difference(features_no, features_yes)                           # doctest: +SKIP
    >>> report = evaluate_steering(model, targeted, others, v, layer=3, alpha=4,
    ...                            target="no")                                  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..hooks import Steer
from ..model import HookedMLLM


def _matrix(features: Any) -> Tensor:
    value = getattr(features, "features", features)
    value = torch.as_tensor(value, dtype=torch.float32)
    if value.dim() != 2 or len(value) == 0:
        raise ValueError(f"Need a non-empty [n, d] feature matrix, got shape {tuple(value.shape)}")
    return value


def mean_difference(target: Any, source: Any) -> Float[Tensor, " d"]:
    """``mean(target) - mean(source)`` of two ``[n, d]`` feature sets (tensors or ``Features``)."""
    a, b = _matrix(target), _matrix(source)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"Feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return a.mean(0) - b.mean(0)


def split_by(features: Any, labels: Sequence[Any], target: Any, source: Any) -> Float[Tensor, " d"]:
    """The mean difference between the samples labelled ``target`` and those labelled ``source``."""
    z = _matrix(features)
    labels = list(labels)
    mask_t = torch.tensor([label == target for label in labels])
    mask_s = torch.tensor([label == source for label in labels])
    if not mask_t.any() or not mask_s.any():
        raise ValueError(
            f"No samples labelled {target!r} or {source!r} (labels seen: {sorted(set(map(str, labels)))})"
        )
    return mean_difference(z[mask_t], z[mask_s])


def concept_difference(components: Any, source: int, target: int) -> Float[Tensor, " d"]:
    """``u_target - u_source`` of a fitted decomposer's ``components_`` (or a ``[k, d]`` array)."""
    u = torch.as_tensor(getattr(components, "components_", components), dtype=torch.float32)
    return u[target] - u[source]


def steering_hooks(
    vector: Tensor, layer: int, alpha: float = 1.0, schedule: Any = "all"
) -> list[tuple[str, Steer]]:
    """``fwd_hooks`` adding ``alpha * vector`` to ``blocks.{layer}.hook_resid_post``."""
    return [(f"blocks.{layer}.hook_resid_post", Steer(vector, alpha, schedule))]


_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "dont": "don't",
    "doesnt": "doesn't",
    "isnt": "isn't",
    "arent": "aren't",
    "cant": "can't",
    "wont": "won't",
    "didnt": "didn't",
    "im": "i'm",
    "ive": "i've",
    "thats": "that's",
}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:]")


def normalize_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it: lower case, no punctuation or articles, digits for number
    words.

    Examples:
        >>> normalize_answer("Yes."), normalize_answer("The two dogs!"), normalize_answer("3.5")
        ('yes', '2 dogs', '3.5')
    """
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _PUNCT.sub(" ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # periods, except inside numbers such as 3.5
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word.replace("'", ""), word))
    return " ".join(words)


def vqa_accuracy(answer: str, references: str | Sequence[str]) -> float:
    """VQA soft accuracy: ``min(1, matches / 3)`` averaged over the leave-one-out subsets of the references.

    One reference gives exact-match accuracy (after :func:`normalize_answer`).

    Examples:
        >>> vqa_accuracy("Two", ["2", "2", "3", "2", "two", "3", "3", "3", "3", "3"])  # 4 of 10 say "2"
        1.0
        >>> round(vqa_accuracy("2", ["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"]), 3)
        0.6
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = normalize_answer(answer)
    norm = [normalize_answer(r) for r in refs]
    if len(norm) == 1:
        return float(pred == norm[0])
    scores = [min(1.0, sum(pred == r for j, r in enumerate(norm) if j != i) / 3) for i in range(len(norm))]
    return float(np.mean(scores))


@dataclass(frozen=True, kw_only=True)
class SteeringReport:
    """How a steering vector changed answers.

    Attributes:
        target_rate: Fraction of targeted samples answered ``target`` (normalised) when steered.
        target_rate_before: The same without steering.
        other_accuracy_before: VQA (soft) accuracy on the other samples without steering.
        other_accuracy_after: The same with steering.
        answers: ``(question, expected, before, after)`` for the targeted samples.
        other_by_type: Per answer type of the other samples: ``{type: (accuracy before, after)}``.
        changed_targeted: How many targeted answers changed (normalised) under steering.
        changed_other: How many other answers changed (normalised) under steering.
        histogram_before: Counts of the normalised answers of all samples without steering.
        histogram_after: The same with steering.
    """

    target_rate: float
    target_rate_before: float
    other_accuracy_before: float
    other_accuracy_after: float
    answers: list[tuple[str, str, str, str]]
    other_by_type: dict[str, tuple[float, float]] = field(default_factory=dict)
    changed_targeted: int = 0
    changed_other: int = 0
    histogram_before: dict[str, int] = field(default_factory=dict)
    histogram_after: dict[str, int] = field(default_factory=dict)

    @property
    def side_effect(self) -> float:
        """Accuracy lost on the other samples (negative when it rose)."""
        return self.other_accuracy_before - self.other_accuracy_after

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return dict(asdict(self), side_effect=self.side_effect)

    def _repr_html_(self) -> str:
        from ..viz.display import steering_html

        return steering_html(self)


def _answers(
    model: HookedMLLM, samples: Sequence[Any], hooks: list, batch_size: int, max_new_tokens: int
) -> list[str]:
    out: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = model.prepare(images=[s[0] for s in chunk], prompts=[s[1] for s in chunk])
        text = model.generate(batch, max_new_tokens=max_new_tokens, fwd_hooks=hooks).text or [""] * len(chunk)
        out += [normalize_answer(t) for t in text]
    return out


def _report(
    targeted: Sequence[Any],
    others: Sequence[Any],
    target: str,
    before: list[str],
    after: list[str],
    other_before: list[str],
    other_after: list[str],
) -> SteeringReport:
    want = normalize_answer(target)

    def accuracy(answers: list[str], rows: Sequence[Any]) -> float:
        return float(np.mean([vqa_accuracy(a, s[2]) for a, s in zip(answers, rows)])) if rows else 0.0

    by_type: dict[str, tuple[float, float]] = {}
    types = sorted({str(s[3]) for s in others if len(s) > 3})
    for kind in types:
        idx = [i for i, s in enumerate(others) if len(s) > 3 and str(s[3]) == kind]
        rows = [others[i] for i in idx]
        by_type[kind] = (
            accuracy([other_before[i] for i in idx], rows),
            accuracy([other_after[i] for i in idx], rows),
        )
    expected = [s[2] if isinstance(s[2], str) else "|".join(s[2]) for s in targeted]
    return SteeringReport(
        target_rate=float(np.mean([a == want for a in after])) if after else 0.0,
        target_rate_before=float(np.mean([a == want for a in before])) if before else 0.0,
        other_accuracy_before=accuracy(other_before, others),
        other_accuracy_after=accuracy(other_after, others),
        answers=[(s[1], e, b, a) for s, e, b, a in zip(targeted, expected, before, after)],
        other_by_type=by_type,
        changed_targeted=sum(b != a for b, a in zip(before, after)),
        changed_other=sum(b != a for b, a in zip(other_before, other_after)),
        histogram_before=dict(Counter(before + other_before).most_common()),
        histogram_after=dict(Counter(after + other_after).most_common()),
    )


def evaluate_steering(
    model: HookedMLLM,
    targeted: Sequence[tuple],
    others: Sequence[tuple],
    vector: Tensor,
    *,
    layer: int,
    alpha: float,
    target: str,
    schedule: Any = "all",
    batch_size: int = 16,
    max_new_tokens: int = 3,
) -> SteeringReport:
    """Steer ``targeted`` samples toward ``target`` and measure side effects on ``others``.

    Samples are ``(image, prompt, expected)`` or ``(image, prompt, expected, answer_type)``; ``expected``
    is one answer or a list of reference answers (VQA soft accuracy). Answers are compared after
    :func:`normalize_answer` ("Yes." is "yes", "two" is "2").

    Examples:
        >>> r = evaluate_steering(model, no_samples, count_samples, v, layer=3, alpha=1.0,
        ...                       target="yes")                              # doctest: +SKIP
        >>> r.target_rate, r.other_by_type, r.changed_other                  # doctest: +SKIP
    """
    hooks = steering_hooks(vector, layer, alpha, schedule)
    before = _answers(model, targeted, [], batch_size, max_new_tokens)
    other_before = _answers(model, others, [], batch_size, max_new_tokens) if others else []
    after = _answers(model, targeted, hooks, batch_size, max_new_tokens)
    other_after = _answers(model, others, hooks, batch_size, max_new_tokens) if others else []
    return _report(targeted, others, target, before, after, other_before, other_after)


def rank_steering_vectors(
    model: HookedMLLM,
    candidates: Mapping[str, Tensor],
    targeted: Sequence[tuple],
    others: Sequence[tuple],
    *,
    layer: int | Mapping[str, int],
    alpha: float,
    target: str,
    schedule: Any = "all",
    batch_size: int = 16,
    max_new_tokens: int = 3,
    side_effect_weight: float = 1.0,
) -> list[tuple[str, SteeringReport]]:
    """Evaluate many candidate vectors on the same samples and rank them, best first.

    Score: ``target_rate - side_effect_weight * side_effect``. Unsteered answers are computed once.
    ``layer`` may be one layer or a ``{name: layer}`` mapping.

    Examples:
        >>> ranked = rank_steering_vectors(model, {"l2": v2, "l3": v3}, targeted, others,
        ...                                layer={"l2": 2, "l3": 3}, alpha=1.0,
        ...                                target="yes")  # doctest: +SKIP
        >>> ranked[0][0]  # doctest: +SKIP
        'l3'
    """
    before = _answers(model, targeted, [], batch_size, max_new_tokens)
    other_before = _answers(model, others, [], batch_size, max_new_tokens) if others else []
    scored = []
    for name, vector in candidates.items():
        at = layer[name] if isinstance(layer, Mapping) else layer
        hooks = steering_hooks(vector, at, alpha, schedule)
        after = _answers(model, targeted, hooks, batch_size, max_new_tokens)
        other_after = _answers(model, others, hooks, batch_size, max_new_tokens) if others else []
        report = _report(targeted, others, target, before, after, other_before, other_after)
        scored.append((report.target_rate - side_effect_weight * report.side_effect, name, report))
    scored.sort(key=lambda item: -item[0])
    return [(name, report) for _, name, report in scored]
