"""The shared base of the concept decomposers (scikit-learn estimator rules, numpy/torch inputs).

Used by :mod:`hooked_mllm.concepts.decompose` (the registry and most methods) and
:mod:`hooked_mllm.concepts.dictionary` (the sparse dictionary). Subclass :class:`ConceptDecomposer` to add a
method; see its docstring.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

# Inputs of fit/transform/inverse_transform: numpy arrays or torch tensors (any device), or anything
# ``sklearn.utils.check_array`` accepts (lists, DataFrames, integer arrays). ``validate_data`` checks the
# shape, so the annotation below documents it without rejecting sklearn's duck-typed inputs at run time.
ArrayLike = Any
DTYPES = {"float64": torch.float64, "float32": torch.float32}
TRANSFORM_TOL = {"float64": 1e-10, "float32": 1e-5}


def to_host(X: ArrayLike) -> Any:
    """Turn a torch tensor (any device, any float dtype) into a numpy array; leave anything else alone."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
        if not X.dtype.is_floating_point or X.dtype in (torch.bfloat16, torch.float16):
            X = X.to(torch.float32)
        return X.numpy()
    return X


def as_tensor(X: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Copy-free where possible; read-only arrays (e.g. memmaps) are copied because torch cannot wrap them."""
    if not X.flags.writeable:
        X = X.copy()
    return torch.as_tensor(X, dtype=dtype, device=device)


def seed_from(random_state: Any) -> int:
    """Draw an int seed from a sklearn-style ``random_state`` (None, int or ``np.random.RandomState``)."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class ConceptDecomposer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base class of the concept decomposers: shared validation, fit, transform and inverse_transform.

    To add a method, subclass it, store the constructor arguments unchanged in ``__init__`` (scikit-learn
    rule), and implement ``_fit(X)`` (set ``components_ [K, d]`` and any other fitted ``*_`` attributes) and
    ``_transform(X) -> V [n, K]``; ``X`` arrives as a validated float numpy array [n, d]. The class flags
    ``_needs_n_samples_ge_k`` / ``_needs_n_features_ge_k`` say which limits on ``n_components`` apply.
    Register it in ``DECOMPOSERS`` to make it available through :func:`make_decomposer`.
    """

    _needs_n_samples_ge_k = True
    _needs_n_features_ge_k = False

    n_components: int

    def _check_n_components(self, X: np.ndarray) -> None:
        name, k = type(self).__name__, self.n_components
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"{name}: n_components must be a positive int, got {k!r}.")
        n, d = X.shape
        if self._needs_n_samples_ge_k and n < k:
            raise ValueError(
                f"{name} needs at least n_components samples, got n_samples={n} < n_components={k}; "
                "pass more rows of Z [n_samples, d_model] or lower n_components."
            )
        if self._needs_n_features_ge_k and d < k:
            raise ValueError(
                f"{name} needs n_components <= n_features, got n_features={d} < n_components={k}; "
                "lower n_components."
            )

    def _validate(self, Z: ArrayLike, *, reset: bool) -> np.ndarray:
        X = validate_data(self, to_host(Z), reset=reset, dtype=[np.float64, np.float32])
        if reset:
            self._check_n_components(X)
        return X

    def fit(
        self, Z: Float[np.ndarray, "n d"] | Float[torch.Tensor, "n d"] | ArrayLike, y: Any = None
    ) -> ConceptDecomposer:
        """Learn the concepts ``components_ [n_components, d]`` from ``Z [n, d]``; returns ``self``.

        ``y`` is ignored (present for scikit-learn pipeline compatibility)."""
        X = self._validate(Z, reset=True)
        self._fit(X)
        return self

    def transform(
        self, Z: Float[np.ndarray, "n d"] | Float[torch.Tensor, "n d"] | ArrayLike
    ) -> Float[np.ndarray, "n n_components"]:
        """Concept activations ``V [n, n_components]`` (numpy) of the rows of ``Z [n, d]``."""
        check_is_fitted(self)
        return self._transform(self._validate(Z, reset=False))

    def inverse_transform(
        self, V: Float[np.ndarray, "n k"] | Float[torch.Tensor, "n k"] | ArrayLike
    ) -> Float[np.ndarray, "n d"]:
        """Map activations ``V [n, n_components]`` back to features ``[n, d]`` (default ``V @ components_``,
        plus ``mean_`` where the method centres the data; see each class for exceptions)."""
        check_is_fitted(self)
        V = check_array(to_host(V), dtype=[np.float64, np.float32])
        k = self.components_.shape[0]
        if V.shape[1] != k:
            raise ValueError(
                f"{type(self).__name__}.inverse_transform expects V of shape [n, {k}] (one column per "
                f"concept), got {V.shape}."
            )
        return self._inverse(V)

    def _inverse(self, V: np.ndarray) -> np.ndarray:
        out = V @ self.components_
        mean = getattr(self, "mean_", None)
        return out if mean is None else out + mean

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def _fit(self, X: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError
