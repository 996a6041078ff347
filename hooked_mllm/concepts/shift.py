"""Fine-tuning representation shift, concept by concept (numeric part of arXiv 2501.03012).

Purpose: given features ``A [n, d]`` of an original model ``a`` and ``B [n, d]`` of a fine-tuned model
``b`` on the same samples, and concepts ``U^a`` learned on ``A``, measure how each concept moves: assign
every sample to its strongest concept, average the per-sample shifts ``d_m = b_m - a_m`` inside each concept
into shift vectors ``D_k``, shift the concepts ``u^s_k = u^a_k + alpha D_k`` and check that they match
``b``'s own concepts ``U^b`` better than the originals do.

Connections: decomposers come from :mod:`hooked_mllm.concepts.decompose`; features from the caching machinery
of ``hooked_mllm``. Grounded-word and top-image overlaps of matched concepts are computed with
:mod:`hooked_mllm.concepts.metrics` once concepts are grounded; this module is numbers only.

Contents:
- :func:`assign_concepts`, :func:`concept_shift_vectors`, :func:`shift_consistency`, :func:`shifted_concepts`.
- :func:`match_concepts` (+ :class:`ConceptMatching`): Hungarian matching on cosine similarity.
- :func:`shift_improvement` (+ :class:`ShiftImprovement`): distance and cosine gains after matching.
- :func:`shift_baselines`: the same gains for one global mean shift and for a random concept assignment.
- :func:`align_ids`: rows of the samples two feature stores share, in linear time.
- :func:`analyze_shift` (+ :class:`ShiftResult`): the whole analysis in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from scipy.stats import trim_mean
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

Reduce = Literal["mean", "median", "trimmed"]
_TINY = np.finfo(np.float64).tiny


def _np(x: Any, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}.")
    return arr


def _pair(A: Any, B: Any) -> tuple[np.ndarray, np.ndarray]:
    A, B = _np(A, "A", 2), _np(B, "B", 2)
    if A.shape != B.shape:
        raise ValueError(
            f"A and B must hold the same samples in the same feature space: got A {A.shape} and B {B.shape}; "
            "need both [n_samples, d_model]."
        )
    return A, B


def _check_assignment(assignment: Any, n: int, n_concepts: int | None) -> tuple[np.ndarray, int]:
    a = np.asarray(assignment)
    if a.ndim != 1 or a.shape[0] != n or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"assignment must be 1-D integer of length {n}, got shape {a.shape} dtype {a.dtype}."
        )
    k = int(a.max()) + 1 if n_concepts is None else int(n_concepts)
    if n and (a.min() < 0 or a.max() >= k):
        raise ValueError(f"assignment values must be in [0, {k}), got range [{a.min()}, {a.max()}].")
    return a, k


def _unit_rows(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), _TINY)


def assign_concepts(V: Float[Any, "n k"]) -> Int[np.ndarray, " n"]:
    """Strongest concept of each sample: ``argmax(V, axis=1)`` (ties go to the lowest index).

    Examples:
        >>> assign_concepts(np.array([[0.1, 0.7], [0.5, 0.2]]))
        array([1, 0])
    """
    return _np(V, "V", 2).argmax(axis=1)


def concept_shift_vectors(
    A: Float[Any, "n d"],
    B: Float[Any, "n d"],
    assignment: Int[Any, " n"],
    n_concepts: int | None = None,
    reduce: Reduce = "mean",
    trim: float = 0.1,
) -> tuple[Float[np.ndarray, "k d"], Int[np.ndarray, " k"]]:
    """Concept shift vectors ``D_k``: reduce the shifts ``d_m = B_m - A_m`` over the samples of concept ``k``.

    Args:
        A: features of the samples in model a, [n, d].
        B: features of the same samples in model b, [n, d].
        assignment: concept index of each sample [n] (see :func:`assign_concepts`).
        n_concepts: ``K``; defaults to ``assignment.max() + 1``.
        reduce: ``"mean"``, coordinate-wise ``"median"``, or ``"trimmed"`` mean (cuts ``trim`` at each end).

    Returns:
        ``(D [K, d], counts [K])``. A concept with no samples gets ``D_k = 0`` and count 0.

    Examples:
        >>> A = np.zeros((3, 2)); B = np.array([[1.0, 0], [3.0, 0], [0, 5.0]])
        >>> concept_shift_vectors(A, B, np.array([0, 0, 1]))
        (array([[2., 0.],
               [0., 5.]]), array([2, 1]))
    """
    A, B = _pair(A, B)
    a, k = _check_assignment(assignment, A.shape[0], n_concepts)
    if reduce not in ("mean", "median", "trimmed"):
        raise ValueError(f"reduce must be 'mean', 'median' or 'trimmed', got {reduce!r}.")
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}.")
    shifts = B - A
    D = np.zeros((k, A.shape[1]))
    counts = np.bincount(a, minlength=k)
    for c in np.nonzero(counts)[0]:
        d = shifts[a == c]
        if reduce == "mean":
            D[c] = d.mean(axis=0)
        elif reduce == "median":
            D[c] = np.median(d, axis=0)
        else:
            D[c] = trim_mean(d, proportiontocut=trim, axis=0)
    return D, counts


def shift_consistency(
    A: Float[Any, "n d"], B: Float[Any, "n d"], assignment: Int[Any, " n"], n_concepts: int | None = None
) -> Float[np.ndarray, " k"]:
    """Per concept, the mean pairwise cosine similarity of the shifts ``d_m = B_m - A_m`` of its samples.

    1 when all samples of a concept move in the same direction. NaN for concepts with fewer than 2 samples;
    a zero shift counts as cosine 0 with every other shift. Computed in O(n d) via
    ``sum_{i != j} <x_i, x_j> = ||sum x||^2 - sum ||x||^2`` on unit vectors.

    Examples:
        >>> A = np.zeros((4, 2)); B = np.array([[1.0, 0], [2.0, 0], [0, 1.0], [0, -1.0]])
        >>> shift_consistency(A, B, np.array([0, 0, 1, 1]))
        array([ 1., -1.])
    """
    A, B = _pair(A, B)
    a, k = _check_assignment(assignment, A.shape[0], n_concepts)
    unit = _unit_rows(B - A)
    out = np.full(k, np.nan)
    for c in range(k):
        x = unit[a == c]
        m = x.shape[0]
        if m >= 2:
            s = x.sum(axis=0)
            out[c] = (s @ s - (x * x).sum()) / (m * (m - 1))
    return out


def shifted_concepts(
    U_a: Float[Any, "k d"], D: Float[Any, "k d"], alpha: float = 1.0
) -> Float[np.ndarray, "k d"]:
    """Shifted concepts ``U^s = U^a + alpha * D``.

    Examples:
        >>> shifted_concepts(np.ones((2, 3)), np.eye(2, 3), alpha=2.0)[0]
        array([3., 1., 1.])
    """
    U_a, D = _np(U_a, "U_a", 2), _np(D, "D", 2)
    if U_a.shape != D.shape:
        raise ValueError(f"U_a {U_a.shape} and D {D.shape} must both be [K, d].")
    return U_a + alpha * D


@dataclass(frozen=True, eq=False)
class ConceptMatching:
    """One-to-one matching of concepts ``x`` to concepts ``y``: pair ``p`` is ``(index_x[p], index_y[p])``.

    Attributes:
        index_x: matched row indices of x [P] with ``P = min(K_x, K_y)``, sorted.
        index_y: the matched row indices of y [P], in the order of ``index_x``.
        cosine: cosine similarity of each matched pair [P].
    """

    index_x: Int[np.ndarray, " p"]
    index_y: Int[np.ndarray, " p"]
    cosine: Float[np.ndarray, " p"]


def match_concepts(U_x: Float[Any, "kx d"], U_y: Float[Any, "ky d"]) -> ConceptMatching:
    """Hungarian matching (``scipy.optimize.linear_sum_assignment``) maximising total cosine similarity.

    Examples:
        >>> m = match_concepts(np.eye(2), np.array([[0.0, 2.0], [3.0, 0.0]]))
        >>> m.index_y, m.cosine
        (array([1, 0]), array([1., 1.]))
    """
    U_x, U_y = _np(U_x, "U_x", 2), _np(U_y, "U_y", 2)
    if U_x.shape[1] != U_y.shape[1]:
        raise ValueError(f"U_x {U_x.shape} and U_y {U_y.shape} must share the feature dimension d.")
    cos = _unit_rows(U_x) @ _unit_rows(U_y).T
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return ConceptMatching(index_x=rows, index_y=cols, cosine=cos[rows, cols])


@dataclass(frozen=True, eq=False, kw_only=True)
class ShiftImprovement:
    """How much closer shifted concepts are to the fine-tuned model's concepts than the originals.

    Attributes:
        matching: pairs ``(k, j)`` of concept ``k`` of a (and its shifted version) with concept ``j`` of b.
        distance_gain: ``||u^b_j - u^a_k|| - ||u^b_j - u^s_k||`` per pair [P]; > 0 means the shift helps.
        cosine_gain: ``cos(u^b_j, u^s_k) - cos(u^b_j, u^a_k)`` per pair [P].
        mean_distance_gain: mean of ``distance_gain``.
        mean_cosine_gain: mean of ``cosine_gain``.
    """

    matching: ConceptMatching
    distance_gain: Float[np.ndarray, " p"]
    cosine_gain: Float[np.ndarray, " p"]
    mean_distance_gain: float
    mean_cosine_gain: float


def _cos_rows(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return (_unit_rows(X) * _unit_rows(Y)).sum(axis=1)


def shift_improvement(
    U_a: Float[Any, "k d"],
    U_s: Float[Any, "k d"],
    U_b: Float[Any, "kb d"],
    match_on: Literal["shifted", "original"] = "shifted",
) -> ShiftImprovement:
    """Compare original ``U^a`` and shifted ``U^s`` concepts against ``U^b`` after Hungarian matching.

    ``U_s[k]`` is the shifted version of ``U_a[k]``. Each concept ``k`` is paired with one concept of b by
    matching ``U_s`` (default) or ``U_a`` (``match_on="original"``) to ``U_b`` on cosine; the same pairs are
    then used for both the original and the shifted concept.

    Examples:
        >>> r = shift_improvement(np.array([[1.0, 0]]), np.array([[1.0, 1]]), np.array([[1.0, 1.2]]))
        >>> bool(r.mean_distance_gain > 0 and r.mean_cosine_gain > 0)
        True
    """
    U_a, U_s, U_b = _np(U_a, "U_a", 2), _np(U_s, "U_s", 2), _np(U_b, "U_b", 2)
    if U_a.shape != U_s.shape or U_a.shape[1] != U_b.shape[1]:
        raise ValueError(
            f"Need U_a and U_s of equal shape [K, d] and U_b [K_b, d]; got {U_a.shape}, {U_s.shape}, "
            f"{U_b.shape}."
        )
    if match_on not in ("shifted", "original"):
        raise ValueError(f"match_on must be 'shifted' or 'original', got {match_on!r}.")
    m = match_concepts(U_s if match_on == "shifted" else U_a, U_b)
    a, s, b = U_a[m.index_x], U_s[m.index_x], U_b[m.index_y]
    dist = np.linalg.norm(b - a, axis=1) - np.linalg.norm(b - s, axis=1)
    cosg = _cos_rows(b, s) - _cos_rows(b, a)
    return ShiftImprovement(
        matching=m,
        distance_gain=dist,
        cosine_gain=cosg,
        mean_distance_gain=float(dist.mean()),
        mean_cosine_gain=float(cosg.mean()),
    )


@dataclass(frozen=True, eq=False, kw_only=True)
class ShiftResult:
    """Everything :func:`analyze_shift` computes (numpy arrays; ``K`` concepts of model a, ``d`` features).

    Attributes:
        concepts_a: ``U^a`` [K, d]; activations_a: ``V^a`` [n, K]; assignment: strongest concept [n].
        shift_vectors: ``D`` [K, d]; counts: samples per concept [K].
        consistency: per-concept shift consistency [K] (NaN below 2 samples); mean_consistency: its nanmean.
        shifted: ``U^s = U^a + alpha D`` [K, d]; alpha, reduce: the settings used.
        concepts_b: ``U^b`` [K_b, d] or None; improvement: :class:`ShiftImprovement` or None (both need
            ``decomposer_b``).
    """

    concepts_a: Float[np.ndarray, "k d"]
    activations_a: Float[np.ndarray, "n k"]
    assignment: Int[np.ndarray, " n"]
    shift_vectors: Float[np.ndarray, "k d"]
    counts: Int[np.ndarray, " k"]
    consistency: Float[np.ndarray, " k"]
    mean_consistency: float
    shifted: Float[np.ndarray, "k d"]
    alpha: float
    reduce: str
    concepts_b: Float[np.ndarray, "kb d"] | None = None
    improvement: ShiftImprovement | None = None
    baselines: dict[str, dict[str, float]] | None = None

    def summary(self) -> dict[str, Any]:
        """The headline numbers as plain Python values (what ``hooked-mllm shift`` writes to JSON)."""
        imp = self.improvement
        return {
            "mean_consistency": self.mean_consistency,
            "counts": self.counts.tolist(),
            "consistency": [None if np.isnan(c) else float(c) for c in self.consistency],
            "mean_distance_gain": imp.mean_distance_gain if imp else None,
            "mean_cosine_gain": imp.mean_cosine_gain if imp else None,
            "matching": None
            if imp is None
            else [
                [int(x), int(y), float(c)]
                for x, y, c in zip(imp.matching.index_x, imp.matching.index_y, imp.matching.cosine)
            ],
            "baselines": self.baselines,
        }

    def _repr_html_(self) -> str:
        from ..viz.display import shift_html

        return shift_html(self)


def align_ids(
    ids_a: Sequence[str], ids_b: Sequence[str]
) -> tuple[Int[np.ndarray, " m"], Int[np.ndarray, " m"]]:
    """Row indices ``(ia, ib)`` of the ids present in both lists, in the order of ``ids_a``; O(n).

    Examples:
        >>> align_ids(["x", "y", "z"], ["z", "x"])
        (array([0, 2]), array([1, 0]))
    """
    where_b: dict[str, int] = {}
    for j, i in enumerate(ids_b):
        where_b.setdefault(i, j)
    pairs = [(k, where_b[i]) for k, i in enumerate(ids_a) if i in where_b]
    ia = np.array([p[0] for p in pairs], dtype=np.int64)
    ib = np.array([p[1] for p in pairs], dtype=np.int64)
    return ia, ib


def shift_baselines(
    A: Float[Any, "n d"],
    B: Float[Any, "n d"],
    U_a: Float[Any, "k d"],
    U_b: Float[Any, "kb d"],
    assignment: Int[Any, " n"],
    alpha: float = 1.0,
    reduce: Reduce = "mean",
    match_on: Literal["shifted", "original"] = "shifted",
    n_random: int = 5,
    random_state: Any = 0,
) -> dict[str, dict[str, float]]:
    """What the concept-wise shift must beat to mean something.

    - ``global_mean_shift``: every concept moved by the one mean shift ``mean(B - A)``.
    - ``random_assignment``: concept shift vectors computed after shuffling which sample belongs to which
      concept (same concept sizes), averaged over ``n_random`` shuffles.

    Each gives ``mean_distance_gain`` and ``mean_cosine_gain`` as in :func:`shift_improvement`.

    Examples:
        >>> A = np.repeat(np.eye(2) * 10, 5, axis=0); B = A + np.repeat([[1.0, 0], [0, 2.0]], 5, axis=0)
        >>> U_a, U_b = np.eye(2) * 10, np.eye(2) * 10 + [[1, 0], [0, 2]]
        >>> sorted(shift_baselines(A, B, U_a, U_b, np.repeat([0, 1], 5)))
        ['global_mean_shift', 'random_assignment']
    """
    A, B = _pair(A, B)
    U_a, U_b = _np(U_a, "U_a", 2), _np(U_b, "U_b", 2)
    a, k = _check_assignment(assignment, A.shape[0], U_a.shape[0])
    glob = shift_improvement(U_a, U_a + alpha * (B - A).mean(axis=0), U_b, match_on)
    rng = np.random.default_rng(random_state)
    dist, cos = [], []
    for _ in range(n_random):
        D, _ = concept_shift_vectors(A, B, rng.permutation(a), k, reduce=reduce)
        r = shift_improvement(U_a, shifted_concepts(U_a, D, alpha), U_b, match_on)
        dist.append(r.mean_distance_gain)
        cos.append(r.mean_cosine_gain)
    return {
        "global_mean_shift": {
            "mean_distance_gain": glob.mean_distance_gain,
            "mean_cosine_gain": glob.mean_cosine_gain,
        },
        "random_assignment": {
            "mean_distance_gain": float(np.mean(dist)),
            "mean_cosine_gain": float(np.mean(cos)),
        },
    }


def _fitted_on(decomposer: Any, X: np.ndarray) -> Any:
    """``decomposer`` itself if already fitted, else a fitted clone (the caller's object is not modified)."""
    try:
        check_is_fitted(decomposer)
        return decomposer
    except NotFittedError:
        return clone(decomposer).fit(X)


def analyze_shift(
    A: Float[Any, "n d"],
    B: Float[Any, "n d"],
    decomposer_a: Any,
    decomposer_b: Any | None = None,
    alpha: float = 1.0,
    reduce: Reduce = "mean",
    match_on: Literal["shifted", "original"] = "shifted",
    baselines: bool = True,
    random_state: Any = 0,
) -> ShiftResult:
    """Run the concept-shift analysis of arXiv 2501.03012 on features ``A`` (model a) and ``B`` (model b).

    ``decomposer_a`` (and ``decomposer_b``) may be fitted already (used as is) or unfitted (a clone is fitted
    on ``A`` (``B``)). Without ``decomposer_b`` the result has no
    ``concepts_b``/``improvement``/``baselines``. ``match_on`` is passed to :func:`shift_improvement`;
    ``baselines`` adds :func:`shift_baselines` (the one global mean shift and a random concept assignment,
    seeded by ``random_state``) for comparison.

    Examples:
        >>> from hooked_mllm.concepts.decompose import KMeansConcepts
        >>> A = np.repeat(np.eye(2) * 10, 5, axis=0); B = A + np.repeat([[1.0, 0], [0, 2.0]], 5, axis=0)
        >>> r = analyze_shift(A, B, KMeansConcepts(2, random_state=0), KMeansConcepts(2, random_state=0))
        >>> round(r.mean_consistency, 6), r.improvement.mean_distance_gain > 0
        (1.0, True)
    """
    A, B = _pair(A, B)
    dec_a = _fitted_on(decomposer_a, A)
    U_a = np.asarray(dec_a.components_, dtype=np.float64)
    V_a = np.asarray(dec_a.transform(A), dtype=np.float64)
    assignment = assign_concepts(V_a)
    D, counts = concept_shift_vectors(A, B, assignment, U_a.shape[0], reduce=reduce)
    consistency = shift_consistency(A, B, assignment, U_a.shape[0])
    mean_consistency = float(np.nanmean(consistency)) if np.isfinite(consistency).any() else float("nan")
    U_s = shifted_concepts(U_a, D, alpha)
    U_b = improvement = base = None
    if decomposer_b is not None:
        U_b = np.asarray(_fitted_on(decomposer_b, B).components_, dtype=np.float64)
        improvement = shift_improvement(U_a, U_s, U_b, match_on)
        if baselines:
            base = shift_baselines(
                A, B, U_a, U_b, assignment, alpha, reduce, match_on, random_state=random_state
            )
    return ShiftResult(
        concepts_a=U_a,
        activations_a=V_a,
        assignment=assignment,
        shift_vectors=D,
        counts=counts,
        consistency=consistency,
        mean_consistency=mean_consistency,
        shifted=U_s,
        alpha=float(alpha),
        reduce=reduce,
        concepts_b=U_b,
        improvement=improvement,
        baselines=base,
    )
