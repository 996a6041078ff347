"""Score a toy LLaVA on fresh scenes with batched greedy generation.

Purpose:
    The quality bar of the shipped checkpoints: accuracy per question type and caption exact match on scenes
    of a world seed never used in training (training worlds use seeds >= 10,000).

Connections:
    Scenes from :class:`hooked_mllm.toy.world.World`, prompts from :func:`hooked_mllm.toy.data.encode`;
    used by the CLI (``hooked-mllm toy eval``), ``docs/toy.md`` and ``tests/toy/test_checkpoints.py``.

Contents:
    :class:`EvalReport`, :func:`evaluate`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaProcessor, PreTrainedModel

from hooked_mllm.toy.data import CAPTION_STYLES, encode, encode_text, target_caption
from hooked_mllm.toy.model import CHECKPOINTS, checkpoint_dir
from hooked_mllm.toy.processor import CAPTION_PROMPT
from hooked_mllm.toy.world import QTYPES, World

__all__ = ["EvalReport", "evaluate", "evaluate_text"]


@dataclass(frozen=True, kw_only=True)
class EvalReport:
    """Accuracies of one evaluation.

    Attributes:
        accuracy: question type -> fraction of exactly right greedy answers.
        counts: question type -> number of questions asked.
        caption_exact: fraction of captions generated exactly (style ``caption_style``).
        n_scenes, seed, caption_style: what was evaluated.
        errors: a few wrong generations, ``(qtype, question, expected, got)``.
    """

    accuracy: dict[str, float]
    counts: dict[str, int]
    caption_exact: float
    n_scenes: int
    seed: int
    caption_style: str
    errors: tuple[tuple[str, str, str, str], ...] = field(default=())

    def passes(self, *, qa: float = 0.97, caption: float = 0.90) -> bool:
        """True if every question type reaches ``qa`` and captions reach ``caption``."""
        return all(a >= qa for a in self.accuracy.values()) and self.caption_exact >= caption

    def format(self) -> str:
        """A small text table."""
        head = f"toy eval: {self.n_scenes} scenes, world seed {self.seed}, caption style {self.caption_style}"
        lines = [head]
        for q in self.accuracy:
            lines.append(f"  {q:<9} {100 * self.accuracy[q]:6.2f}%  ({self.counts[q]} questions)")
        cap = 100 * self.caption_exact
        lines.append(f"  {'caption':<9} {cap:6.2f}%  exact match ({self.n_scenes} captions)")
        return "\n".join(lines)


class _Tally:
    """Right and total answers per question type (captions under ``"caption"``) and the first 20 wrong
    ones.
    """

    def __init__(self) -> None:
        self.right: dict[str, int] = defaultdict(int)
        self.total: dict[str, int] = defaultdict(int)
        self.errors: list[tuple[str, str, str, str]] = []

    def add(self, qtype: str, question: str, expected: str, answer: str) -> None:
        self.total[qtype] += 1
        if answer == expected:
            self.right[qtype] += 1
        elif len(self.errors) < 20:
            self.errors.append((qtype, question, expected, answer))

    def report(self, n: int, seed: int, caption_style: str) -> EvalReport:
        right, total = self.right, self.total
        return EvalReport(
            accuracy={q: right[q] / total[q] for q in QTYPES if total[q]},
            counts={q: total[q] for q in QTYPES if total[q]},
            caption_exact=right["caption"] / max(1, total["caption"]),
            n_scenes=n,
            seed=seed,
            caption_style=caption_style,
            errors=tuple(self.errors),
        )


def _checkpoint_path(model: str | os.PathLike[str]) -> Path:
    """A checkpoint folder, or a shipped checkpoint's by name; a missing folder is refused as such."""
    path = Path(model)
    if not path.exists() and str(model) in CHECKPOINTS:
        return checkpoint_dir(str(model))
    if not path.is_dir():
        raise FileNotFoundError(
            f"No checkpoint folder at {model} (give a folder, or one of {', '.join(CHECKPOINTS)})"
        )
    return path


def _resolve(
    model: str | os.PathLike[str] | PreTrainedModel, processor: Any
) -> tuple[PreTrainedModel, Any, Path | None]:
    if isinstance(model, (str, os.PathLike)):
        path = _checkpoint_path(model)
        loaded = AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=False
        ).eval()
        return loaded, processor or AutoProcessor.from_pretrained(path, trust_remote_code=False), path
    if processor is None:
        raise ValueError("Pass `processor=` when `model` is a model object rather than a checkpoint path.")
    return model, processor, None


@torch.no_grad()
def _generate(model, processor, images, questions, max_new_tokens: int) -> list[str]:
    batch = encode(processor, images, questions)
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=processor.tokenizer.eos_token_id,
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def evaluate(
    model: str | os.PathLike[str] | PreTrainedModel,
    seed: int = 123,
    n: int = 1000,
    *,
    processor: LlavaProcessor | None = None,
    caption_style: str | None = None,
    questions_per_type: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> EvalReport:
    """Greedy-generate answers and captions for ``n`` scenes of ``World(seed)`` and score exact matches.

    Args:
        model: a checkpoint directory, a shipped checkpoint name, or a loaded Llava model (then pass
            ``processor``).
        seed: world seed (use one not used in training, i.e. < 10,000).
        n: number of scenes.
        caption_style: ``"plain"`` or ``"colored"``; by default read from the checkpoint's ``toy_meta.json``.
        questions_per_type: ask at most this many questions of each type per scene (default: all of them).
        batch_size: prompts per ``generate`` call.

    Examples:
        >>> report = evaluate("toy-llava", seed=123, n=200)  # doctest: +SKIP
        >>> report.accuracy["color"] >= 0.97  # doctest: +SKIP
        True
    """
    model, processor, path = _resolve(model, processor)
    if caption_style is None:
        meta = path / "toy_meta.json" if path is not None else None
        if meta is None or not meta.is_file():
            raise ValueError("Cannot infer the caption style; pass caption_style='plain' or 'colored'.")
        caption_style = json.loads(meta.read_text())["caption_style"]
    if caption_style not in CAPTION_STYLES:
        raise ValueError(f"caption_style must be one of {CAPTION_STYLES}, got {caption_style!r}.")
    was_training = model.training
    model.eval()
    scenes = World(seed=seed).sample(n)
    items: list[tuple[int, str, str, str]] = []  # (scene, qtype, question, expected)
    for i, s in enumerate(scenes):
        for q in QTYPES:
            qas = s.questions_of(q)
            for qa in qas if questions_per_type is None else qas[:questions_per_type]:
                items.append((i, q, qa.question, qa.answer))
    captions = [
        (i, "caption", CAPTION_PROMPT, target_caption(s, caption_style)) for i, s in enumerate(scenes)
    ]
    tally = _Tally()
    n_batches = -(-len(items) // batch_size) + -(-len(captions) // batch_size)
    bar = tqdm(total=n_batches, desc="toy eval", disable=not progress)
    try:
        for group, max_new in ((items, 2), (captions, 16)):
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                images = [scenes[i].image for i, *_ in chunk]
                got = _generate(model, processor, images, [q for _, _, q, _ in chunk], max_new)
                for (_, qtype, question, expected), answer in zip(chunk, got):
                    tally.add(qtype, question, expected, answer)
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return tally.report(n, seed, caption_style)


@torch.no_grad()
def evaluate_text(
    model: str | os.PathLike[str] | PreTrainedModel,
    seed: int = 123,
    n: int = 1000,
    *,
    tokenizer=None,
    batch_size: int = 256,
    progress: bool = True,
) -> EvalReport:
    """Textual QA: greedy answers of a text-only LM (``toy-lm``) to every question of ``n`` scenes of
    ``World(seed)`` given in words (:func:`hooked_mllm.toy.data.text_prompt`), scored like :func:`evaluate`.

    The "caption" row scores the copy task (``describe the image .`` answered by the scene text itself).

    Examples:
        >>> report = evaluate_text("toy-lm", seed=123, n=200)  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model, (str, os.PathLike)):
        path = _checkpoint_path(model)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer is None:
        raise ValueError("Pass `tokenizer=` when `model` is a model object rather than a checkpoint path.")
    was_training = model.training
    model.eval()
    scenes = World(seed=seed).sample(n)
    items = [
        (i, q, qa.question, qa.answer)
        for i, s in enumerate(scenes)
        for q in QTYPES
        for qa in s.questions_of(q)
    ]
    items += [(i, "caption", CAPTION_PROMPT, target_caption(s, "scene")) for i, s in enumerate(scenes)]
    tally = _Tally()
    try:
        for start in tqdm(range(0, len(items), batch_size), desc="toy text eval", disable=not progress):
            chunk = items[start : start + batch_size]
            batch = encode_text(tokenizer, [scenes[i] for i, *_ in chunk], [q for _, _, q, _ in chunk])
            max_new = 24 if any(t == "caption" for _, t, _, _ in chunk) else 2
            out = model.generate(  # type: ignore[operator]  # nn.Module attribute: GenerationMixin.generate
                **batch,
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            got = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for (_, qtype, question, expected), answer in zip(chunk, got):
                tally.add(qtype, question, expected, answer.strip())
    finally:
        model.train(was_training)
    return tally.report(n, seed, "scene")
