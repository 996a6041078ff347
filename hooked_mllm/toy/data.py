"""Turn toy-world scenes into model inputs: prompts, teacher-forcing labels, task mixtures.

Purpose:
    Shared by training (:mod:`hooked_mllm.toy.training`) and evaluation
    (:mod:`hooked_mllm.toy.evaluation`) so both
    see exactly the same prompt format.

Contents:
    :data:`CAPTION_STYLES`, :func:`target_caption`, :func:`encode`, :func:`sample_example`.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, cast

import torch

from hooked_mllm.toy.processor import CAPTION_PROMPT, prompt_text
from hooked_mllm.toy.world import QTYPES, Scene, World  # noqa: F401  (World: doctest examples)

if TYPE_CHECKING:
    from PIL import Image
    from transformers import BatchFeature, LlavaProcessor

__all__ = [
    "CAPTION_STYLES",
    "answer_labels",
    "encode",
    "encode_dialogues",
    "encode_text",
    "sample_dialogue",
    "sample_example",
    "scene_text",
    "target_caption",
    "text_prompt",
]

CAPTION_STYLES: tuple[str, ...] = ("plain", "colored", "scene")
"""``plain``: shapes only ("a circle and a square", toy-llava); ``colored``: "a red circle and a blue square"
(toy-llava-ft); ``scene``: the full textual scene with positions (:func:`scene_text`, the alignment target of
the LLaVA recipe)."""


def scene_text(scene: Scene) -> str:
    """The scene in words, objects in reading order with their positions, ending in ``.``.

    Examples:
        >>> scene_text(World(seed=1).sample(1)[0])  # doctest: +SKIP
        'a red circle top-left and a blue square right .'
    """
    parts = [f"a {o.color} {o.shape} {o.position}" for o in scene.objects]
    body = parts[0] if len(parts) == 1 else " , ".join(parts[:-1]) + " and " + parts[-1]
    return body + " ."


def text_prompt(scene: Scene, question: str) -> str:
    """The textual-QA prompt of ``toy-lm``: the image's place holds the scene in words (no ``<s>``).

    Examples:
        >>> text_prompt(World(seed=1).sample(1)[0], "how many objects ?")  # doctest: +SKIP
        'USER: a red circle top-left and a blue square right . how many objects ? ASSISTANT:'
    """
    return f"USER: {scene_text(scene)} {question} ASSISTANT:"


def encode_text(
    tokenizer,
    scenes: list[Scene],
    dialogues: list[list[tuple[str, str]]] | list[str],
    *,
    loss: str = "all",
) -> dict[str, torch.Tensor]:
    """Left-padded batch of textual-QA conversations for a text-only LM (``toy-lm``).

    ``dialogues[i]`` is a list of (question, answer) turns about ``scenes[i]`` rendered as
    ``<s> USER: {scene text} {q1} ASSISTANT: {a1} </s> USER: {q2} ASSISTANT: {a2} </s>``, or a plain question
    string (then the row ends in ``ASSISTANT:``, ready for generation, and no labels are made).
    ``loss="all"`` puts labels on every real token but ``<s>`` (language modelling, the text LM's
    pretraining); ``loss="answer"`` only on the answers and their ``</s>``. Returns ``input_ids``,
    ``attention_mask`` (``(batch, pos)`` int64) and, with answers, ``labels``.
    """
    if len(scenes) != len(dialogues):
        raise ValueError(
            f"need one dialogue per scene, got {len(scenes)} scenes and {len(dialogues)} dialogues."
        )
    if loss not in ("all", "answer"):
        raise ValueError(f"loss must be 'all' or 'answer', got {loss!r}.")
    generate = all(isinstance(d, str) for d in dialogues)
    if generate:
        texts = [text_prompt(s, cast(str, q)) for s, q in zip(scenes, dialogues)]
    else:
        texts = [
            " ".join(
                (text_prompt(s, q) if t == 0 else f"USER: {q} ASSISTANT:") + f" {a} </s>"
                for t, (q, a) in enumerate(d)
            )
            for s, d in zip(scenes, dialogues)
        ]
    prev_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = prev_side
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if generate:
        return batch
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if loss == "all":
        batch["labels"] = torch.where((mask == 1) & (ids != tokenizer.bos_token_id), ids, -100)
    else:
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        none = torch.full_like(ids, -1)
        last_assistant = torch.where(ids == tokenizer.convert_tokens_to_ids("ASSISTANT:"), pos, none)
        last_user = torch.where(ids == tokenizer.convert_tokens_to_ids("USER:"), pos, none)
        last_assistant, last_user = last_assistant.cummax(dim=1).values, last_user.cummax(dim=1).values
        answer = (last_assistant > last_user) & (last_assistant < pos) & (mask == 1)
        batch["labels"] = torch.where(answer, ids, -100)
    return batch


def target_caption(scene: Scene, style: str) -> str:
    """The caption a model of caption style ``style`` should produce for ``scene``."""
    if style == "plain":
        return scene.caption
    if style == "colored":
        return scene.caption_colored
    if style == "scene":
        return scene_text(scene)
    raise ValueError(f"Unknown caption style {style!r}; expected one of {CAPTION_STYLES}.")


def encode(
    processor: LlavaProcessor,
    images: list[Image.Image],
    questions: list[str],
    answers: list[str] | None = None,
) -> BatchFeature:
    """Batch of chat-formatted prompts (left-padded), with ``labels`` when ``answers`` are given.

    Without answers the prompts end in ``ASSISTANT:``, ready for generation. With answers each row is
    ``<s> USER: <image>x36 {question} ASSISTANT: {answer} </s>`` and ``labels`` (``(batch, pos)``, int64) is
    ``-100`` everywhere except on the answer words and ``</s>`` (loss only on answer tokens).
    """
    if len(images) != len(questions) or (answers is not None and len(answers) != len(questions)):
        raise ValueError(
            f"images, questions and answers must have the same length, got {len(images)}, "
            f"{len(questions)} and {None if answers is None else len(answers)}."
        )
    if answers is not None:
        return encode_dialogues(processor, images, [[(q, a)] for q, a in zip(questions, answers)])
    return _left_padded(processor, images, [prompt_text(q) for q in questions])


def _left_padded(processor: LlavaProcessor, images: list[Image.Image], texts: list[str]) -> BatchFeature:
    tok = processor.tokenizer
    prev_side = tok.padding_side
    tok.padding_side = "left"
    try:
        return processor(images=images, text=texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = prev_side


def encode_dialogues(
    processor: LlavaProcessor,
    images: list[Image.Image],
    dialogues: list[list[tuple[str, str]]],
) -> BatchFeature:
    """Batch of multi-turn conversations about one image each (left-padded), with ``labels``.

    Row ``i`` is ``<s> USER: <image>x36 {q1} ASSISTANT: {a1} </s> USER: {q2} ASSISTANT: {a2} </s> ...``
    (the chat template's rendering of alternating turns, the image in the first user turn). ``labels``
    (``(batch, pos)``, int64) is ``-100`` everywhere except on every answer's words and its ``</s>``.
    :func:`encode` with answers is the one-turn case.

    Examples:
        >>> batch = encode_dialogues(proc, [img], [[("how many objects ?", "two"), ("describe the image .",
        ...     "a circle and a square")]])  # doctest: +SKIP
    """
    if len(images) != len(dialogues) or any(not d for d in dialogues):
        raise ValueError(
            f"need one non-empty dialogue per image, got {len(images)} images and dialogue lengths "
            f"{[len(d) for d in dialogues]}."
        )
    texts = [
        " ".join(
            (prompt_text(q) if t == 0 else f"USER: {q} ASSISTANT:") + f" {a} </s>"
            for t, (q, a) in enumerate(d)
        )
        for d in dialogues
    ]
    batch = _left_padded(processor, images, texts)
    batch["labels"] = answer_labels(processor.tokenizer, batch["input_ids"], batch["attention_mask"])
    return batch


def answer_labels(tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Teacher-forcing labels of chat-formatted rows: ``input_ids`` on every answer's words and its ``</s>``
    (the tokens after an ``ASSISTANT:`` and before the next ``USER:``), ``-100`` elsewhere.

    ``input_ids`` and ``attention_mask`` are ``(batch, pos)``; returns ``(batch, pos)`` int64.

    Examples:
        >>> tok = build_tokenizer()  # doctest: +SKIP
        >>> enc = tok(["USER: how many objects ? ASSISTANT: two </s>"], return_tensors="pt")  # doctest: +SKIP
        >>> answer_labels(tok, enc["input_ids"], enc["attention_mask"])  # doctest: +SKIP
    """
    ids = input_ids
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    none = torch.full_like(ids, -1)
    last_assistant = (
        torch.where(ids == tokenizer.convert_tokens_to_ids("ASSISTANT:"), pos, none).cummax(dim=1).values
    )
    last_user = torch.where(ids == tokenizer.convert_tokens_to_ids("USER:"), pos, none).cummax(dim=1).values
    # Inside an answer: the latest marker is ASSISTANT: and this token is not the marker itself.
    answer = (last_assistant > last_user) & (last_assistant < pos) & (attention_mask == 1)
    return torch.where(answer, ids, -100)


def sample_dialogue(
    scene: Scene,
    rng: random.Random,
    turns: int,
    *,
    caption_style: str,
    p_caption: float,
    qtype_weights: tuple[float, ...] | None = None,
) -> list[tuple[str, str]]:
    """``turns`` distinct (question, answer) pairs about ``scene``, each drawn like :func:`sample_example`
    (fewer if the scene runs out of distinct questions)."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for _ in range(4 * turns):
        q, a = sample_example(
            scene, rng, caption_style=caption_style, p_caption=p_caption, qtype_weights=qtype_weights
        )
        if q not in seen:
            seen.add(q)
            out.append((q, a))
            if len(out) == turns:
                break
    return out


def sample_example(
    scene: Scene,
    rng: random.Random,
    *,
    caption_style: str,
    p_caption: float,
    qtype_weights: tuple[float, ...] | None = None,
) -> tuple[str, str]:
    """One (question, answer) training pair from ``scene``: a caption with probability ``p_caption``, else a
    question of a type drawn among those the scene has, uniformly or with ``qtype_weights`` (one weight per
    entry of :data:`~hooked_mllm.toy.world.QTYPES`)."""
    if rng.random() < p_caption:
        return CAPTION_PROMPT, target_caption(scene, caption_style)
    qtypes = [t for t in QTYPES if scene.questions_of(t)]
    if qtype_weights is None:
        qtype = rng.choice(qtypes)
    else:
        if len(qtype_weights) != len(QTYPES):
            raise ValueError(f"qtype_weights needs one weight per type {QTYPES}, got {qtype_weights!r}.")
        weights = [qtype_weights[QTYPES.index(t)] for t in qtypes]
        qtype = rng.choices(qtypes, weights)[0] if sum(weights) > 0 else rng.choice(qtypes)
    qa = rng.choice(scene.questions_of(qtype))
    return qa.question, qa.answer
