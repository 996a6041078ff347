"""Steering vectors from features, applied through the hook library during generation.

After the representation-shift paper: a steering vector is the mean of a target set's
features minus the mean of a source set's (e.g. samples answered "no" minus samples
answered "yes", at one layer), or the difference of two concept vectors. It is added as
``alpha * vector`` to ``blocks.{layer}.hook_resid_post`` with a position schedule
(:class:`hooked_mllm.hooks.Steer`), and :func:`evaluate_steering` reports how often answers
become the target and how accuracy on other questions moves.

Example:
    >>> v = mean_difference(features_no, features_yes)                           # doctest: +SKIP
    >>> report = evaluate_steering(model, targeted, others, v, layer=3, alpha=4, target="no")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..hooks import Steer

if TYPE_CHECKING:
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
        raise ValueError(f"No samples labelled {target!r} or {source!r} (labels seen: {sorted(set(map(str, labels)))})")
    return mean_difference(z[mask_t], z[mask_s])


def concept_difference(components: Any, source: int, target: int) -> Float[Tensor, " d"]:
    """``u_target - u_source`` of a fitted decomposer's ``components_`` (or a ``[k, d]`` array)."""
    u = torch.as_tensor(getattr(components, "components_", components), dtype=torch.float32)
    return u[target] - u[source]


def steering_hooks(vector: Tensor, layer: int, alpha: float = 1.0, schedule: Any = "all") -> list[tuple[str, Steer]]:
    """``fwd_hooks`` adding ``alpha * vector`` to ``blocks.{layer}.hook_resid_post``."""
    return [(f"blocks.{layer}.hook_resid_post", Steer(vector, alpha, schedule))]


@dataclass(frozen=True)
class SteeringReport:
    """How a steering vector changed answers.

    Attributes:
        target_rate: Fraction of targeted samples answered ``target`` when steered.
        target_rate_before: The same without steering.
        other_accuracy_before, other_accuracy_after: Accuracy on the other samples.
        answers: ``(question, expected, before, after)`` for the targeted samples.
    """

    target_rate: float
    target_rate_before: float
    other_accuracy_before: float
    other_accuracy_after: float
    answers: list[tuple[str, str, str, str]]

    def _repr_html_(self) -> str:
        from ..viz.display import steering_html

        return steering_html(self)


def _answers(model: HookedMLLM, samples: Sequence[Any], hooks: list, batch_size: int, max_new_tokens: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = model.prepare(images=[s[0] for s in chunk], prompts=[s[1] for s in chunk])
        text = model.generate(batch, max_new_tokens=max_new_tokens, fwd_hooks=hooks).text or [""] * len(chunk)
        out += [t.strip().split(" ")[0] if t.strip() else "" for t in text]
    return out


def evaluate_steering(model: HookedMLLM, targeted: Sequence[tuple[Any, str, str]], others: Sequence[tuple[Any, str, str]],
                      vector: Tensor, *, layer: int, alpha: float, target: str, schedule: Any = "all",
                      batch_size: int = 16, max_new_tokens: int = 3) -> SteeringReport:
    """Steer ``targeted`` samples toward ``target`` and measure side effects on ``others``.

    Samples are ``(image, prompt, expected_answer)``; answers are the first generated word.
    """
    hooks = steering_hooks(vector, layer, alpha, schedule)
    before = _answers(model, targeted, [], batch_size, max_new_tokens)
    after = _answers(model, targeted, hooks, batch_size, max_new_tokens)
    other_before = _answers(model, others, [], batch_size, max_new_tokens) if others else []
    other_after = _answers(model, others, hooks, batch_size, max_new_tokens) if others else []

    def rate(answers: list[str], wanted: Sequence[str]) -> float:
        return sum(a == w for a, w in zip(answers, wanted)) / max(1, len(answers))

    return SteeringReport(
        target_rate=rate(after, [target] * len(after)),
        target_rate_before=rate(before, [target] * len(before)),
        other_accuracy_before=rate(other_before, [s[2] for s in others]),
        other_accuracy_after=rate(other_after, [s[2] for s in others]),
        answers=[(s[1], s[2], b, a) for s, b, a in zip(targeted, before, after)],
    )
