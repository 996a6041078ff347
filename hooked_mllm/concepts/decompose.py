"""Concept dictionaries: decompose a feature matrix ``Z [n_samples, d_model]`` into ``Z ~ V U``.

Purpose: the decomposition step of the CoX-LMM pipeline (arXiv 2406.08074) and of the fine-tuning shift
analysis (arXiv 2501.03012). Each decomposer learns concept vectors
``U = components_ [n_components, d_model]`` and maps features to concept activations
``V = transform(Z) [n_samples, n_components]``.

Connections: the features come from the cache/hook machinery of ``hooked_mllm`` (any [n, d] numpy array or
torch tensor works); :mod:`hooked_mllm.concepts.metrics` scores the fitted decomposers and
:mod:`hooked_mllm.concepts.shift` compares concepts across models. The Semi-NMF numerics live in
:mod:`hooked_mllm.concepts._seminmf`.

Every decomposer follows scikit-learn's estimator rules (``__init__`` only stores parameters, ``fit`` returns
``self``, fitted attributes end in ``_``, ``get_params``/``set_params``/``clone`` work) and passes
``sklearn.utils.estimator_checks.check_estimator``. Inputs may be numpy arrays or torch tensors (any device;
they are copied to host memory for validation); ``transform`` and ``inverse_transform`` always return numpy
float arrays. ``fit_transform(Z)`` equals ``fit(Z).transform(Z)``. Constructor parameters are annotated
``Any``: by those rules ``__init__`` stores any value unchanged (``check_estimator`` passes strings, arrays
and lists) and ``fit`` validates it, saying what was expected; the defaults show the types.

Contents:
- :class:`SemiNMF`: Ding, Li & Jordan (2010) multiplicative updates in torch (``device``), k-means init.
- :class:`SparseDictionary`: the papers' objective (sparse non-negative codes, unit-norm atoms, ``alpha``)
  with a fast torch solver, full-batch, minibatch or streaming (``partial_fit``).
- :class:`DictionaryLearningSemiNMF`: the CoX-LMM reference code itself (scikit-learn, slow).
- :class:`KMeansConcepts`, :class:`PCAConcepts`, :class:`NMFConcepts`, :class:`ICAConcepts`,
  :class:`TopNormConcepts`: baselines.
- :class:`ConceptDecomposer`: the shared base class (subclass it to add a method).
- ``DECOMPOSERS`` and :func:`make_decomposer`: name -> class registry.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import NMF, PCA, DictionaryLearning, FastICA

from hooked_mllm.concepts._base import (
    DTYPES,
    TRANSFORM_TOL,
    ArrayLike,
    ConceptDecomposer,
    as_tensor,
    seed_from,
)
from hooked_mllm.concepts._base import to_host as to_host
from hooked_mllm.concepts._seminmf import fit_seminmf, nnls_fista
from hooked_mllm.concepts.dictionary import SparseDictionary

__all__ = [
    "DECOMPOSERS",
    "ConceptDecomposer",
    "SemiNMF",
    "SparseDictionary",
    "DictionaryLearningSemiNMF",
    "KMeansConcepts",
    "PCAConcepts",
    "NMFConcepts",
    "ICAConcepts",
    "TopNormConcepts",
    "make_decomposer",
]


class SemiNMF(ConceptDecomposer):
    """Semi-NMF ``Z ~ V U`` with ``V >= 0`` and ``U`` unconstrained (Ding, Li & Jordan 2010), in torch.

    Fitting alternates the exact least-squares update of ``U`` with the multiplicative update of ``V``
    (positive/negative parts), starting from k-means indicators + 0.2 as in the paper; the error is
    non-increasing over iterations. ``transform`` solves the non-negative least squares problem for ``V``
    with ``U`` fixed (accelerated projected gradient, rows independent).

    Args:
        n_components: number of concepts ``K``.
        max_iter: maximum alternating iterations.
        tol: stop when the error's relative decrease over one iteration is below ``tol``.
        transform_max_iter: iteration cap of the NNLS solver used by ``transform``.
        random_state: seed for the k-means++ initialisation (None, int or ``RandomState``).
        device: torch device for the computation (``"cuda"`` to use a GPU); None means CPU.
        dtype: ``"float64"`` (default, exact monotonicity) or ``"float32"`` (faster on GPU).

    Fitted attributes: ``components_ [K, d]``, ``n_iter_``, ``reconstruction_err_`` (absolute Frobenius norm
    ``||Z - V U||_F`` at the end of fitting, as in sklearn's NMF), ``error_history_`` (that error after each
    iteration), ``n_features_in_``.

    Examples:
        >>> Z = np.abs(np.random.default_rng(0).normal(size=(50, 8)))
        >>> model = SemiNMF(n_components=3, random_state=0).fit(Z)
        >>> model.transform(Z).shape, bool((model.transform(Z) >= 0).all())
        ((50, 3), True)
    """

    def __init__(
        self,
        n_components: Any = 20,
        *,
        max_iter: Any = 500,
        tol: Any = 1e-5,
        transform_max_iter: Any = 1000,
        random_state: Any = None,
        device: Any = None,
        dtype: Any = "float64",
    ) -> None:
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.transform_max_iter = transform_max_iter
        self.random_state = random_state
        self.device = device
        self.dtype = dtype

    def _torch_kwargs(self) -> dict[str, Any]:
        if self.dtype not in DTYPES:
            raise ValueError(f"SemiNMF: dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}.")
        return {"dtype": DTYPES[self.dtype], "device": torch.device(self.device or "cpu")}

    def _fit(self, X: np.ndarray) -> None:
        if not (isinstance(self.max_iter, numbers.Integral) and int(self.max_iter) >= 1):
            raise ValueError(f"SemiNMF: max_iter must be an int >= 1, got {self.max_iter!r}.")
        Zt = as_tensor(X, **self._torch_kwargs())
        generator = torch.Generator().manual_seed(seed_from(self.random_state))
        _, U, history = fit_seminmf(
            Zt, int(self.n_components), int(self.max_iter), float(self.tol), generator
        )
        self.components_ = U.cpu().numpy()
        self.error_history_ = history
        self.reconstruction_err_ = history[-1]
        self.n_iter_ = len(history)

    def _transform(self, X: np.ndarray) -> np.ndarray:
        kw = self._torch_kwargs()
        V = nnls_fista(
            as_tensor(X, **kw),
            as_tensor(self.components_, **kw),
            int(self.transform_max_iter),
            TRANSFORM_TOL[self.dtype],
        )
        return V.cpu().numpy()


class _SklearnWrapper(ConceptDecomposer):
    """Base for decomposers that delegate to a fitted sklearn estimator stored in ``estimator_``."""

    def _make(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit(self, X: np.ndarray) -> None:
        self.estimator_ = self._make().fit(X)
        self.components_ = np.asarray(self.estimator_.components_)
        if hasattr(self.estimator_, "n_iter_"):
            self.n_iter_ = self.estimator_.n_iter_

    def _transform(self, X: np.ndarray) -> np.ndarray:
        # Cast to the dtype seen in fit: sklearn's lasso_cd and NMF reject float32 data on a float64 fit.
        return np.asarray(self.estimator_.transform(X.astype(self.estimator_.components_.dtype, copy=False)))


class DictionaryLearningSemiNMF(_SklearnWrapper):
    """The CoX-LMM reference approximation of Semi-NMF: sparse dictionary learning with non-negative codes.

    Wraps ``sklearn.decomposition.DictionaryLearning(positive_code=True, fit_algorithm="cd",
    transform_algorithm="lasso_cd")`` with the reference code's defaults (``alpha=1``, ``max_iter=5000``).
    ``components_`` are unit-norm dictionary atoms; activations are the non-negative lasso codes.

    Examples:
        >>> Z = np.random.default_rng(0).normal(size=(30, 6))
        >>> DictionaryLearningSemiNMF(n_components=3, max_iter=20, random_state=0).fit(Z).components_.shape
        (3, 6)
    """

    _needs_n_samples_ge_k = False

    def __init__(
        self,
        n_components: Any = 20,
        *,
        alpha: Any = 1.0,
        max_iter: Any = 5000,
        tol: Any = 1e-8,
        transform_max_iter: Any = 1000,
        random_state: Any = None,
    ) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.transform_max_iter = transform_max_iter
        self.random_state = random_state

    def _make(self) -> DictionaryLearning:
        return DictionaryLearning(
            n_components=self.n_components,
            alpha=self.alpha,
            max_iter=self.max_iter,
            tol=self.tol,
            fit_algorithm="cd",
            transform_algorithm="lasso_cd",
            transform_max_iter=self.transform_max_iter,
            positive_code=True,
            random_state=self.random_state,
        )


class KMeansConcepts(_SklearnWrapper):
    """k-means concepts: ``components_`` are the centroids, activation = ``1 / (1 + ||z - c_k||)``.

    ``inverse_transform(V)`` returns the centroid of each row's strongest concept (the hard-assignment
    reconstruction), not ``V @ components_``.

    Examples:
        >>> Z = np.random.default_rng(0).normal(size=(30, 4))
        >>> V = KMeansConcepts(n_components=3, random_state=0).fit_transform(Z)
        >>> V.shape, bool(((V > 0) & (V <= 1)).all())
        ((30, 3), True)
    """

    def __init__(
        self,
        n_components: Any = 20,
        *,
        n_init: Any = "auto",
        max_iter: Any = 300,
        tol: Any = 1e-4,
        random_state: Any = None,
    ) -> None:
        self.n_components = n_components
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _make(self) -> KMeans:
        return KMeans(
            n_clusters=self.n_components,
            n_init=self.n_init,
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=self.random_state,
        )

    def _fit(self, X: np.ndarray) -> None:
        self.estimator_ = self._make().fit(X)
        self.components_ = np.asarray(self.estimator_.cluster_centers_)
        self.n_iter_ = self.estimator_.n_iter_

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.asarray(self.estimator_.transform(X)))

    def _inverse(self, V: np.ndarray) -> np.ndarray:
        return self.components_[V.argmax(axis=1)]


class PCAConcepts(_SklearnWrapper):
    """PCA concepts: orthonormal principal directions; activations are centred projections (signed).

    ``inverse_transform`` adds back ``mean_`` and undoes whitening if ``whiten=True``.

    Examples:
        >>> Z = np.random.default_rng(0).normal(size=(30, 5))
        >>> PCAConcepts(n_components=2).fit(Z).components_.shape
        (2, 5)
    """

    _needs_n_features_ge_k = True

    def __init__(self, n_components: Any = 20, *, whiten: Any = False, random_state: Any = None) -> None:
        self.n_components = n_components
        self.whiten = whiten
        self.random_state = random_state

    def _make(self) -> PCA:
        return PCA(n_components=self.n_components, whiten=self.whiten, random_state=self.random_state)

    def _fit(self, X: np.ndarray) -> None:
        super()._fit(X)
        self.mean_ = self.estimator_.mean_
        self.explained_variance_ratio_ = self.estimator_.explained_variance_ratio_

    def _inverse(self, V: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator_.inverse_transform(V))  # undoes whitening too


class NMFConcepts(_SklearnWrapper):
    """NMF concepts (``sklearn.decomposition.NMF``): both ``V`` and ``U`` non-negative; needs ``Z >= 0``.

    Raises ``ValueError`` on negative input (e.g. raw residual-stream features); use :class:`SemiNMF` there.

    Examples:
        >>> Z = np.abs(np.random.default_rng(0).normal(size=(30, 5)))
        >>> NMFConcepts(n_components=2, random_state=0).fit_transform(Z).shape
        (30, 2)
    """

    _needs_n_samples_ge_k = False

    def __init__(
        self,
        n_components: Any = 20,
        *,
        init: Any = "nndsvda",
        max_iter: Any = 500,
        tol: Any = 1e-4,
        random_state: Any = None,
    ) -> None:
        self.n_components = n_components
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags

    def _validate(self, Z: ArrayLike, *, reset: bool) -> np.ndarray:
        X = super()._validate(Z, reset=reset)
        if X.size and X.min() < 0:
            raise ValueError(
                f"Negative values in data passed to NMFConcepts (min value {X.min():.4g}); NMF needs Z >= 0. "
                "Use SemiNMF (make_decomposer('seminmf')) for signed features such as hidden states."
            )
        return X

    def _make(self) -> NMF:
        return NMF(
            n_components=self.n_components,
            init=self.init,
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=self.random_state,
        )


class ICAConcepts(_SklearnWrapper):
    """Independent components (FastICA). ``components_ [K, d]`` is the *mixing* matrix transposed.

    So ``Z ~ V @ components_ + mean_`` with ``V = transform(Z)`` the independent sources; the unmixing
    matrix is kept as ``unmixing_ [K, d]``.

    Examples:
        >>> Z = np.random.default_rng(0).laplace(size=(60, 4))
        >>> ICAConcepts(n_components=2, random_state=0).fit(Z).components_.shape
        (2, 4)
    """

    _needs_n_features_ge_k = True

    def __init__(
        self,
        n_components: Any = 20,
        *,
        whiten: Any = "unit-variance",
        max_iter: Any = 1000,
        tol: Any = 1e-4,
        random_state: Any = None,
    ) -> None:
        self.n_components = n_components
        self.whiten = whiten
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _make(self) -> FastICA:
        return FastICA(
            n_components=self.n_components,
            whiten=self.whiten,
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=self.random_state,
        )

    def _fit(self, X: np.ndarray) -> None:
        super()._fit(X)
        self.unmixing_ = self.components_
        self.components_ = np.ascontiguousarray(self.estimator_.mixing_.T)
        self.mean_ = self.estimator_.mean_


class TopNormConcepts(ConceptDecomposer):
    """ "Top-norm samples" baseline: the ``n_components`` training rows of largest L2 norm are the concepts.

    With ``normalize=True`` (default) the chosen rows are scaled to unit norm. Activations are
    ``Z @ components_.T`` (``activation="projection"``) or the cosine similarity (``"cosine"``). Ties in norm
    are broken by row order. ``sample_indices_`` records which training rows were chosen.
    ``inverse_transform`` is ``V @ components_``, which is not a least-squares reconstruction.

    Examples:
        >>> Z = np.diag([1.0, 3.0, 2.0])
        >>> TopNormConcepts(n_components=2).fit(Z).sample_indices_
        array([1, 2])
    """

    def __init__(
        self, n_components: Any = 20, *, normalize: Any = True, activation: Any = "projection"
    ) -> None:
        self.n_components = n_components
        self.normalize = normalize
        self.activation = activation

    def _fit(self, X: np.ndarray) -> None:
        if self.activation not in ("projection", "cosine"):
            raise ValueError(
                f"TopNormConcepts: activation must be 'projection' or 'cosine', got {self.activation!r}."
            )
        norms = np.linalg.norm(X, axis=1)
        idx = np.argsort(-norms, kind="stable")[: self.n_components]
        U = X[idx].astype(np.float64)
        if self.normalize:
            U = U / np.maximum(norms[idx], np.finfo(np.float64).tiny)[:, None]
        self.sample_indices_ = idx
        self.components_ = U

    def _transform(self, X: np.ndarray) -> np.ndarray:
        if self.activation == "projection":
            return X @ self.components_.T
        tiny = np.finfo(np.float64).tiny
        Xn = X / np.maximum(np.linalg.norm(X, axis=1), tiny)[:, None]
        Un = self.components_ / np.maximum(np.linalg.norm(self.components_, axis=1), tiny)[:, None]
        return Xn @ Un.T


DECOMPOSERS: dict[str, type[ConceptDecomposer]] = {
    "seminmf": SemiNMF,
    "sparse": SparseDictionary,
    "dictlearn": DictionaryLearningSemiNMF,
    "kmeans": KMeansConcepts,
    "pca": PCAConcepts,
    "nmf": NMFConcepts,
    "ica": ICAConcepts,
    "topnorm": TopNormConcepts,
}


def make_decomposer(name: str, **params: Any) -> ConceptDecomposer:
    """Build a decomposer from its registry name, e.g. ``make_decomposer("seminmf", n_components=10)``.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names).

    Examples:
        >>> make_decomposer("pca", n_components=3)
        PCAConcepts(n_components=3)
    """
    try:
        cls = DECOMPOSERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown decomposer {name!r}; valid names: {', '.join(sorted(DECOMPOSERS))}."
        ) from None
    return cls(**params)
