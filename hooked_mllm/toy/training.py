"""Train the toy LLaVA checkpoints from scratch on the toy world (CPU, minutes).

Purpose:
    Reproduce the shipped checkpoints: ``toy-llava`` (trained from scratch; captions name shapes only) and
    ``toy-llava-ft`` (toy-llava fine-tuned so its captions also name colours). Teacher forcing on
    question/answer pairs and captions of fresh scenes, loss on answer tokens only, AdamW with warm-up and
    cosine decay; deterministic per seed on a given machine and thread count.

Connections:
    Scenes from :class:`hooked_mllm.toy.world.World`, batches from :func:`hooked_mllm.toy.data.encode`,
    models from :func:`hooked_mllm.toy.model.build_model`, checkpoints written atomically with
    :func:`hooked_mllm.toy.model.save_checkpoint`; the CLI (:mod:`hooked_mllm.toy.cli`) calls :func:`train`.

Contents:
    :class:`Recipe`, :data:`RECIPES`, :class:`TrainResult`, :func:`task_mix`, :func:`train`,
    :func:`train_steps`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from hooked_mllm.toy.data import CAPTION_STYLES, encode_dialogues, sample_dialogue
from hooked_mllm.toy.model import build_model, checkpoint_dir, save_checkpoint
from hooked_mllm.toy.processor import build_processor
from hooked_mllm.toy.world import QTYPES, World

__all__ = ["RECIPES", "META_FILE", "Recipe", "TrainResult", "task_mix", "train", "train_steps"]

logger = logging.getLogger(__name__)

META_FILE = "toy_meta.json"
"""Written next to the weights: the recipe, the caption style and the training time."""

_WORLD_SEED_OFFSET = 10_000  # training worlds use seed + offset (+1 for fine-tuning); keep eval seeds small


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Hyper-parameters of one training run.

    Attributes:
        caption_style: caption targets, ``"plain"`` or ``"colored"``
            (see :data:`hooked_mllm.toy.data.CAPTION_STYLES`).
        init: ``None`` to train from scratch, else the name of a shipped checkpoint to fine-tune.
        steps, batch_size, lr, warmup, min_lr_ratio, weight_decay, grad_clip: optimisation.
        p_caption: probability that an example is a caption rather than a question.
        single_object_steps: optional warm-up: the first steps use one-object scenes and no captions
            (not used by the shipped recipes: the binding ``stages`` below work better).
        freeze_patch_embedding: keep the vision patch embedding at its random init (it already separates
            colours and local shape; training it drowned colour out in an earlier run).
        qtype_weights: relative frequency of each question type (order of
            :data:`hooked_mllm.toy.world.QTYPES`: color, shape, count, position, exist); ``None`` for uniform.
            The binding questions (all but count) need many more examples than counting.
        turns: questions (or captions) per training example, asked as a multi-turn conversation about the
            one image with the loss on every answer: more supervision per image-token forward pass.
        stages: a binding curriculum run before the main mixture (after the one-object warm-up), as
            ``(steps, qtype_weights)`` pairs without captions, e.g. colour questions only, then colour and
            shape. Their steps count within ``steps``; the learning-rate schedule spans the whole run.
    """

    caption_style: str = "plain"
    init: str | None = None
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1.5e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    p_caption: float = 0.25
    single_object_steps: int = 0
    freeze_patch_embedding: bool = False
    qtype_weights: tuple[float, ...] | None = None
    turns: int = 1
    stages: tuple[tuple[int, tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.turns < 1:
            raise ValueError(f"turns must be at least 1 (questions per example), got {self.turns}.")
        for weights in [self.qtype_weights] + [w for _, w in self.stages]:
            if weights is not None and len(weights) != len(QTYPES):
                raise ValueError(f"question-type weights need one weight per type {QTYPES}, got {weights!r}.")
        if any(n < 0 for n, _ in self.stages):
            raise ValueError(f"stage lengths must be >= 0 steps, got {[n for n, _ in self.stages]}.")


RECIPES: dict[str, Recipe] = {
    "toy-llava": Recipe(
        steps=5000,
        lr=1e-3,
        p_caption=0.08,
        freeze_patch_embedding=True,
        qtype_weights=(1, 1, 0.15, 1, 1.2),
        stages=((800, (1, 0, 0, 0, 0)), (800, (1, 1, 0, 0, 0)), (800, (1, 1, 0, 1, 0))),
    ),
    "toy-llava-ft": Recipe(
        caption_style="colored",
        init="toy-llava",
        steps=500,
        lr=3e-4,
        warmup=30,
        p_caption=0.4,
        freeze_patch_embedding=True,
        qtype_weights=(1, 1, 0.15, 1, 1.2),
    ),
}


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: the checkpoint path (or None), final loss average and seconds taken."""

    out: Path | None
    final_loss: float
    seconds: float
    losses: tuple[float, ...]


def _lr_factor(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def task_mix(recipe: Recipe, step: int) -> tuple[bool, tuple[float, ...] | None, float]:
    """What step ``step`` of ``recipe`` trains on: ``(one_object_scenes, qtype_weights, p_caption)``.

    The one-object warm-up comes first, then each curriculum stage (questions only), then the main mixture.

    Examples:
        >>> task_mix(Recipe(stages=((10, (1, 0, 0, 0, 0)),), p_caption=0.1), 3)
        (False, (1, 0, 0, 0, 0), 0.0)
    """
    if step < recipe.single_object_steps:
        return True, recipe.qtype_weights, 0.0
    end = recipe.single_object_steps
    for n, weights in recipe.stages:
        end += n
        if step < end:
            return False, tuple(weights), 0.0
    return False, recipe.qtype_weights, recipe.p_caption


def train_steps(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    recipe: Recipe,
    *,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Run ``recipe.steps`` optimisation steps on ``model`` in place; returns the loss of every step."""
    if recipe.caption_style not in CAPTION_STYLES:
        raise ValueError(f"caption_style must be one of {CAPTION_STYLES}, got {recipe.caption_style!r}.")
    torch.manual_seed(seed)
    world = World(seed=_WORLD_SEED_OFFSET + seed + (1 if recipe.init else 0))
    single = World(seed=_WORLD_SEED_OFFSET + seed + 2, max_objects=1)
    model.model.vision_tower.get_input_embeddings().weight.requires_grad_(not recipe.freeze_patch_embedding)
    rng = random.Random(seed)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt, sched = make_optimizer(params, recipe)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(recipe.steps), desc="toy train", disable=not progress, mininterval=2.0)
    for step in bar:
        early, weights, p_caption = task_mix(recipe, step)
        scenes = (single if early else world).sample(recipe.batch_size)
        style = recipe.caption_style
        dialogues = [
            sample_dialogue(
                s, rng, recipe.turns, caption_style=style, p_caption=p_caption, qtype_weights=weights
            )
            for s in scenes
        ]
        batch = encode_dialogues(processor, [s.image for s in scenes], dialogues)
        loss = model(**batch).loss
        optimizer_step(loss, list(model.parameters()), recipe.grad_clip, opt, sched)
        losses.append(loss.detach().item())
        if step % 50 == 0 or step == recipe.steps - 1:
            recent = losses[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            logger.debug("step %d loss %.4f", step, losses[-1])
    model.model.vision_tower.get_input_embeddings().weight.requires_grad_(True)
    model.eval()
    return losses


def make_optimizer(params: list[tuple[str, torch.nn.Parameter]], recipe: Recipe) -> tuple[Any, Any]:
    """AdamW (betas 0.9/0.98; weight decay on matrices that are not embeddings) and the warm-up + cosine
    schedule.

    Args:
        params: ``(name, parameter)`` pairs to train.
        recipe: Gives ``lr``, ``weight_decay`` and the schedule (:func:`_lr_factor`).
    """
    decay = [p for n, p in params if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))


def optimizer_step(
    loss: torch.Tensor, params: list[torch.nn.Parameter], grad_clip: float, opt: Any, sched: Any
) -> None:
    """Backward, clip the gradient norm of ``params`` to ``grad_clip``, step the optimizer and schedule,
    reset.
    """
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def train(
    name: str = "toy-llava",
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    *,
    steps: int | None = None,
    init_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    save: bool = True,
    **overrides,
) -> TrainResult:
    """Train checkpoint ``name`` (a key of :data:`RECIPES`) and save it atomically to ``out``.

    Args:
        name: ``"toy-llava"`` (from scratch) or ``"toy-llava-ft"`` (fine-tunes toy-llava).
        seed: seeds the initialisation, the training world and the task sampling.
        out: destination directory; defaults to the shipped location ``hooked_mllm/toy/checkpoints/<name>``.
        steps: overrides the recipe's number of steps (e.g. tiny runs in tests).
        init_dir: for fine-tuning recipes, the checkpoint to start from (default: shipped ``recipe.init``).
        progress: show a tqdm progress bar.
        save: write the checkpoint (False for dry runs).
        overrides: other :class:`Recipe` fields to override (``lr=...``, ``batch_size=...``).

    Examples:
        >>> result = train("toy-llava", out="/tmp/toy-llava", steps=5, progress=False)  # doctest: +SKIP
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown toy recipe {name!r}; expected one of {list(RECIPES)}.")
    recipe = RECIPES[name]
    if steps is not None:
        overrides["steps"] = steps
    recipe = replace(recipe, **overrides)
    start = time.perf_counter()
    if recipe.init is None:
        model = build_model(seed)
        processor = build_processor()
    else:
        src = Path(init_dir) if init_dir is not None else checkpoint_dir(recipe.init)
        model = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(src, trust_remote_code=False)
    logger.info("training %s (seed %d): %s", name, seed, recipe)
    losses = train_steps(model, processor, recipe, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    dest = None
    if save:
        dest = Path(out) if out is not None else Path(__file__).resolve().parent / "checkpoints" / name
        meta = {
            "name": name,
            "seed": seed,
            "recipe": asdict(recipe),
            "caption_style": recipe.caption_style,
            "train_seconds": round(seconds, 1),
            "torch_threads": torch.get_num_threads(),
            "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
        }
        model.generation_config.max_new_tokens = 16
        dest = save_checkpoint(model, processor, dest, extra_files={META_FILE: json.dumps(meta, indent=2)})
        logger.info("saved %s to %s (%.0f s)", name, dest, seconds)
    return TrainResult(dest, sum(losses[-50:]) / max(1, len(losses[-50:])), seconds, tuple(losses))
