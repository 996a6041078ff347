"""Do an SAE's features find the toy world's concepts? Per colour, shape and position: the best single
feature's AUROC and F1 against the ground truth of every image token, beside the concept dictionaries of
:mod:`hooked_mllm.concepts`, and what adding a colour feature's decoder direction does to the answers.

The toy world (:mod:`hooked_mllm.toy.world`) says exactly which image tokens show which object
(``SceneObject.patch_indices``), so every image token has a true colour, shape and position (or none:
the background). :func:`image_token_labels` lists them; :func:`image_token_activations` reads the hook
point at the same tokens, in the same order.

**Scoring** (:func:`score_units`). A unit is an SAE feature or a dictionary concept (Semi-NMF, the sparse
dictionary, k-means: their ``transform``). For one value (say ``red``) the positives are the tokens of red
objects and the negatives every other image token (background included). The unit is chosen on one set of
scenes (the *selection* split: the highest AUROC) and reported on another (the *test* split), so the
best-of-many choice is not graded on the tokens it was chosen on: **AUROC** (:func:`auroc`, the
Mann-Whitney statistic with tied scores counted half, as sklearn's ``roc_auc_score``) and **F1** at the
threshold that maximises F1 on the selection split.

**Steering** (:func:`steer_colour`). For scenes with an object of the source colour (``blue``) whose
shape is unique, the SAE is spliced with its error term (so the unedited run is the model's own) and the
chosen feature's activation raised by ``strength`` at that object's image tokens, i.e. ``strength *
W_dec[feature]`` is added there (``remove=`` also zeroes another feature there: replace rather than add).
The answers read are the next-token argmax of the object's colour question, of the other objects' colour
questions and of ``how many objects ?``.

Examples:
    >>> from hooked_mllm import toy                                                        # doctest: +SKIP
    >>> model = toy.load("toy-llava-deep")                                                 # doctest: +SKIP
    >>> result = run_study(model, "blocks.1.hook_resid_post", n_train=200)                # doctest: +SKIP
    >>> print(result.markdown())                                                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..concepts.data import Sample
from .train import model_batches, token_activations

__all__ = [
    "ATTRIBUTES",
    "DICTIONARIES",
    "ConceptScore",
    "SteeringOutcome",
    "StudyResult",
    "attribute_values",
    "auroc",
    "image_token_activations",
    "image_token_labels",
    "run_study",
    "score_units",
    "steer_colour",
]

logger = logging.getLogger(__name__)

ATTRIBUTES = ("color", "shape", "position")
"""The ground-truth attributes of an image token (the toy world's object attributes)."""

DICTIONARIES = ("seminmf", "sparse", "kmeans")
"""The concept dictionaries (:func:`hooked_mllm.concepts.make_decomposer` names) scored beside the SAE."""


def attribute_values(attribute: str) -> tuple[str, ...]:
    """Every value of a toy-world attribute, in the world's order (``"color"``: red, green, ...)."""
    from ..toy.world import COLORS, POSITIONS, SHAPES

    values = {"color": tuple(COLORS), "shape": SHAPES, "position": tuple(p for row in POSITIONS for p in row)}
    if attribute not in values:
        raise ValueError(f"Unknown attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)}.")
    return values[attribute]


def image_token_labels(scenes: Sequence[Any]) -> dict[str, np.ndarray]:
    """The true colour, shape and position of every image token of toy scenes.

    Args:
        scenes: :class:`hooked_mllm.toy.Scene` records.

    Returns:
        ``{"color": labels, "shape": labels, "position": labels}``, each an object array of
        ``len(scenes) * 36`` strings (scene by scene, patches row-major: the order of
        :func:`image_token_activations`); ``""`` where no object is (the background).

    Examples:
        >>> from hooked_mllm.toy import World
        >>> labels = image_token_labels(World(seed=0).sample(2))
        >>> labels["color"].shape
        (72,)
    """
    from ..toy.world import PATCH_GRID

    n = PATCH_GRID * PATCH_GRID
    out = {a: np.full(len(scenes) * n, "", dtype=object) for a in ATTRIBUTES}
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            for patch in obj.patch_indices:
                for attribute in ATTRIBUTES:
                    out[attribute][i * n + patch] = getattr(obj, attribute)
    return out


def image_token_activations(
    model: Any, scenes: Sequence[Any], hook_name: str, *, prompt: str | None = None, batch_size: int = 32
) -> Float[Tensor, "n d"]:
    """One hook point's activations at every image token of toy scenes, in :func:`image_token_labels`'
    order (``[len(scenes) * 36, d]``, float32 on the CPU).

    Image tokens come before the prompt, so (causal attention) the prompt does not change them; the
    default is the caption prompt.

    Examples:
        >>> x = image_token_activations(model, scenes, "blocks.1.hook_resid_post")   # doctest: +SKIP
    """
    from ..toy.processor import CAPTION_PROMPT
    from ..toy.world import PATCH_GRID

    samples = [Sample(str(i), s.image, prompt or CAPTION_PROMPT) for i, s in enumerate(scenes)]
    rows = []
    for batch in model_batches(model, samples, batch_size):
        spans = [batch.images_of(r) for r in range(batch.inputs["input_ids"].shape[0])]
        if any(len(s) != 1 or len(s[0].token_positions) != PATCH_GRID * PATCH_GRID for s in spans):
            raise ValueError(f"Expected one image of {PATCH_GRID * PATCH_GRID} tokens per toy scene.")
        with torch.no_grad():
            rows.append(token_activations(model, batch, hook_name, "image").detach().float().cpu())
    return torch.cat(rows)


def auroc(scores: Float[Any, "n ..."], positive: Bool[Any, " n"]) -> Float[np.ndarray, " units"]:
    """The area under the ROC curve of every column of ``scores`` (or of 1-D ``scores``) against
    ``positive``: the probability that a random positive scores above a random negative, ties counted
    half (sklearn's ``roc_auc_score``, for every column at once).

    Raises:
        ValueError: ``positive`` is all True or all False, or its length is not the number of rows.

    Examples:
        >>> auroc(np.array([[0.1, 3.0], [0.4, 2.0], [0.35, 1.0], [0.8, 0.0]]), np.array([0, 0, 1, 1]))
        array([0.75, 0.  ])
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    y = np.asarray(positive, dtype=bool)
    if y.ndim != 1 or y.shape[0] != s.shape[0]:
        raise ValueError(
            f"positive must be 1-D with one entry per row of scores ({s.shape[0]}), got {y.shape}."
        )
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positives and negatives.")
    ranks = rankdata(s, axis=0)  # average ranks: a tie counts half
    return np.asarray((ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(positive, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return float(thresholds[int(np.argmax(f1[:-1]))])


@dataclass(frozen=True)
class ConceptScore:
    """How well one method's best unit finds one attribute value.

    Attributes:
        attribute: ``"color"``, ``"shape"`` or ``"position"``.
        value: The value (``"red"``, ``"circle"``, ``"top-left"``...).
        method: ``"sae"`` or a dictionary name (:data:`DICTIONARIES`).
        unit: The feature / concept chosen on the selection split (highest AUROC there).
        auroc: Its AUROC on the test split.
        f1: Its F1 on the test split, at the threshold best on the selection split.
        threshold: That threshold.
        select_auroc: Its AUROC on the selection split.
        n_positive: Test tokens with this value.
    """

    attribute: str
    value: str
    method: str
    unit: int
    auroc: float
    f1: float
    threshold: float
    select_auroc: float
    n_positive: int


def score_units(
    method: str,
    select: Float[Any, "n units"],
    test: Float[Any, "m units"],
    labels_select: dict[str, np.ndarray],
    labels_test: dict[str, np.ndarray],
    attributes: Sequence[str] = ATTRIBUTES,
) -> list[ConceptScore]:
    """Every value's best unit of one method: chosen on ``select``, scored on ``test``.

    Args:
        method: The method's name (kept in the scores).
        select: The units' activations on the selection tokens.
        test: The units' activations on the test tokens.
        labels_select: :func:`image_token_labels` of the selection tokens.
        labels_test: :func:`image_token_labels` of the test tokens.
        attributes: The attributes scored.

    Returns:
        One :class:`ConceptScore` per value (values absent from either split are left out).

    Examples:
        >>> scores = score_units("sae", f_select, f_test, labels_select, labels_test)  # doctest: +SKIP
    """
    from sklearn.metrics import f1_score

    s, t = np.asarray(select, dtype=np.float64), np.asarray(test, dtype=np.float64)
    out = []
    for attribute in attributes:
        for value in attribute_values(attribute):
            ys, yt = labels_select[attribute] == value, labels_test[attribute] == value
            if ys.all() or not ys.any() or yt.all() or not yt.any():
                continue
            areas = auroc(s, ys)
            unit = int(np.argmax(areas))
            threshold = _best_f1_threshold(s[:, unit], ys)
            out.append(
                ConceptScore(
                    attribute=attribute,
                    value=value,
                    method=method,
                    unit=unit,
                    auroc=float(auroc(t[:, unit], yt)[0]),
                    f1=float(f1_score(yt, t[:, unit] >= threshold)),
                    threshold=threshold,
                    select_auroc=float(areas[unit]),
                    n_positive=int(yt.sum()),
                )
            )
    return out


@dataclass(frozen=True)
class SteeringOutcome:
    """What adding a feature's decoder direction at one object's image tokens does to the answers.

    Attributes:
        feature: The feature raised; ``remove``: the feature zeroed there too (or None).
        strength: How much its activation was raised.
        n_objects: Objects steered (one per scene).
        baseline_source: Fraction whose colour was answered as the source colour without steering.
        to_target: Fraction whose colour answer became the target colour.
        kept_source: Fraction still answered as the source colour.
        other_colour: Fraction answered with a third colour or another word.
        others_changed: Fraction of the other objects' colour answers that changed (of ``n_others``).
        count_changed: Fraction of ``how many objects ?`` answers that changed.
        n_others: Other objects' colour questions asked.
    """

    feature: int
    remove: int | None
    strength: float
    n_objects: int
    baseline_source: float
    to_target: float
    kept_source: float
    other_colour: float
    others_changed: float
    count_changed: float
    n_others: int


def _answers(
    model: Any, sae: Any, questions: list[tuple[Any, str, Any]], edit: Any, batch_size: int
) -> list[str]:
    """The next-token argmax of each ``(scene, question, object)``, the edit applied at the object."""
    hook = sae.cfg.metadata.hook_name
    tokenizer = getattr(model.processor, "tokenizer", model.processor)
    out: list[str] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        batch = model.prepare(images=[s.image for s, _, _ in chunk], prompts=[q for _, q, _ in chunk])
        where = [
            [batch.images_of(r)[0].token_positions[p] for p in obj.patch_indices]
            for r, (_, _, obj) in enumerate(chunk)
        ]

        def steer(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            for r, positions in enumerate(where):  # noqa: B023 (used within this iteration)
                rows = act[r, positions]  # (a copy: list indexing)
                edit(rows)
                act[r, positions] = rows
            return act

        with torch.no_grad(), model.saes([sae], use_error_term=True):
            logits = model.run_with_hooks(batch, fwd_hooks=[(f"{hook}.hook_sae_acts_post", steer)])
        last = logits[torch.arange(logits.shape[0]), batch.last_positions()]
        out += tokenizer.convert_ids_to_tokens(last.argmax(-1).tolist())
    return out


def steer_colour(
    model: Any,
    sae: Any,
    scenes: Sequence[Any],
    feature: int,
    strength: float,
    *,
    source: str = "blue",
    target: str = "red",
    remove: int | None = None,
    batch_size: int = 32,
) -> SteeringOutcome:
    """Raise ``feature`` by ``strength`` (and zero ``remove``) at the image tokens of each scene's
    ``source``-coloured object; count how the answers change (:class:`SteeringOutcome`).

    Only scenes whose ``source`` object has a unique shape are used (its colour question is then
    ``what color is the <shape> ?``). The SAE is spliced with its error term, so ``strength=0`` and no
    ``remove`` give the model's own answers.

    Examples:
        >>> scenes = World(seed=5).sample(100)
        >>> outcome = steer_colour(model, sae, scenes, feature=12, strength=8.0)  # doctest: +SKIP
        >>> outcome.to_target                                                    # doctest: +SKIP
    """
    if source == target:
        raise ValueError("source and target must be different colours.")
    for name, f in (("feature", feature), ("remove", remove)):
        if f is not None and not 0 <= f < sae.cfg.d_sae:
            raise ValueError(f"{name}={f} is out of range: this SAE has d_sae={sae.cfg.d_sae}.")
    chosen = []
    for scene in scenes:
        shapes = [o.shape for o in scene.objects]
        for obj in scene.objects:
            if obj.color == source and shapes.count(obj.shape) == 1:
                chosen.append((scene, obj))
    if not chosen:
        raise ValueError(f"No scene has a {source} object with a unique shape.")
    questions: list[tuple[Any, str, Any]] = []
    kinds: list[str] = []
    for scene, obj in chosen:
        questions.append((scene, f"what color is the {obj.shape} ?", obj))
        kinds.append("self")
        shapes = [o.shape for o in scene.objects]
        for other in scene.objects:
            if other is not obj and shapes.count(other.shape) == 1:
                questions.append((scene, f"what color is the {other.shape} ?", obj))
                kinds.append("other")
        questions.append((scene, "how many objects ?", obj))
        kinds.append("count")

    def steered(rows: Tensor) -> None:
        rows[:, feature] += strength
        if remove is not None:
            rows[:, remove] = 0

    before = _answers(model, sae, questions, lambda rows: None, batch_size)
    after = _answers(model, sae, questions, steered, batch_size)
    mine = [(b, a) for b, a, k in zip(before, after, kinds) if k == "self"]
    others = [b != a for b, a, k in zip(before, after, kinds) if k == "other"]
    counts = [b != a for b, a, k in zip(before, after, kinds) if k == "count"]
    n = len(mine)
    return SteeringOutcome(
        feature=feature,
        remove=remove,
        strength=float(strength),
        n_objects=n,
        baseline_source=sum(b == source for b, _ in mine) / n,
        to_target=sum(a == target for _, a in mine) / n,
        kept_source=sum(a == source for _, a in mine) / n,
        other_colour=sum(a not in (source, target) for _, a in mine) / n,
        others_changed=sum(others) / len(others) if others else float("nan"),
        count_changed=sum(counts) / len(counts),
        n_others=len(others),
    )


@dataclass
class StudyResult:
    """The scores of one SAE and the dictionaries on one hook point (:func:`run_study`).

    Attributes:
        hook_name: The hook point.
        scores: Every :class:`ConceptScore` (methods in :attr:`methods` order).
        methods: The methods scored, SAE first.
        metrics: The SAE's :class:`~hooked_mllm.sae.evaluate.SAEMetrics` on the test scenes' image tokens.
        steering: The :class:`SteeringOutcome` of each steering strength tried.
        n_tokens: ``{"train", "select", "test"}`` image tokens.
        sae: The SAE scored (SAELens' ``SAE``).
    """

    hook_name: str
    scores: list[ConceptScore]
    methods: tuple[str, ...]
    sae: Any = None
    metrics: Any = None
    steering: list[SteeringOutcome] = field(default_factory=list)
    n_tokens: dict[str, int] = field(default_factory=dict)

    def best(self, method: str, attribute: str, value: str) -> ConceptScore:
        """The score of one method and value."""
        for s in self.scores:
            if (s.method, s.attribute, s.value) == (method, attribute, value):
                return s
        raise KeyError(f"No score for {method} {attribute}={value}.")

    def unmet(self, threshold: float = 0.95, attributes: Sequence[str] = ("color", "shape")) -> list[str]:
        """The values of ``attributes`` whose best SAE feature has a test AUROC below ``threshold``."""
        return [
            s.value
            for s in self.scores
            if s.method == "sae" and s.attribute in attributes and s.auroc < threshold
        ]

    def markdown(self) -> str:
        """The scores as a Markdown table: one row per value, ``AUROC / F1 (unit)`` per method."""
        head = "| attribute | value | " + " | ".join(self.methods) + " |"
        lines = [head, "|" + "---|" * (len(self.methods) + 2)]
        seen = dict.fromkeys((s.attribute, s.value) for s in self.scores)
        for attribute, value in seen:
            cells = []
            for method in self.methods:
                s = self.best(method, attribute, value)
                text = f"{s.auroc:.3f} / {s.f1:.2f} (#{s.unit})"
                cells.append(f"**{text}**" if method == "sae" and s.auroc >= 0.95 else text)
            lines.append(f"| {attribute} | {value} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def steering_markdown(self) -> str:
        """The steering outcomes as a Markdown table."""
        lines = [
            "| strength | removed | objects | to target | kept source | other word | other objects changed "
            "| count changed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for o in self.steering:
            lines.append(
                f"| {o.strength:.3g} | {'-' if o.remove is None else f'#{o.remove}'} | {o.n_objects} "
                f"| {o.to_target:.2f} | {o.kept_source:.2f} | {o.other_colour:.2f} "
                f"| {o.others_changed:.2f} ({o.n_others}) | {o.count_changed:.2f} |"
            )
        return "\n".join(lines)


def _scenes(seed: int, n: int) -> list[Any]:
    from ..toy.world import World

    return World(seed=seed).sample(n)


def run_study(
    model: Any,
    hook_name: str,
    *,
    sae: Any = None,
    n_train: int = 300,
    n_select: int = 100,
    n_test: int = 100,
    seeds: tuple[int, int, int, int] = (20_000, 20_001, 20_002, 20_003),
    architecture: str = "topk",
    d_sae: int = 512,
    total_tokens: int = 60_000,
    train_batch_size: int = 256,
    lr: float = 1e-3,
    n_components: int = 32,
    dictionaries: Sequence[str] = DICTIONARIES,
    steer_scenes: int = 200,
    steer_strengths: Sequence[float] = (1.0, 2.0, 4.0),
    source: str = "blue",
    target: str = "red",
    batch_size: int = 32,
    seed: int = 0,
    **sae_options: Any,
) -> StudyResult:
    """Train an SAE on toy scenes' image tokens at one hook point (or take ``sae``), fit the concept
    dictionaries on the same tokens, score both against the ground truth and steer a colour.

    Scenes come from four toy worlds, ``seeds`` = (train, selection, test, steering); the SAE
    (:func:`~hooked_mllm.sae.train.train_sae`, image tokens, ``architecture`` with ``sae_options``: ``k=8``
    for TopK by default) and the dictionaries (``n_components`` concepts each) are fitted on the
    training scenes, units are chosen on the selection scenes and scored on the test scenes
    (:func:`score_units`). Steering raises the feature chosen for ``target`` (and, in a second run per
    strength, also zeroes the feature chosen for ``source``) at the ``source`` objects of the steering
    scenes, by ``steer_strengths`` times that feature's mean activation on the selection split's
    ``target`` tokens (:func:`steer_colour`).

    Returns:
        The :class:`StudyResult` (``.markdown()`` and ``.steering_markdown()`` give the tables).

    Examples:
        >>> result = run_study(toy.load("toy-llava-deep"), "blocks.1.hook_resid_post")   # doctest: +SKIP
        >>> result.unmet()                                                                  # doctest: +SKIP
        []
    """
    from ..concepts import make_decomposer
    from ..toy.processor import CAPTION_PROMPT
    from .evaluate import evaluate_sae
    from .train import train_sae

    unknown = [d for d in dictionaries if d not in DICTIONARIES]
    if unknown:
        raise ValueError(f"Unknown dictionaries {unknown}; use some of {', '.join(DICTIONARIES)}.")
    name = model.hook_points.resolve(hook_name).name
    train, select, test = (_scenes(s, n) for s, n in zip(seeds, (n_train, n_select, n_test)))
    if sae is None:
        if architecture in ("topk", "batchtopk"):
            sae_options.setdefault("k", 8)
        samples = [Sample(str(i), s.image, CAPTION_PROMPT) for i, s in enumerate(train)]
        sae = train_sae(
            model, samples, name, positions="image", architecture=architecture, d_sae=d_sae,
            total_tokens=total_tokens, train_batch_size=train_batch_size, lr=lr, batch_size=batch_size,
            seed=seed, **sae_options,
        )  # fmt: skip
    labels_select, labels_test = image_token_labels(select), image_token_labels(test)
    x = {
        split: image_token_activations(model, scenes, name, batch_size=batch_size)
        for split, scenes in (("train", train), ("select", select), ("test", test))
    }
    with torch.no_grad():
        feats = {
            split: sae.encode(x[split].to(sae.W_enc.device, sae.W_enc.dtype)).float().cpu().numpy()
            for split in ("select", "test")
        }
    scores = score_units("sae", feats["select"], feats["test"], labels_select, labels_test)
    for method in dictionaries:
        decomposer = make_decomposer(method, n_components=n_components, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (convergence notices of the iterative solvers)
            decomposer.fit(x["train"].numpy())
            units = {split: decomposer.transform(x[split].numpy()) for split in ("select", "test")}
        scores += score_units(method, units["select"], units["test"], labels_select, labels_test)
        logger.info("Scored %s on %s", method, name)
    metrics = evaluate_sae(
        model,
        sae,
        [Sample(str(i), s.image, CAPTION_PROMPT) for i, s in enumerate(test)],
        positions="image",
        hook_name=name,
        batch_size=batch_size,
        lm_loss=False,
    )  # fmt: skip  (no LM loss: the caption prompt has no answer to score)
    result = StudyResult(
        hook_name=name,
        scores=scores,
        methods=("sae", *dictionaries),
        metrics=metrics,
        sae=sae,
        n_tokens={split: int(v.shape[0]) for split, v in x.items()},
    )
    if steer_strengths:
        red = result.best("sae", "color", target).unit
        blue = result.best("sae", "color", source).unit
        on_target = feats["select"][labels_select["color"] == target, red]
        typical = float(on_target[on_target > 0].mean()) if (on_target > 0).any() else 1.0
        scenes = _scenes(seeds[3], steer_scenes)
        for multiple in steer_strengths:
            for remove in (None, blue):
                result.steering.append(
                    steer_colour(
                        model,
                        sae,
                        scenes,
                        red,
                        multiple * typical,
                        source=source,
                        target=target,
                        remove=remove,
                        batch_size=batch_size,
                    )  # fmt: skip
                )
    return result
