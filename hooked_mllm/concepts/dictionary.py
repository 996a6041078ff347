"""Sparse non-negative dictionary learning as a concept decomposer: the papers' objective, fast.

See :class:`SparseDictionary`; the numerics are in :mod:`hooked_mllm.concepts._sparse`.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from hooked_mllm.concepts import _sparse
from hooked_mllm.concepts._base import DTYPES, ConceptDecomposer, as_tensor, seed_from


class SparseDictionary(ConceptDecomposer):
    """The papers' objective, solved fast: sparse non-negative codes over unit-norm atoms.

    Minimises ``0.5 ||Z - V U||_F^2 + alpha ||V||_1`` with ``V >= 0`` and ``||u_k|| <= 1`` (the objective of
    the CoX-LMM reference code's ``DictionaryLearning(positive_code=True, alpha=1)``; use this class to
    reproduce the paper) with our own torch solver (:mod:`hooked_mllm.concepts._sparse`): coordinate descent
    on Gram matrices for the codes, block coordinate descent for the atoms. ``batch_size`` switches to the
    online (minibatch) algorithm, which holds only one block of rows and ``O(k d)`` statistics, and
    :meth:`partial_fit` streams blocks one at a time (e.g. ``Features.iter_rows``).

    Args:
        n_components: number of concepts ``K`` (the seed's default is 20).
        alpha: the L1 weight on the codes (the seed's ``alpha=1``).
        max_iter: full-batch alternating iterations, or passes over the data with ``batch_size``.
        tol: full batch: stop when the objective's relative decrease is below ``tol``.
        batch_size: rows per minibatch (None: full batch).
        transform_max_iter: coordinate-descent sweeps of ``transform``.
        random_state: seeds the atom initialisation (k-means++ on row directions) and block order.
        device: torch device (``"cuda"`` for a GPU; default: the input's).
        dtype: ``"float32"`` or ``"float64"`` (default: the input's, so float32 features are computed in
            float32).

    Fitted attributes: ``components_ [K, d]`` (rows of norm <= 1, in practice 1), ``n_iter_``,
    ``objective_history_`` (full batch), ``n_features_in_``.

    Examples:
        >>> Z = np.abs(np.random.default_rng(0).normal(size=(60, 8)))
        >>> model = SparseDictionary(n_components=3, alpha=0.1, random_state=0).fit(Z)
        >>> bool((model.transform(Z) >= 0).all()), model.components_.shape
        (True, (3, 8))
    """

    _needs_n_samples_ge_k = False

    def __init__(
        self,  # parameters typed Any by scikit-learn's rules: see hooked_mllm.concepts.decompose
        n_components: Any = 20,
        *,
        alpha: Any = 1.0,
        max_iter: Any = 1000,
        tol: Any = 1e-8,
        batch_size: Any = None,
        transform_max_iter: Any = 200,
        random_state: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.transform_max_iter = transform_max_iter
        self.random_state = random_state
        self.device = device
        self.dtype = dtype

    def _kw(self, X: np.ndarray | None = None) -> dict[str, Any]:
        if self.dtype is None:
            name = "float32" if X is not None and X.dtype == np.float32 else "float64"
            if X is None and hasattr(self, "components_"):
                name = str(self.components_.dtype)
        else:
            if self.dtype not in DTYPES:
                raise ValueError(
                    f"SparseDictionary: dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}."
                )
            name = self.dtype
        if not (isinstance(self.max_iter, numbers.Integral) and int(self.max_iter) >= 1):
            raise ValueError(f"SparseDictionary: max_iter must be an int >= 1, got {self.max_iter!r}.")
        if not (isinstance(self.alpha, numbers.Real) and float(self.alpha) >= 0):
            raise ValueError(f"SparseDictionary: alpha must be a number >= 0, got {self.alpha!r}.")
        return {"dtype": DTYPES[name], "device": torch.device(self.device or "cpu")}

    def _fit(self, X: np.ndarray) -> None:
        kw = self._kw(X)
        seed = seed_from(self.random_state)
        generator = torch.Generator().manual_seed(seed)
        k = int(self.n_components)
        if self.batch_size is None or self.batch_size >= len(X):
            Zt = as_tensor(X, **kw)
            _, U, history = _sparse.fit_sparse(
                Zt,
                _sparse.init_atoms(Zt, k, generator),
                float(self.alpha),
                int(self.max_iter),
                float(self.tol),
            )
            self.objective_history_ = history
            self.n_iter_ = len(history)
            self.components_ = U.cpu().numpy()
            return
        rng = np.random.default_rng(seed)
        # Warm start: a full-batch fit on a random subsample of at most 10,000 rows, then online passes.
        sample = np.sort(rng.choice(len(X), size=min(len(X), 10_000), replace=False))
        self._partial(as_tensor(X[sample], **kw), generator)
        for _ in range(int(self.max_iter)):
            for start in rng.permutation(np.arange(0, len(X), int(self.batch_size))):
                self._partial(as_tensor(X[start : start + int(self.batch_size)], **kw), generator)
        self.n_iter_ = int(self.max_iter)

    _state: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None  # online fit: U, A, C, rows seen

    def _partial(self, Zt: torch.Tensor, generator: torch.Generator) -> None:
        state = getattr(self, "_state", None)
        if state is None:  # the first block: a short full-batch fit starts the atoms
            k = int(self.n_components)
            _, U, _ = _sparse.fit_sparse(
                Zt, _sparse.init_atoms(Zt, k, generator), float(self.alpha), 50, float(self.tol)
            )
            state = self._state = (U, Zt.new_zeros(k, k), Zt.new_zeros(k, Zt.shape[1]), 0)
        U, A, C, seen = state
        U, A, C = _sparse.online_step(Zt, U, A, C, float(self.alpha), seen, forget=1.0)
        self._state = (U, A, C, seen + len(Zt))
        self.components_ = U.cpu().numpy()

    def fit(self, Z: Any, y: Any = None) -> SparseDictionary:
        self._state = None
        return super().fit(Z, y)

    def partial_fit(self, Z: Any, y: Any = None) -> SparseDictionary:
        """Update the atoms with one block of rows ``Z [m, d]`` (online dictionary learning); returns
        ``self``.

        Examples:
            >>> dec = SparseDictionary(3, alpha=0.1, random_state=0)
            >>> for block in np.array_split(np.abs(np.random.default_rng(0).normal(size=(90, 8))), 3):
            ...     dec = dec.partial_fit(block)
            >>> dec.components_.shape
            (3, 8)
        """
        first = getattr(self, "_state", None) is None
        X = self._validate(Z, reset=first)
        generator = torch.Generator().manual_seed(seed_from(self.random_state))
        self._partial(as_tensor(X, **self._kw(X)), generator)
        return self

    def _transform(self, X: np.ndarray) -> np.ndarray:
        kw = self._kw(X)
        U = as_tensor(self.components_, **kw)
        G = U @ U.T
        out = []
        for start in range(0, max(len(X), 1), 16384):
            B = as_tensor(X[start : start + 16384], **kw) @ U.T
            out.append(
                _sparse.sparse_codes(
                    B,
                    G,
                    float(self.alpha),
                    max_sweeps=int(self.transform_max_iter),
                    tol=1e-5 if kw["dtype"] == torch.float32 else 1e-10,
                )
                .cpu()
                .numpy()
            )
        return np.concatenate(out) if out else np.zeros((0, len(U)))
