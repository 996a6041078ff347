"""The toy video model ``toy-video``: a LLaVA-OneVision built from ``toy-llava-deep``, trained on video QA.

Purpose:
    A real ``LlavaOnevisionForConditionalGeneration`` small enough to train on a CPU, whose ground truth is
    known exactly (:mod:`hooked_mllm.toy.video`), so video tools (per-frame maps, patching over frames) can
    be scored against it.

Model:
    ``toy-llava-deep``'s CLIP vision tower (48 px, patch 8: a 6 x 6 patch map per frame), its projector and
    its 6-layer Llama LM (tied embeddings), inside ``LlavaOnevisionForConditionalGeneration``: each frame's
    projected map is pooled 2x (bilinear, which for a factor of exactly 2 averages each 2 x 2 block: one
    token per world cell), the frames follow one another and one ``image_newline`` vector ends the video,
    ``3 * 9 + 1 = 28`` ``<video>`` tokens for a 3-frame clip. The vocabulary is the toy one plus
    :data:`VIDEO_WORDS` (``<video>``, ``first``, ``last``, ``which``, ``moved``), appended so every old word
    keeps its id; the new embedding rows start at the mean of the old ones.

Processor:
    :func:`hooked_mllm.toy.video_processor.build_video_processor` (no torchvision). Prompt::

        <s> USER: <video> where is the red circle last ? ASSISTANT: bottom </s>

Contents:
    :data:`VIDEO_RECIPE`, :class:`VideoRecipe`, :func:`build_video_model`, :func:`encode_clips`,
    :func:`sample_video_qa`, :func:`train_video`. Loading is :func:`hooked_mllm.toy.model.load_video`
    (``toy.load("toy-video")``).

Examples:
    >>> from hooked_mllm import toy
    >>> model = toy.load("toy-video")                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hooked_mllm.toy.data import answer_labels
from hooked_mllm.toy.video import VIDEO_QTYPES, Clip, VideoWorld
from hooked_mllm.toy.video_processor import (
    VIDEO_CHAT_TEMPLATE,
    VIDEO_TOKEN,
    VIDEO_VOCAB,
    VIDEO_WORDS,
    build_video_processor,
    video_prompt,
)
from hooked_mllm.toy.world import IMAGE_SIZE

__all__ = [
    "VIDEO_RECIPE",
    "VideoRecipe",
    "build_video_model",
    "encode_clips",
    "sample_video_qa",
    "train_video",
]

logger = logging.getLogger(__name__)

_WORLD_SEED = 20_000  # training clips come from VideoWorld(20000 + seed); evaluate on seeds below 10,000


@dataclass(frozen=True, kw_only=True)
class VideoRecipe:
    """How ``toy-video`` is trained from ``toy-llava-deep``.

    Attributes:
        steps, batch_size, lr, warmup, min_lr_ratio, weight_decay, grad_clip: optimisation, with the
            schedule and AdamW settings of :func:`hooked_mllm.toy.training.make_optimizer`.
        qtype_weights: relative frequency of :data:`~hooked_mllm.toy.video.VIDEO_QTYPES` (first, last, moved).
        p_mover: probability that a ``first`` / ``last`` question asks about the moving object (the one whose
            answer only one frame shows) rather than a still one.
        turns: questions per clip, asked as one conversation (loss on every answer).
        train_vision: let the vision tower learn too (off: it stays ``toy-llava-deep``'s).
    """

    steps: int = 1800
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    qtype_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    p_mover: float = 0.6
    turns: int = 2
    train_vision: bool = False

    def __post_init__(self) -> None:
        if len(self.qtype_weights) != len(VIDEO_QTYPES) or sum(self.qtype_weights) <= 0:
            raise ValueError(
                f"qtype_weights needs one weight >= 0 per type {VIDEO_QTYPES}, got {self.qtype_weights}."
            )
        if self.turns < 1 or self.steps < 1:
            raise ValueError(f"steps and turns must be at least 1, got {self.steps} and {self.turns}.")


VIDEO_RECIPE = VideoRecipe()
"""The recipe of the shipped ``toy-video``."""


def build_video_model(deep: str | os.PathLike[str] | None = None):
    """``LlavaOnevisionForConditionalGeneration`` with ``toy-llava-deep``'s tower, projector and LM.

    Args:
        deep: the ``toy-llava-deep`` checkpoint folder (default: the shipped one).

    The LM's vocabulary grows to :data:`VIDEO_VOCAB` (old rows copied, new rows the mean of the old);
    ``image_newline`` starts at zero. Before training, a clip's frame ``t`` tokens are exactly the mean of
    the deep model's projected patch tokens of each cell (checked in the tests).

    Examples:
        >>> model = build_video_model()                 # doctest: +SKIP
        >>> model.config.video_token_id
        48
    """
    from transformers import (
        LlavaForConditionalGeneration,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        PreTrainedConfig,
    )

    from hooked_mllm.toy.model import checkpoint_dir

    donor = LlavaForConditionalGeneration.from_pretrained(
        deep or checkpoint_dir("toy-llava-deep"), dtype=torch.float32
    )
    dc = donor.config
    text_config, vision_config = dc.text_config, dc.vision_config
    assert isinstance(text_config, PreTrainedConfig) and isinstance(vision_config, PreTrainedConfig)
    config = LlavaOnevisionConfig(  # type: ignore[call-arg]  # HF configs take token ids as extra keywords
        vision_config=vision_config.to_dict(),
        text_config={**text_config.to_dict(), "vocab_size": len(VIDEO_VOCAB)},
        image_token_index=VIDEO_VOCAB.index("<image>"),
        video_token_index=VIDEO_VOCAB.index(VIDEO_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
        projector_hidden_act=dc.projector_hidden_act,
        tie_word_embeddings=True,
        pad_token_id=dc.pad_token_id,
        bos_token_id=dc.bos_token_id,
        eos_token_id=dc.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(donor.model.vision_tower.state_dict())
    model.model.multi_modal_projector.load_state_dict(donor.model.multi_modal_projector.state_dict())
    lm_state = donor.model.language_model.state_dict()
    old = lm_state["embed_tokens.weight"]
    lm_state["embed_tokens.weight"] = torch.cat([old, old.mean(0, keepdim=True).expand(len(VIDEO_WORDS), -1)])
    model.model.language_model.load_state_dict(lm_state)
    with torch.no_grad():
        model.model.image_newline.zero_()
    model.tie_weights()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = dc.pad_token_id, dc.bos_token_id, dc.eos_token_id
    gen.do_sample, gen.max_new_tokens = False, 4
    return model.eval()


def encode_clips(
    processor, clips: Sequence[Clip], dialogues: Sequence[Sequence[tuple[str, str]]] | Sequence[str]
) -> Any:
    """Left-padded batch of clips with their questions.

    ``dialogues[i]`` is either a question (the row ends in ``ASSISTANT:``, ready for generation) or a list
    of ``(question, answer)`` turns about ``clips[i]`` (then ``labels`` mark every answer and its ``</s>``).
    Returns the processor's ``BatchFeature``: ``input_ids``, ``attention_mask`` ``(batch, pos)``,
    ``pixel_values_videos`` ``(batch, frames, 3, 48, 48)`` and, with answers, ``labels``.
    """
    if len(clips) != len(dialogues):
        raise ValueError(
            f"need one dialogue per clip, got {len(clips)} clips and {len(dialogues)} dialogues."
        )
    generate = all(isinstance(d, str) for d in dialogues)
    if generate:
        texts = [video_prompt(str(q)) for q in dialogues]
    else:
        texts = [
            " ".join(
                (video_prompt(q) if t == 0 else f"USER: {q} ASSISTANT:") + f" {a} </s>"
                for t, (q, a) in enumerate(d)
            )
            for d in dialogues
        ]
    tok = processor.tokenizer
    prev, tok.padding_side = tok.padding_side, "left"
    try:
        batch = processor(
            videos=[list(c.frames) for c in clips], text=texts, return_tensors="pt", padding=True
        )
    finally:
        tok.padding_side = prev
    if not generate:
        batch["labels"] = answer_labels(tok, batch["input_ids"], batch["attention_mask"])
    return batch


def sample_video_qa(
    clip: Clip, rng: random.Random, recipe: VideoRecipe = VIDEO_RECIPE
) -> list[tuple[str, str]]:
    """``recipe.turns`` distinct ``(question, answer)`` pairs about ``clip``, types drawn with
    ``recipe.qtype_weights``, ``first`` / ``last`` about the mover with probability ``recipe.p_mover``."""
    out: list[tuple[str, str]] = []
    for _ in range(8 * recipe.turns):
        qtype = rng.choices(VIDEO_QTYPES, recipe.qtype_weights)[0]
        qas = clip.questions_of(qtype)
        if qtype != "moved" and len(qas) > 1:
            mover = [qa for qa in qas if qa.track == clip.mover]
            still = [qa for qa in qas if qa.track != clip.mover]
            qas = mover if rng.random() < recipe.p_mover else still
        qa = rng.choice(qas)
        if all(q != qa.question for q, _ in out):
            out.append((qa.question, qa.answer))
        if len(out) == recipe.turns:
            break
    return out


def train_video(
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    deep: str | os.PathLike[str] | None = None,
    progress: bool = True,
    save: bool = True,
    every: int = 0,
    callback=None,
    **overrides: Any,
):
    """Build ``toy-video`` from ``toy-llava-deep`` and train it on video QA; save it atomically to ``out``.

    Args:
        out: destination folder (default: ``toy-checkpoints/toy-video`` in the current directory).
        seed: seeds the training clips (``VideoWorld(20000 + seed)``) and the question draws.
        deep: the ``toy-llava-deep`` folder to start from (default: the shipped one).
        every: steps between interim points: ``callback(step, model, processor)`` runs (model in eval mode)
            and, with ``save``, the checkpoint so far is written.
        overrides: :class:`VideoRecipe` fields (``steps=...``, ``lr=...``).

    Returns:
        :class:`hooked_mllm.toy.training.TrainResult`.

    Examples:
        >>> train_video("/tmp/toy-video", steps=5, progress=False)  # doctest: +SKIP
    """
    from hooked_mllm.toy.model import save_checkpoint
    from hooked_mllm.toy.training import META_FILE, Recipe, TrainResult, make_optimizer, optimizer_step

    recipe = replace(VIDEO_RECIPE, **overrides)
    start = time.perf_counter()
    model, processor = build_video_model(deep), build_video_processor()
    # the checkpoint keeps the tokenizer (with the chat template); the processor is rebuilt in code on load
    # (its video processor is no transformers class, so a Hub-format processor folder cannot name it)
    tokenizer = processor.tokenizer
    tokenizer.chat_template = VIDEO_CHAT_TEMPLATE
    dest = Path(out) if out is not None else Path("toy-checkpoints") / "toy-video"
    for name, param in model.named_parameters():
        param.requires_grad_(recipe.train_vision or not name.startswith("model.vision_tower."))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    schedule = Recipe(
        steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr, warmup=recipe.warmup,
        min_lr_ratio=recipe.min_lr_ratio, weight_decay=recipe.weight_decay, grad_clip=recipe.grad_clip,
    )  # fmt: skip
    opt, sched = make_optimizer(params, schedule)
    world, rng = VideoWorld(seed=_WORLD_SEED + seed), random.Random(seed)
    torch.manual_seed(seed)
    losses: list[float] = []

    def meta(step: int) -> str:
        recent = losses[-50:]
        return json.dumps({
            "name": "toy-video", "kind": "video", "seed": seed, "recipe": asdict(recipe),
            "init": "toy-llava-deep", "steps_done": step,
            "train_seconds": round(time.perf_counter() - start, 1),
            "torch_threads": torch.get_num_threads(),
            "final_loss": sum(recent) / len(recent) if recent else None,
        }, indent=2)  # fmt: skip

    model.train()
    for step in tqdm(range(recipe.steps), desc="toy video", disable=not progress, mininterval=5.0):
        clips = world.sample(recipe.batch_size)
        batch = encode_clips(processor, clips, [sample_video_qa(c, rng, recipe) for c in clips])
        loss = model(**batch).loss
        optimizer_step(loss, [p for _, p in params], recipe.grad_clip, opt, sched)
        losses.append(loss.detach().item())
        if step % 50 == 0:
            logger.info("step %d loss %.4f", step, sum(losses[-50:]) / len(losses[-50:]))
        if every and (step + 1) % every == 0 and step + 1 < recipe.steps:
            model.eval()
            if save:
                save_checkpoint(model, tokenizer, dest, extra_files={META_FILE: meta(step + 1)})
            if callback is not None:
                callback(step + 1, model, processor)
            model.train()
    model.eval()
    seconds = time.perf_counter() - start
    saved = (
        save_checkpoint(model, tokenizer, dest, extra_files={META_FILE: meta(recipe.steps)}) if save else None
    )
    final = sum(losses[-50:]) / max(1, len(losses[-50:]))
    return TrainResult(saved, final, seconds, tuple(losses))
