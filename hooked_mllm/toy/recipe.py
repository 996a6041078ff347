"""LLaVA's training recipe on the toy world: a text-only LM first, then alignment, then instruction tuning.

Purpose:
    Build toy checkpoints whose image tokens live in the language model's word space, as in LLaVA: the
    projector learns to map into the embeddings of a *pretrained* LM, from a *pretrained* vision encoder.
    Stages, each a :class:`Stage`:

    1. ``toy-lm-base``: a text-only ``LlamaForCausalLM`` (tied embeddings, 2 layers) trained with loss on
       every token on textual scenes followed by questions and answers (textual QA, "TQA").
    2. ``toy-lm-restart``: the same scenes again with the learning rate warmed up again (colour binds here).
    3. ``toy-lm-small``: a short finishing stage on new scenes, colour and position weighted up.
    4. ``toy-lm``: ``toy-lm-small`` grown to 6 layers (:func:`grow_text_lm`, function-preserving), trained on.
    5. ``toy-llava-deep-align``: a ``LlavaForConditionalGeneration`` with toy-llava's vision tower and
       ``toy-lm`` as its LM, both frozen; only the projector learns, to make the LM reproduce the textual
       scene from the image and answer questions about it.
    6. ``toy-llava-deep``: visual instruction tuning (questions and plain captions): projector and LM learn.
    7. ``toy-llava-deep-ft``: the fine-tuned twin that captions with colours (as ``toy-llava-ft``).

Connections:
    Optimisation settings and task mixtures are :class:`hooked_mllm.toy.training.Recipe` records (same
    schedule, same curriculum semantics, via :func:`~hooked_mllm.toy.training.task_mix`); batches come from
    :func:`hooked_mllm.toy.data.encode_text` (text) and :func:`~hooked_mllm.toy.data.encode_dialogues`
    (image).
    The CLI (``hooked-mllm toy train --name toy-lm`` ...) calls :func:`train_stage`.

Contents:
    :data:`PARTS`, :data:`DEEP_SIZES`, :class:`Stage`, :data:`STAGES`, :func:`build_text_lm`,
    :func:`grow_text_lm`, :func:`set_trainable`, :func:`run_stage`, :func:`train_stage`. The VLM around a
    text LM is :func:`hooked_mllm.toy.model.vlm_from_text_lm` (importable from here too).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)

from hooked_mllm.toy.data import encode_dialogues, encode_text, sample_dialogue
from hooked_mllm.toy.model import save_checkpoint, toy_config, vlm_from_text_lm
from hooked_mllm.toy.processor import build_processor
from hooked_mllm.toy.tokenizer import build_tokenizer
from hooked_mllm.toy.training import META_FILE, Recipe, TrainResult, make_optimizer, optimizer_step, task_mix
from hooked_mllm.toy.world import World

__all__ = [
    "DEEP_SIZES",
    "PARTS",
    "STAGES",
    "Stage",
    "build_text_lm",
    "grow_text_lm",
    "set_trainable",
    "run_stage",
    "train_recipe",
    "train_stage",
]

logger = logging.getLogger(__name__)

PARTS: tuple[str, ...] = ("patch_embedding", "vision", "projector", "embeddings", "lm")
"""Trainable groups: the vision patch embedding, the rest of the vision tower, the projector, the LM's
(tied) token embeddings, and the rest of the LM (blocks, final norm, an untied head)."""

DEEP_SIZES: dict[str, int | bool] = {
    "text_layers": 6,
    "text_hidden": 128,
    "text_heads": 4,
    "text_intermediate": 256,
    "tie_embeddings": True,
}
"""LM sizes of the recipe's checkpoints (the vision tower keeps the sizes of
:func:`~hooked_mllm.toy.model.toy_config`)."""

_WORLD_SEED_OFFSET = 10_000  # as in training.py: training worlds are >= 10000, evaluation seeds below


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One stage of the recipe.

    Attributes:
        kind: ``"text"`` (text-only LM, loss on every token), ``"image"`` (a LLaVA, loss on answers).
        recipe: steps, optimiser and task mix (``caption_style``, ``p_caption``, ``qtype_weights``,
            ``stages``, ``turns``); ``recipe.init`` names the stage whose output it starts from.
        trainable: which of :data:`PARTS` learn; the others are frozen (``requires_grad=False``).
        world_offset: added to the seed's training world, so stages see different scenes.
        answer_weight: text stage only: the loss is the mean over every token plus ``answer_weight`` times the
            mean over the answer tokens (their ``</s>`` included), so the few answer tokens are not drowned by
            the scene text, whose words are random.
        layers: text stages only: the LM's depth. From scratch, the depth it is built with (default
            :data:`DEEP_SIZES`); from a shallower text LM, the depth it is grown to first
            (:func:`grow_text_lm`).
        vision_init: for a stage that starts a LLaVA around a text LM: the shipped VLM checkpoint whose vision
            tower it copies (``"toy-llava"``, the toy world's pretrained vision encoder, as LLaVA starts from
            a pretrained CLIP); ``None`` for a freshly initialised tower.
    """

    kind: str
    recipe: Recipe
    trainable: tuple[str, ...] = PARTS
    world_offset: int = 0
    answer_weight: float = 0.0
    layers: int | None = None
    vision_init: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("text", "image"):
            raise ValueError(f"Stage kind must be 'text' or 'image', got {self.kind!r}.")
        unknown = set(self.trainable) - set(PARTS)
        if unknown:
            raise ValueError(f"Unknown trainable parts {sorted(unknown)}; expected a subset of {PARTS}.")


_QW = (1, 1, 0.15, 1, 1.2)
_TQW = (2, 2, 0.15, 1, 1.2)  # textual QA: the binding questions often, counting rarely
_TQW_BIND = (3, 2, 0.15, 2, 1.2)  # finishing the 2-layer LM: colour and position, the last to bind


def _text_stage(
    *,
    init: str | None,
    steps: int,
    lr: float,
    warmup: int,
    world_offset: int,
    layers: int,
    weights: tuple[float, ...] = _TQW,
) -> Stage:
    """A stage of the text LM: textual scenes and questions, loss on every token (answers weighted 2x)."""
    recipe = Recipe(
        caption_style="scene",
        init=init,
        steps=steps,
        batch_size=32,
        lr=lr,
        warmup=warmup,
        p_caption=0.15,
        qtype_weights=weights,
        turns=4,
    )
    return Stage(
        kind="text",
        recipe=recipe,
        trainable=("embeddings", "lm"),
        world_offset=world_offset,
        answer_weight=2.0,
        layers=layers,
    )


STAGES: dict[str, Stage] = {
    "toy-lm-base": _text_stage(init=None, steps=1500, lr=1e-3, warmup=100, world_offset=20, layers=2),
    # the same scenes again (same world offset), the learning rate warmed up again
    "toy-lm-restart": _text_stage(
        init="toy-lm-base", steps=2500, lr=1e-3, warmup=50, world_offset=20, layers=2
    ),
    "toy-lm-small": _text_stage(
        init="toy-lm-restart", steps=1000, lr=5e-4, warmup=50, world_offset=30, layers=2, weights=_TQW_BIND
    ),
    "toy-lm": _text_stage(init="toy-lm-small", steps=800, lr=3e-4, warmup=50, world_offset=24, layers=6),
    "toy-llava-deep-align": Stage(
        kind="image",
        recipe=Recipe(
            caption_style="scene",
            init="toy-lm",
            steps=600,
            batch_size=32,
            lr=1e-3,
            warmup=30,
            p_caption=0.5,
            qtype_weights=_QW,
        ),
        trainable=("projector",),
        world_offset=21,
        vision_init="toy-llava",
    ),
    "toy-llava-deep": Stage(
        kind="image",
        recipe=Recipe(
            caption_style="plain",
            init="toy-llava-deep-align",
            steps=2400,
            batch_size=32,
            lr=5e-4,
            warmup=30,
            p_caption=0.1,
            qtype_weights=_QW,
        ),
        trainable=("projector", "lm"),
        world_offset=22,
    ),
    "toy-llava-deep-ft": Stage(
        kind="image",
        recipe=Recipe(
            caption_style="colored",
            init="toy-llava-deep",
            steps=200,
            batch_size=32,
            lr=3e-4,
            warmup=20,
            p_caption=0.4,
            qtype_weights=_QW,
        ),
        trainable=("projector", "lm"),
        world_offset=23,
    ),
}
"""The recipe's stages by the name of the checkpoint each produces, in order."""


def build_text_lm(seed: int = 0, **sizes) -> LlamaForCausalLM:
    """A freshly initialised text-only LM of the toy family (the LM of
    :func:`~hooked_mllm.toy.model.toy_config` with ``sizes``, by default :data:`DEEP_SIZES`), deterministic
    per ``seed``."""
    torch.manual_seed(seed)
    config = toy_config(**{**DEEP_SIZES, **sizes}).text_config
    assert isinstance(config, LlamaConfig)  # toy_config builds a Llama LM
    model = LlamaForCausalLM(config)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id = config.pad_token_id, config.bos_token_id
    gen.eos_token_id = config.eos_token_id
    gen.do_sample, gen.max_new_tokens = False, 16
    return model.eval()


def grow_text_lm(lm: LlamaForCausalLM, layers: int) -> LlamaForCausalLM:
    """A deeper copy of ``lm`` computing exactly the same function: base layer ``i`` of ``n`` goes to position
    ``i * layers // n``; the new layers are freshly initialised with zero output projections (``o_proj``,
    ``down_proj``), so they add nothing until trained (function-preserving growth, as in progressive
    stacking).

    Examples:
        >>> deep = grow_text_lm(build_text_lm(0, text_layers=2), 6)  # doctest: +SKIP
        >>> deep.config.num_hidden_layers
        6
    """
    n = lm.config.num_hidden_layers
    if layers < n:
        raise ValueError(f"Cannot grow a {n}-layer LM to {layers} layers; give at least {n}.")
    config = lm.config.__class__.from_dict({**lm.config.to_dict(), "num_hidden_layers": layers})
    torch.manual_seed(layers)
    grown = LlamaForCausalLM(config)
    grown.generation_config = lm.generation_config
    grown.model.embed_tokens.load_state_dict(lm.model.embed_tokens.state_dict())
    grown.model.norm.load_state_dict(lm.model.norm.state_dict())
    if not config.tie_word_embeddings:
        grown.lm_head.load_state_dict(lm.lm_head.state_dict())
    placed = {i * layers // n: i for i in range(n)}
    for j, layer in enumerate(grown.model.layers):
        if j in placed:
            layer.load_state_dict(lm.model.layers[placed[j]].state_dict())
        else:
            torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
            torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    return grown.eval()


def _part_of(name: str, is_vlm: bool) -> str:
    if is_vlm and name.startswith("model.vision_tower."):
        return "patch_embedding" if "patch_embedding" in name else "vision"
    if is_vlm and name.startswith("model.multi_modal_projector."):
        return "projector"
    return "embeddings" if "embed_tokens" in name else "lm"


def set_trainable(model: torch.nn.Module, parts: tuple[str, ...]) -> dict[str, list[str]]:
    """Set ``requires_grad`` per :data:`PARTS` group; returns ``{part: [parameter names]}`` of the model."""
    is_vlm = isinstance(model, LlavaForConditionalGeneration)
    groups: dict[str, list[str]] = {p: [] for p in PARTS}
    for name, param in model.named_parameters():
        part = _part_of(name, is_vlm)
        groups[part].append(name)
        param.requires_grad_(part in parts)
    return groups


def _batch(
    stage: Stage, proc, scenes, rng: random.Random, weights, p_caption: float
) -> MutableMapping[str, torch.Tensor]:
    r = stage.recipe
    dialogues = [
        sample_dialogue(
            s, rng, r.turns, caption_style=r.caption_style, p_caption=p_caption, qtype_weights=weights
        )
        for s in scenes
    ]
    if stage.kind == "text":
        return encode_text(proc, scenes, dialogues, loss="all")
    return encode_dialogues(proc, [s.image for s in scenes], dialogues)


def _loss(
    model: torch.nn.Module, stage: Stage, proc, batch: MutableMapping[str, torch.Tensor]
) -> torch.Tensor:
    if stage.kind != "text" or not stage.answer_weight:
        return model(**batch).loss
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1]
    target = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
    )
    ids = batch["input_ids"][:, 1:]
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    none = torch.full_like(ids, -1)
    last_a = torch.where(ids == proc.convert_tokens_to_ids("ASSISTANT:"), pos, none).cummax(dim=1).values
    last_u = torch.where(ids == proc.convert_tokens_to_ids("USER:"), pos, none).cummax(dim=1).values
    in_answer = (last_a > last_u) & (last_a < pos) & (target != -100)
    every = target != -100
    return per_token[every].mean() + stage.answer_weight * per_token[in_answer].mean()


def run_stage(
    model: PreTrainedModel,
    proc,
    stage: Stage,
    *,
    seed: int = 0,
    progress: bool = True,
    every: int = 0,
    callback: Callable[[int, PreTrainedModel], None] | None = None,
) -> list[float]:
    """Train ``model`` in place for ``stage.recipe.steps`` steps with only ``stage.trainable`` parts learning.

    ``proc`` is the tokenizer (text stage) or the ``LlavaProcessor`` (image stages). Every ``every`` steps
    (and at the end) ``callback(step, model)`` runs with the model in eval mode (interim evaluations and
    checkpoints). Returns the loss of every step. Deterministic for a seed, machine and thread count.
    """
    r = stage.recipe
    torch.manual_seed(seed)
    world = World(seed=_WORLD_SEED_OFFSET + seed + stage.world_offset)
    single = World(seed=_WORLD_SEED_OFFSET + seed + stage.world_offset + 100, max_objects=1)
    set_trainable(model, stage.trainable)
    rng = random.Random(seed)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"Stage trains nothing: no parameter of {stage.trainable} in the model.")
    opt, sched = make_optimizer(params, r)
    trainable = [p for _, p in params]
    losses: list[float] = []
    model.train()
    bar = tqdm(range(r.steps), desc=f"toy {stage.kind}", disable=not progress, mininterval=5.0)
    for step in bar:
        early, weights, p_caption = task_mix(r, step)
        scenes = (single if early else world).sample(r.batch_size)
        loss = _loss(model, stage, proc, _batch(stage, proc, scenes, rng, weights, p_caption))
        optimizer_step(loss, trainable, r.grad_clip, opt, sched)
        losses.append(loss.detach().item())
        if step % 50 == 0 or step == r.steps - 1:
            recent = losses[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            logger.info("step %d loss %.4f", step, sum(recent) / len(recent))
        if callback is not None and ((every and (step + 1) % every == 0) or step == r.steps - 1):
            model.eval()
            callback(step + 1, model)
            model.train()
    model.eval()
    set_trainable(model, PARTS)
    return losses


def _load_init(stage: Stage, init_dir: str | os.PathLike[str] | None, seed: int):
    from hooked_mllm.toy.model import CHECKPOINTS, checkpoint_dir

    r = stage.recipe
    if r.init is None:
        sizes = {"text_layers": stage.layers} if stage.layers else {}
        return build_text_lm(seed, **sizes), build_tokenizer()
    if init_dir is None and r.init not in CHECKPOINTS:
        raise ValueError(
            f"Stage starts from {r.init!r}, which is not shipped: pass its directory as init_dir "
            f"(`--init-dir`)."
        )
    src = Path(init_dir) if init_dir is not None else checkpoint_dir(r.init)
    meta = json.loads((src / META_FILE).read_text()) if (src / META_FILE).is_file() else {}
    if meta.get("kind") == "text" and stage.kind == "text":  # a text LM trained on, grown first
        lm = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32)
        if stage.layers and stage.layers > lm.config.num_hidden_layers:
            lm = grow_text_lm(lm, stage.layers)
        return lm, build_tokenizer()
    if meta.get("kind") == "text":  # a text LM: start a LLaVA around it
        lm = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32)
        donor = checkpoint_dir(stage.vision_init) if stage.vision_init else None
        return vlm_from_text_lm(lm, seed, vision_from=donor), build_processor()
    model = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    return model, AutoProcessor.from_pretrained(src, trust_remote_code=False)


def train_stage(
    name: str,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    *,
    init_dir: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    progress: bool = True,
    save: bool = True,
    every: int = 0,
    callback: Callable[[int, PreTrainedModel], None] | None = None,
    **overrides,
) -> TrainResult:
    """Run stage ``name`` of :data:`STAGES` and save its checkpoint atomically to ``out``.

    Args:
        name: ``"toy-lm"``, ``"toy-llava-deep-align"``, ``"toy-llava-deep"`` or ``"toy-llava-deep-ft"``.
        seed: seeds initialisation, training world and task sampling.
        out: destination (default: the shipped location ``hooked_mllm/toy/checkpoints/<name>``).
        init_dir: the checkpoint the stage starts from (default: the shipped ``recipe.init``).
        steps: override the number of steps (tiny runs in tests); ``overrides``: other :class:`Recipe` fields.
        every: steps between interim points (see :func:`run_stage`); with ``save`` the checkpoint is also
            written at every interim point, so an interrupted run leaves its latest state.
        callback: called at every interim point (see :func:`run_stage`).

    Examples:
        >>> train_stage("toy-lm", out="/tmp/toy-lm", steps=5, progress=False)  # doctest: +SKIP
    """
    if name not in STAGES:
        raise ValueError(f"Unknown recipe stage {name!r}; expected one of {list(STAGES)}.")
    stage = STAGES[name]
    if steps is not None:
        overrides["steps"] = steps
    stage = replace(stage, recipe=replace(stage.recipe, **overrides))
    start = time.perf_counter()
    model, proc = _load_init(stage, init_dir, seed)
    logger.info("training %s (seed %d): %s", name, seed, stage)
    dest = Path(out) if out is not None else Path(__file__).resolve().parent / "checkpoints" / name

    def meta(step: int, losses: list[float] | None) -> str:
        recent = (losses or [])[-50:]
        return json.dumps({
            "name": name, "kind": stage.kind, "seed": seed, "recipe": asdict(stage.recipe),
            "trainable": list(stage.trainable), "caption_style": stage.recipe.caption_style,
            "steps_done": step, "train_seconds": round(time.perf_counter() - start, 1),
            "torch_threads": torch.get_num_threads(),
            "final_loss": sum(recent) / len(recent) if recent else None,
        }, indent=2)  # fmt: skip

    def interim(step: int, m: PreTrainedModel) -> None:
        if save and step < stage.recipe.steps:
            save_checkpoint(m, proc, dest, extra_files={META_FILE: meta(step, None)})
        if callback is not None:
            callback(step, m)

    losses = run_stage(model, proc, stage, seed=seed, progress=progress, every=every, callback=interim)
    seconds = time.perf_counter() - start
    saved = None
    if save:
        saved = save_checkpoint(model, proc, dest, extra_files={META_FILE: meta(stage.recipe.steps, losses)})
        logger.info("saved %s to %s (%.0f s)", name, saved, seconds)
    final = sum(losses[-50:]) / max(1, len(losses[-50:]))
    return TrainResult(saved, final, seconds, tuple(losses))


def train_recipe(
    out_root: str | os.PathLike[str],
    seed: int = 0,
    *,
    every: int = 300,
    n_eval: int = 60,
    progress: bool = False,
) -> dict[str, TrainResult]:
    """Run every stage of :data:`STAGES` in order, each starting from the previous one's output, into
    ``out_root/<name>``; every ``every`` steps log a quick evaluation on ``n_eval`` unseen scenes (world seed
    5:
    quality, textual QA or the lens read-out) and save the stage's checkpoint so far.

    Examples:
        >>> train_recipe("/tmp/toy-recipe", seed=0)  # doctest: +SKIP
    """
    from hooked_mllm.toy.evaluation import evaluate, evaluate_text
    from hooked_mllm.toy.science import format_readout, image_token_readout

    root = Path(out_root)
    results: dict[str, TrainResult] = {}
    prev: Path | None = None
    for name, stage in STAGES.items():

        def report(step: int, m: PreTrainedModel, name: str = name, stage: Stage = stage) -> None:
            if stage.kind == "text":
                tok = build_tokenizer()
                text = evaluate_text(m, seed=5, n=n_eval, tokenizer=tok, progress=False).format()
            else:
                proc = build_processor()
                text = evaluate(
                    m,
                    seed=5,
                    n=n_eval,
                    processor=proc,
                    caption_style=stage.recipe.caption_style,
                    progress=False,
                ).format()
                rows = image_token_readout(m, proc, seed=6, n_scenes=max(20, n_eval // 2))
                text += "\n" + format_readout(rows)
            logger.info("%s after %d steps:\n%s", name, step, text)

        results[name] = train_stage(
            name, seed, root / name, init_dir=prev, progress=progress, every=every, callback=report
        )
        logger.info("%s done in %.0f s", name, results[name].seconds)
        prev = root / name
    return results
