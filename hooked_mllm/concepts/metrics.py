"""Metrics for concept dictionaries: reconstruction, sparsity, overlap, CLIP-style scores, attribute recovery.

Purpose: score a decomposition ``Z ~ V U`` the way CoX-LMM (arXiv 2406.08074) does, plus checks that concepts
recover known generative factors on synthetic or toy data.

Connections: takes fitted decomposers from :mod:`hooked_mllm.concepts.decompose` (anything with
``transform``/``inverse_transform``/``components_``), or plain ``(V, U)`` factors; the grounded word lists
come from the text-grounding step of ``hooked_mllm.concepts``. No CLIP weights ship here: the image-text
scorer is a user-provided callable following :class:`ImageTextScorer`.

Contents:
- :func:`reconstruction_error`: relative Frobenius error ``||Z - Z_hat|| / ||Z||``.
- :func:`hoyer_sparsity`, :func:`sparsity` (+ :class:`Sparsity`): sparsity of activations.
- :func:`overlap_matrix`, :func:`concept_overlap`: word overlap between grounded concepts (lower is better).
- :func:`project`: test-time projection of new features onto fitted concepts.
- :class:`ImageTextScorer`, :func:`top_concept_words`, :func:`clip_style_score`: CLIPScore-style evaluation;
  :func:`clip_concept_score` (the reference code's per-concept average), :class:`CLIPScorer` (a Hugging Face
  CLIP model as the scorer) and :func:`random_word_lists` (the random-words baseline).
- :func:`attribute_recovery`: NMI and purity between each sample's strongest concept and known labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float
from sklearn.metrics import normalized_mutual_info_score
from sklearn.utils.validation import check_is_fitted

DEFAULT_TEMPLATE = "A photo is described by the words {}"


def _np2d(x: Any, name: str) -> np.ndarray:
    """numpy float64 view of a 2-D array or tensor, with a clear error otherwise."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}.")
    return arr


def reconstruction_error(Z: Float[Any, "n d"], model_or_factors: Any) -> float:
    """Relative Frobenius reconstruction error ``||Z - Z_hat||_F / ||Z||_F``.

    Args:
        Z: features [n, d] (numpy or torch).
        model_or_factors: a fitted decomposer (then ``Z_hat = inverse_transform(transform(Z))``, which
            includes e.g. PCA's mean) or a pair ``(V [n, K], U [K, d])`` (then ``Z_hat = V @ U``).

    Examples:
        >>> V, U = np.eye(3)[:, :2], np.ones((2, 4))
        >>> reconstruction_error(V @ U, (V, U))
        0.0
    """
    Zn = _np2d(Z, "Z")
    if isinstance(model_or_factors, tuple):
        if len(model_or_factors) != 2:
            raise ValueError("model_or_factors as a tuple must be (V [n, K], U [K, d]).")
        V, U = _np2d(model_or_factors[0], "V"), _np2d(model_or_factors[1], "U")
        if V.shape[0] != Zn.shape[0] or U.shape[1] != Zn.shape[1] or V.shape[1] != U.shape[0]:
            raise ValueError(
                f"Shapes do not compose: Z {Zn.shape}, V {V.shape}, U {U.shape}; need V [n, K] and U [K, d] "
                "with Z [n, d]."
            )
        Z_hat = V @ U
    elif hasattr(model_or_factors, "transform") and hasattr(model_or_factors, "inverse_transform"):
        Z_hat = _np2d(model_or_factors.inverse_transform(model_or_factors.transform(Z)), "Z_hat")
    else:
        raise TypeError(
            "model_or_factors must be a fitted decomposer (with transform/inverse_transform) or a (V, U) "
            f"tuple, got {type(model_or_factors).__name__}."
        )
    norm = np.linalg.norm(Zn)
    if norm == 0:
        raise ValueError("Z is all zeros; the relative reconstruction error is undefined.")
    return float(np.linalg.norm(Zn - Z_hat) / norm)


def hoyer_sparsity(x: Float[Any, "*batch k"]) -> Float[np.ndarray, "*batch"]:
    """Hoyer (2004) sparsity along the last axis: ``(sqrt(k) - |x|_1 / |x|_2) / (sqrt(k) - 1)`` in [0, 1].

    1 for a one-hot vector, 0 for a constant-magnitude vector. The all-zero vector is given sparsity 1
    (nothing is active). Needs ``k >= 2``.

    Examples:
        >>> hoyer_sparsity(np.array([[0.0, 0.0, 5.0, 0.0], [1.0, -1.0, 1.0, 1.0]]))
        array([1., 0.])
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    k = arr.shape[-1] if arr.ndim else 0
    if k < 2:
        raise ValueError(
            f"hoyer_sparsity needs at least 2 entries along the last axis, got shape {arr.shape}."
        )
    l1, l2 = np.abs(arr).sum(-1), np.sqrt((arr * arr).sum(-1))
    ratio = np.divide(l1, l2, out=np.ones_like(l1), where=l2 > 0)
    return (np.sqrt(k) - ratio) / (np.sqrt(k) - 1)


@dataclass(frozen=True)
class Sparsity:
    """Sparsity summary of an activation matrix ``V [n, K]``.

    Attributes:
        fraction_near_zero: fraction of entries with ``|V_ij| <= rtol * max|V|``.
        hoyer: mean over samples (rows) of the Hoyer sparsity of the row.
    """

    fraction_near_zero: float
    hoyer: float


def sparsity(V: Float[Any, "n k"], *, rtol: float = 1e-3) -> Sparsity:
    """Sparsity of activations ``V [n, K]``: near-zero fraction (relative to ``max|V|``) and mean row Hoyer.

    Examples:
        >>> sparsity(np.array([[1.0, 0.0], [0.0, 2.0]]))
        Sparsity(fraction_near_zero=0.5, hoyer=1.0)
    """
    Vn = _np2d(V, "V")
    scale = np.abs(Vn).max() if Vn.size else 0.0
    near = float(np.mean(np.abs(Vn) <= rtol * scale)) if Vn.size else 0.0
    return Sparsity(fraction_near_zero=near, hoyer=float(np.mean(hoyer_sparsity(Vn))))


def overlap_matrix(words_per_concept: Sequence[Iterable[str]]) -> Float[np.ndarray, "k k"]:
    """Word overlap ``O_ij = |W_i ∩ W_j| / |W_i|`` between grounded concepts (diagonal set to NaN).

    A concept with an empty word list has ``O_ij = 0`` (it shares no word).

    Examples:
        >>> float(overlap_matrix([["red", "car"], ["red", "apple", "fruit", "tree"]])[0, 1])
        0.5
    """
    if isinstance(words_per_concept, str) or any(isinstance(w, str) for w in words_per_concept):
        raise TypeError("words_per_concept must be a sequence of word lists, e.g. [['dog', 'fur'], ['car']].")
    sets = [set(w) for w in words_per_concept]
    if len(sets) < 2:
        raise ValueError(f"Overlap needs at least 2 concepts, got {len(sets)}.")
    k = len(sets)
    overlap = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(k):
            if i != j:  # a concept without words overlaps nothing (as in the reference code)
                overlap[i, j] = len(sets[i] & sets[j]) / len(sets[i]) if sets[i] else 0.0
    return overlap


def concept_overlap(words_per_concept: Sequence[Iterable[str]]) -> float:
    """Mean over ``i != j`` of ``|W_i ∩ W_j| / |W_i|`` (CoX-LMM's overlap; lower is better).

    Examples:
        >>> concept_overlap([["red", "car"], ["red", "apple", "fruit", "tree"]])  # (1/2 + 1/4) / 2
        0.375
    """
    return float(np.nanmean(overlap_matrix(words_per_concept)))


def project(Z_new: Float[Any, "n d"], decomposer: Any) -> Float[np.ndarray, "n k"]:
    """Test-time projection: activations ``V [n, K]`` of new features under an already fitted decomposer.

    Raises ``sklearn.exceptions.NotFittedError`` if ``decomposer`` was not fitted.

    Examples:
        >>> from hooked_mllm.concepts.decompose import PCAConcepts
        >>> Z = np.random.default_rng(0).normal(size=(20, 4))
        >>> project(Z[:3], PCAConcepts(n_components=2).fit(Z)).shape
        (3, 2)
    """
    check_is_fitted(decomposer)
    return np.asarray(decomposer.transform(Z_new), dtype=np.float64)


@runtime_checkable
class ImageTextScorer(Protocol):
    """Scores matched (image, text) pairs, e.g. CLIPScore ``2.5 * max(cos(img, txt), 0)``.

    ``scorer(images, texts)`` receives two sequences of equal length ``n`` and returns ``n`` scores.
    """

    def __call__(self, images: Sequence[Any], texts: Sequence[str]) -> Any: ...


def top_concept_words(
    V: Float[Any, "n k"], words_per_concept: Sequence[Sequence[str]], top_k: int = 1
) -> list[list[str]]:
    """Per sample, the words of its ``top_k`` most active concepts (strongest first, duplicates dropped).

    Examples:
        >>> top_concept_words(np.array([[0.1, 0.9]]), [["dog"], ["car", "red"]])
        [['car', 'red']]
    """
    Vn = _np2d(V, "V")
    if Vn.shape[1] != len(words_per_concept):
        raise ValueError(f"V has {Vn.shape[1]} concepts but {len(words_per_concept)} word lists were given.")
    if not 1 <= top_k <= Vn.shape[1]:
        raise ValueError(f"top_k must be in [1, {Vn.shape[1]}], got {top_k}.")
    order = np.argsort(-Vn, axis=1, kind="stable")[:, :top_k]
    return [list(dict.fromkeys(w for c in row for w in words_per_concept[c])) for row in order]


def clip_style_score(
    scorer: ImageTextScorer,
    images: Sequence[Any],
    concept_words: Sequence[Sequence[str]],
    template: str = DEFAULT_TEMPLATE,
) -> Float[np.ndarray, " n"]:
    """Score each image against the text ``template.format(", ".join(words))`` of its concept words.

    Args:
        scorer: callable ``(images, texts) -> scores [n]`` (bring your own CLIP; :class:`ImageTextScorer`).
        images: ``n`` images in whatever form ``scorer`` accepts.
        concept_words: for each image, the grounded words of its top concepts (see :func:`top_concept_words`).
        template: text template with one ``{}`` slot.

    Returns:
        scores [n] (numpy float64); average them for the dataset-level number.

    Examples:
        >>> scorer = lambda imgs, texts: [float("dog" in t) for t in texts]
        >>> clip_style_score(scorer, ["img0", "img1"], [["dog", "fur"], ["car"]])
        array([1., 0.])
    """
    if "{}" not in template:
        raise ValueError(f"template must contain one '{{}}' slot for the words, got {template!r}.")
    if len(images) != len(concept_words):
        raise ValueError(
            f"Got {len(images)} images but {len(concept_words)} word lists; they must match 1:1."
        )
    if any(isinstance(w, str) for w in concept_words):
        raise TypeError("concept_words must be one list of words per image, e.g. [['dog', 'fur'], ['car']].")
    texts = [template.format(", ".join(words)) for words in concept_words]
    scores = scorer(images, texts)
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().to(torch.float64).numpy()
    out = np.asarray(scores, dtype=np.float64).reshape(-1)
    if out.shape[0] != len(texts):
        raise ValueError(
            f"scorer returned {out.shape[0]} scores for {len(texts)} (image, text) pairs; it must return one "
            "score per pair."
        )
    return out


def clip_concept_score(
    scorer: ImageTextScorer,
    images: Sequence[Any],
    V: Float[Any, "n k"],
    words_per_concept: Sequence[Sequence[str]],
    top_k: int = 1,
    template: str = DEFAULT_TEMPLATE,
) -> Float[np.ndarray, " n"]:
    """CoX-LMM's CLIPScore: per image, the mean over its ``top_k`` concepts of
    ``scorer(image, text(concept))``.

    Each concept is scored on its own (text ``template.format(", ".join(words))``), then the scores of
    the image's top concepts are averaged, as in the reference code (not one text of all words joined).
    Concepts without words score 0.

    Examples:
        >>> scorer = lambda imgs, texts: [float("dog" in t) for t in texts]
        >>> V = np.array([[0.9, 0.5, 0.1]])
        >>> clip_concept_score(scorer, ["i0"], V, [["dog"], ["car"], ["sky"]], top_k=2)
        array([0.5])
    """
    Vn = _np2d(V, "V")
    if len(images) != Vn.shape[0]:
        raise ValueError(f"Got {len(images)} images but V has {Vn.shape[0]} rows; they must match 1:1.")
    if Vn.shape[1] != len(words_per_concept):
        raise ValueError(f"V has {Vn.shape[1]} concepts but {len(words_per_concept)} word lists were given.")
    if not 1 <= top_k <= Vn.shape[1]:
        raise ValueError(f"top_k must be in [1, {Vn.shape[1]}], got {top_k}.")
    order = np.argsort(-Vn, axis=1, kind="stable")[:, :top_k]
    pairs = [(i, c) for i in range(len(images)) for c in order[i] if words_per_concept[c]]
    scores = np.zeros((len(images), top_k))
    if pairs:
        got = clip_style_score(
            scorer, [images[i] for i, _ in pairs], [words_per_concept[c] for _, c in pairs], template
        )
        for (i, c), value in zip(pairs, got):
            scores[i, list(order[i]).index(c)] = value
    return scores.mean(axis=1)


def random_word_lists(
    vocabulary: Sequence[str], n_concepts: int, n_words: int = 10, seed: int = 0
) -> list[list[str]]:
    """``n_concepts`` lists of ``n_words`` distinct words drawn at random from ``vocabulary``: the baseline.

    Score random lists with the same metric (:func:`concept_overlap`, :func:`clip_concept_score`) to see
    what chance gives; the reference code's words come from the LM head's vocabulary.

    Examples:
        >>> random_word_lists(["red", "blue", "dog", "cat"], 2, n_words=2, seed=0)
        [['dog', 'red'], ['cat', 'blue']]
    """
    words = sorted(set(vocabulary))
    if n_words > len(words):
        raise ValueError(f"Need at least n_words={n_words} distinct words, the vocabulary has {len(words)}.")
    rng = np.random.default_rng(seed)
    return [[words[i] for i in rng.choice(len(words), n_words, replace=False)] for _ in range(n_concepts)]


class CLIPScorer:
    """CLIPScore (Hessel et al. 2021) with a Hugging Face CLIP model: ``2.5 * max(cos(image, text), 0)``.

    Args:
        model: a ``transformers.CLIPModel`` (any size; weights are yours to load).
        processor: a callable ``processor(text=..., images=..., return_tensors="pt", padding=True)``
            such as ``CLIPProcessor``.
        weight: the ``w`` of CLIPScore (2.5).
        batch_size: pairs per forward.

    Examples:
        >>> scorer = CLIPScorer(CLIPModel.from_pretrained(path),
        ...                     CLIPProcessor.from_pretrained(path))  # doctest: +SKIP
        >>> clip_concept_score(scorer, images, V, words, top_k=3).mean()  # doctest: +SKIP
    """

    def __init__(self, model: Any, processor: Any, weight: float = 2.5, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.processor = processor
        self.weight = weight
        self.batch_size = batch_size

    def __call__(self, images: Sequence[Any], texts: Sequence[str]) -> Float[np.ndarray, " n"]:
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            inputs = self.processor(
                text=list(texts[start : start + self.batch_size]),
                images=list(images[start : start + self.batch_size]),
                return_tensors="pt",
                padding=True,
            )
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with torch.no_grad():
                img = _features(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
                txt = _features(
                    self.model.get_text_features(
                        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
                    )
                )
            cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
            out.append((self.weight * cos.clamp_min(0)).cpu().double().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def _features(value: Any) -> torch.Tensor:
    """The embedding tensor from ``get_*_features`` (a tensor, or an output object in newer transformers)."""
    if isinstance(value, torch.Tensor):
        return value
    return value.pooler_output if getattr(value, "pooler_output", None) is not None else value[0]


def attribute_recovery(
    V: Float[Any, "n k"], labels: Sequence[Any] | np.ndarray | torch.Tensor
) -> dict[str, float]:
    """How well the strongest concept of each sample recovers a known attribute (e.g. colour or shape).

    Returns ``{"nmi": ..., "purity": ...}``: sklearn's ``normalized_mutual_info_score`` between
    ``argmax(V, axis=1)`` and ``labels``, and purity = fraction of samples whose label is the majority label
    of their concept. Both are 1 for a perfect one-to-one recovery.

    Examples:
        >>> V = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 2.0]])
        >>> attribute_recovery(V, ["red", "red", "blue"])
        {'nmi': 1.0, 'purity': 1.0}
    """
    Vn = _np2d(V, "V")
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != Vn.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per row of V ({Vn.shape[0]}), got shape {lab.shape}."
        )
    assign = Vn.argmax(axis=1)
    _, lab_idx = np.unique(lab, return_inverse=True)
    table = np.zeros((Vn.shape[1], lab_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (assign, lab_idx), 1)
    return {
        "nmi": float(normalized_mutual_info_score(lab_idx, assign)),
        "purity": float(table.max(axis=1).sum() / Vn.shape[0]),
    }
