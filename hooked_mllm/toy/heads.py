"""VQA against textual QA: which layers and heads carry the answer, in the VLM and in its text-only LM.

Purpose:
    The seed paper on LLaVA compares visual QA with textual QA (the same question about the scene described in
    words) and finds that the visual mechanism reuses the text model's in-context mechanism. On the toy world
    both sides exist: a recipe VLM answers about the image, ``toy-lm`` (the LM it started from) answers about
    the scene in words. For each question type, :func:`answer_heads` averages
    :func:`hooked_mllm.mechanism.head_scores` (how much each head's output at the last position raises the log
    probability of the right answer, with the frozen-scale readout) over the questions of unseen scenes.

Connections:
    Scenes and questions from :class:`hooked_mllm.toy.world.World`, prompts from
    :func:`hooked_mllm.toy.data.encode` (image) and :func:`~hooked_mllm.toy.data.encode_text` (words); a text
    LM is run inside a LLaVA whose language model is a copy of it
    (:func:`hooked_mllm.toy.recipe.vlm_from_text_lm`, text-only inputs), so both sides go through the same
    :class:`hooked_mllm.HookedMLLM` hook points. :mod:`hooked_mllm.toy.science` prints
    :func:`format_comparison` as its ``heads`` section.

Contents:
    :class:`AnswerHeads`, :func:`answer_heads`, :func:`heads_table`, :func:`load_for_heads`, :func:`compare`,
    :func:`format_heads`, :func:`format_comparison`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from hooked_mllm.toy.data import encode, encode_text
from hooked_mllm.toy.model import checkpoint_kind, load_for_heads
from hooked_mllm.toy.world import World

if TYPE_CHECKING:
    from hooked_mllm import HookedMLLM

__all__ = [
    "BINDING_QTYPES",
    "AnswerHeads",
    "answer_heads",
    "compare",
    "format_comparison",
    "format_heads",
    "heads_table",
    "load_for_heads",
]

BINDING_QTYPES: tuple[str, ...] = ("color", "shape", "position", "exist")
"""The question types that need the asked object to be found (count does not)."""


@dataclass(frozen=True, eq=False)
class AnswerHeads:
    """Mean head scores of one model on one question type.

    Attributes:
        mode: ``"image"`` (VQA) or ``"text"`` (textual QA).
        qtype: the question type.
        values: ``[layer, head]`` mean over questions of the head's score (nats of log p(answer)).
        n: number of questions averaged.
    """

    mode: str
    qtype: str
    values: Float[Tensor, "layer head"]
    n: int

    def top(self, k: int = 3) -> list[tuple[int, int]]:
        """The ``k`` highest-scoring ``(layer, head)``, best first."""
        flat = self.values.flatten().topk(k).indices.tolist()
        return [divmod(i, self.values.shape[1]) for i in flat]

    def layer_share(self) -> Float[Tensor, " layer"]:
        """Each layer's share of the positive head scores (sums to 1)."""
        pos = self.values.clamp(min=0).sum(-1)
        return pos / pos.sum().clamp(min=1e-12)


def _questions(seed: int, n: int, qtype: str):
    scenes = World(seed=seed).sample(n)
    return [(s, qa) for s in scenes for qa in s.questions_of(qtype)]


@torch.no_grad()
def answer_heads(
    model: HookedMLLM, qtype: str, *, mode: str = "image", seed: int = 123, n: int = 100, batch_size: int = 64
) -> AnswerHeads:
    """Mean :func:`~hooked_mllm.mechanism.head_scores` for the right answer over every ``qtype`` question of
    ``n`` scenes of ``World(seed)``, asked about the image (``mode="image"``) or the scene in words
    (``mode="text"``, text-only input).

    Examples:
        >>> from hooked_mllm import toy
        >>> heads = answer_heads(toy.load("toy-llava"), "color", n=20)
        >>> tuple(heads.values.shape)
        (4, 4)
    """
    from hooked_mllm.mechanism import head_scores

    if mode not in ("image", "text"):
        raise ValueError(f"mode must be 'image' or 'text', got {mode!r}.")
    items = _questions(seed, n, qtype)
    if not items:
        raise ValueError(f"No {qtype!r} question in {n} scenes of World({seed}); ask for more scenes.")
    total: torch.Tensor | None = None
    count = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        scenes, questions = [s for s, _ in chunk], [qa.question for _, qa in chunk]
        batch: Mapping[str, torch.Tensor]
        if mode == "image":
            batch = encode(model.processor, [s.image for s in scenes], questions)
        else:
            batch = encode_text(model.processor.tokenizer, scenes, questions)
        scores = head_scores(model, dict(batch), target=[qa.answer for _, qa in chunk]).values
        total = scores.sum(0) if total is None else total + scores.sum(0)
        count += len(chunk)
    assert total is not None  # items is not empty
    return AnswerHeads(mode, qtype, total / count, count)


def compare(vqa: AnswerHeads, tqa: AnswerHeads) -> float:
    """Pearson correlation of two ``[layer, head]`` score maps of the same shape."""
    if vqa.values.shape != tqa.values.shape:
        raise ValueError(
            f"Head maps differ in shape: {tuple(vqa.values.shape)} vs {tuple(tqa.values.shape)}."
        )
    a, b = vqa.values.flatten(), tqa.values.flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def format_comparison(pairs: list[tuple[AnswerHeads, AnswerHeads]]) -> str:
    """A text table: per question type, the top heads and the layer shares of VQA and TQA, and their
    correlation."""
    lines = []
    for vqa, tqa in pairs:
        share = lambda h: " ".join(f"{x:.2f}" for x in h.layer_share().tolist())  # noqa: E731
        lines.append(
            f"{vqa.qtype:<9} VQA top {vqa.top(3)} layers [{share(vqa)}] (n={vqa.n})\n"
            f"{'':<9} TQA top {tqa.top(3)} layers [{share(tqa)}] (n={tqa.n})\n"
            f"{'':<9} correlation of the head maps {compare(vqa, tqa):+.2f}"
        )
    return "\n".join(lines)


def heads_table(
    path, *, seed: int = 123, n: int = 100, qtypes: tuple[str, ...] = BINDING_QTYPES
) -> list[AnswerHeads]:
    """:func:`answer_heads` of a toy checkpoint for each question type: VQA for a VLM, textual QA for a text
    LM.

    Examples:
        >>> rows = heads_table(toy.checkpoint_dir("toy-llava"), n=20)  # doctest: +SKIP
    """
    mode = "text" if checkpoint_kind(path) == "text" else "image"
    model = load_for_heads(path)
    return [answer_heads(model, q, mode=mode, seed=seed, n=n) for q in qtypes]


def format_heads(rows: list[AnswerHeads]) -> str:
    """One line per question type: the top three heads and each layer's share of the positive scores."""
    if not rows:
        return ""
    title = "VQA" if rows[0].mode == "image" else "textual QA"
    out = [
        f"heads that raise log p(answer) at the last position ({title}; top 3 (layer, head), layer shares)"
    ]
    for r in rows:
        shares = " ".join(f"{x:.2f}" for x in r.layer_share().tolist())
        out.append(f"  {r.qtype:<9} {str(r.top(3)):<26} [{shares}]  n={r.n}")
    return "\n".join(out)
