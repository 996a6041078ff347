"""The pointing game on the toy world: does a location map's peak fall on the object a question asks about?

Questions about one object (``color``: "what color is the {shape} ?", ``shape``: "what
shape is the {color} object ?", ``position``: "where is the {color} {shape} ?", ``exist``
with answer yes: "is there a {color} {shape} ?") over scenes of a world seed the toy
models never trained on (seeds below 10,000). A method scores a hit when its map's peak is
one of the asked object's patches (:attr:`hooked_mllm.toy.SceneObject.patch_indices`). Two
chance levels are reported exactly (as expectations, not samples): a random patch
(``|object patches| / 36``) and a random object of the scene (``1 / n_objects``).

:data:`METHODS` names every method (the head map with the paper's top-head rule, top
heads of the later layers, the top three heads, all heads summed; the attention,
relevancy, input x gradient and occlusion baselines; the last layer's logit lens).
:func:`pointing_game` runs them on any model that speaks the toy world, so it can be rerun
on retrained checkpoints; ``python -m hooked_mllm.mechanism`` prints the table. It lives in the toy
package because it knows the toy world; ``hooked_mllm.mechanism`` re-exports it.

Examples:
    >>> from hooked_mllm import toy
    >>> from hooked_mllm.mechanism import pointing_game
    >>> scenes = toy.World(seed=7).sample(60)
    >>> model = toy.load("toy-llava")                                                  # doctest: +SKIP
    >>> result = pointing_game(model, scenes, methods=["attention", "heads_all"])     # doctest: +SKIP
    >>> print(result.table())                                                         # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..mechanism.baselines import attention_map, gradient_map, occlusion_map, relevancy_map
from ..mechanism.capture import MechanismRun, capture
from ..mechanism.explain import lens_location_map
from ..mechanism.maps import LocationMap
from ..mechanism.scores import image_locations
from ..model import HookedMLLM

if TYPE_CHECKING:
    from .world import QA, Scene, SceneObject

MapMethod = Callable[..., list[LocationMap]]
"""``fn(model, run, image=0) -> one map per row`` (``image``: the image of each row, or with
``run.batch = batch.frames_as_images()`` the frame of its video)."""


def _late(model: HookedMLLM) -> slice:
    return slice(model.cfg.n_layers // 2, None)


def _heads(heads: object, late: bool = False) -> MapMethod:
    def method(model: HookedMLLM, run: MechanismRun, image: int = 0) -> list[LocationMap]:
        layers = _late(model) if late else None
        maps = image_locations(model, run, heads=heads, layers=layers, row=None, image=image)
        return maps  # type: ignore[return-value]

    return method


def _baseline(fn: Callable[..., object], same_forward: bool = False) -> MapMethod:
    def method(model: HookedMLLM, run: MechanismRun, image: int = 0) -> list[LocationMap]:
        if same_forward:
            return fn(model, run, row=None, image=image)  # type: ignore[return-value]
        return fn(model, run.batch, target=run.target.tolist(), row=None, image=image)  # type: ignore[return-value]

    return method


METHODS: dict[str, MapMethod] = {
    "heads_top": _heads("top"),
    "heads_top_late": _heads("top", late=True),
    "heads_top3": _heads(3),
    "heads_all": _heads("all"),
    "attention": _baseline(attention_map, same_forward=True),
    "relevancy": _baseline(relevancy_map),
    "input_x_gradient": _baseline(gradient_map),
    "occlusion": _baseline(occlusion_map),
    "logit_lens": _baseline(lens_location_map),
}
"""Every pointing-game method: ``name -> fn(model, run, image=0) -> one map per row``."""

DESCRIPTIONS = {
    "heads_top": "head map, the single top head (the paper's rule)",
    "heads_top_late": "head map, the top head of the later half of the layers",
    "heads_top3": "head map, the top 3 heads summed",
    "heads_all": "head map, every head summed",
    "attention": "mean attention from the last position (the paper's baseline)",
    "relevancy": "attention x gradient relevancy (Chefer et al. 2021)",
    "input_x_gradient": "input x gradient on the image embeddings",
    "occlusion": "occlusion, one forward per cell",
    "logit_lens": "logit lens of the last layer: p(answer) per cell",
}

OBJECT_QTYPES = ("color", "shape", "position", "exist")


@dataclass(frozen=True, kw_only=True)
class PointingResult:
    """Pointing-game accuracies.

    Attributes:
        accuracy: Per method, the fraction of questions whose map peaks on the asked object.
        by_qtype: Per method, the same per question type.
        random_patch: Expected accuracy of a uniformly random patch.
        random_object: Expected accuracy of pointing at a random object of the scene.
        model_accuracy: How often the model's next token is the answer's first token.
        n_questions: Questions played.
        n_scenes: Scenes they came from.
        world_seed: The scenes' world seed, if known.
    """

    accuracy: dict[str, float]
    by_qtype: dict[str, dict[str, float]]
    random_patch: float
    random_object: float
    model_accuracy: float
    n_questions: int
    n_scenes: int
    world_seed: int | None = None

    def best(self) -> tuple[str, float]:
        """The best method and its accuracy."""
        name = max(self.accuracy, key=self.accuracy.__getitem__)
        return name, self.accuracy[name]

    def table(self) -> str:
        """A markdown table: one row per method and the two chance levels, columns per question type."""
        qtypes = sorted({q for d in self.by_qtype.values() for q in d}, key=OBJECT_QTYPES.index)
        lines = [
            "| method | pointing accuracy | " + " | ".join(qtypes) + " |",
            "|---|---|" + "---|" * len(qtypes),
        ]
        for name, acc in self.accuracy.items():
            per = " | ".join(f"{self.by_qtype[name].get(q, float('nan')):.2f}" for q in qtypes)
            lines.append(f"| {name}: {DESCRIPTIONS.get(name, name)} | {acc:.2f} | {per} |")
        blank = " | ".join("" for _ in qtypes)
        lines.append(f"| random object of the scene (expected) | {self.random_object:.2f} | {blank} |")
        lines.append(f"| random patch (expected) | {self.random_patch:.2f} | {blank} |")
        return "\n".join(lines)


def asked_object(scene: Scene, qa: QA) -> SceneObject | None:
    """The one object a question asks about, or None (counting, and "no" existence questions)."""
    words = qa.question.replace("?", "").split()
    matches = []
    for obj in scene.objects:
        if qa.qtype == "color":
            hit = obj.shape in words
        elif qa.qtype == "shape":
            hit = obj.color in words
        elif qa.qtype in ("position", "exist"):
            hit = obj.color in words and obj.shape in words
        else:
            hit = False
        if hit:
            matches.append(obj)
    return matches[0] if len(matches) == 1 else None


def pointing_game(
    model: HookedMLLM,
    scenes: Sequence[Scene],
    *,
    methods: Sequence[str] | None = None,
    qtypes: Sequence[str] = OBJECT_QTYPES,
    batch_size: int = 16,
    progress: bool = False,
    world_seed: int | None = None,
) -> PointingResult:
    """Play the pointing game with every method over the object questions of ``scenes``.

    Args:
        model: A model that speaks the toy world (its processor and 6 x 6 image grid).
        scenes: Toy scenes (use a world seed below 10,000: never seen in training).
        methods: Names from :data:`METHODS` (all by default).
        qtypes: Question types played (those about one object).
        batch_size: Questions per forward.
        progress: Show a tqdm bar.

    Examples:
        >>> res = pointing_game(model, toy.World(seed=7).sample(60), methods=["attention"])  # doctest: +SKIP
        >>> res.accuracy["attention"] >= res.random_object                                   # doctest: +SKIP
        True
    """
    names = list(METHODS) if methods is None else list(methods)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"Unknown pointing methods {unknown}; known: {list(METHODS)}.")
    items = [
        (scene, qa, obj)
        for scene in scenes
        for qa in scene.questions
        if qa.qtype in qtypes
        for obj in [asked_object(scene, qa)]
        if obj is not None
    ]
    if not items:
        raise ValueError("No question about one object among these scenes and question types.")
    tokenizer = model.processor.tokenizer
    hits: dict[str, list[bool]] = {n: [] for n in names}
    correct = []
    chunks = range(0, len(items), batch_size)
    for start in tqdm(chunks, desc="pointing game", disable=not progress):
        chunk = items[start : start + batch_size]
        batch = model.prepare(
            images=[s.image for s, _, _ in chunk], prompts=[qa.question for _, qa, _ in chunk]
        )
        run = capture(model, batch)
        answers = [tokenizer.encode(qa.answer, add_special_tokens=False)[0] for _, qa, _ in chunk]
        correct += [int(t) == a for t, a in zip(run.target.tolist(), answers)]
        for name in names:
            maps = METHODS[name](model, run)
            for m, (_, _, obj) in zip(maps, chunk):
                if m.values.size != 36:
                    raise ValueError(
                        f"The pointing game needs the toy's 6 x 6 image grid; {name} gave {m.shape}."
                    )
                hits[name].append(m.peak_index() in obj.patch_indices)
    qtype_of = [qa.qtype for _, qa, _ in items]
    by_qtype = {
        n: {
            q: float(np.mean([h for h, t in zip(hits[n], qtype_of) if t == q]))
            for q in qtypes
            if q in qtype_of
        }
        for n in names
    }
    return PointingResult(
        accuracy={n: float(np.mean(hits[n])) for n in names},
        by_qtype=by_qtype,
        random_patch=float(np.mean([len(obj.patch_indices) / 36 for _, _, obj in items])),
        random_object=float(np.mean([1 / len(scene.objects) for scene, _, _ in items])),
        model_accuracy=float(np.mean(correct)),
        n_questions=len(items),
        n_scenes=len({id(scene) for scene, _, _ in items}),
        world_seed=world_seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hooked_mllm.mechanism``: play the game on a toy checkpoint, print the table."""
    import logging

    from .. import toy

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="toy-llava", help="a toy checkpoint name or a checkpoint directory"
    )
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7, help="world seed (below 10,000: unseen in training)")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from ..model import HookedMLLM

    model = toy.load(args.model) if args.model in toy.CHECKPOINTS else HookedMLLM.from_pretrained(args.model)
    scenes = toy.World(seed=args.seed).sample(args.scenes)
    result = pointing_game(model, scenes, methods=args.methods, progress=True, world_seed=args.seed)
    sys.stdout.write(
        f"{result.n_questions} questions from {result.n_scenes} scenes of world seed {args.seed}; "
        f"model answers {result.model_accuracy:.2f} of them right (first token)\n\n"
    )
    sys.stdout.write(result.table() + "\n")
    return 0
