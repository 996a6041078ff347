"""Torch core of Semi-NMF (Ding, Li & Jordan 2010), kept apart from the estimator wrapper.

Purpose: the numerical routines behind :class:`hooked_mllm.concepts.decompose.SemiNMF`, written in plain torch
so that they run on whatever device the input tensors live on (CPU or GPU).

Connections: only :mod:`hooked_mllm.concepts.decompose` imports this module; it knows nothing of
scikit-learn or of models. Notation follows the rest of ``hooked_mllm.concepts``:
``Z [n, d] ~ V [n, k] @ U [k, d]`` with ``V >= 0`` (activations) and ``U`` unconstrained (concept vectors).
In the paper's notation ``X = Z.T``, ``F = U.T`` and ``G = V``.

Contents:
- ``kmeans_torch``: seeded k-means++ and Lloyd iterations (the paper's initialisation).
- ``update_u``: the exact least-squares update ``U = (V^T V)^{-1} V^T Z``.
- ``update_v``: the multiplicative update with positive and negative parts (paper eq. 11-12).
- ``fit_seminmf``: the alternating loop, returning ``V``, ``U`` and the error history.
- ``nnls_fista``: solve ``min_{V >= 0} ||Z - V U||`` with ``U`` fixed (used by ``transform``), by accelerated
  projected gradient with adaptive restart; rows are solved independently.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

_TINY = 1e-30


def _pos(x: Tensor) -> Tensor:
    return (x.abs() + x) / 2


def _neg(x: Tensor) -> Tensor:
    return (x.abs() - x) / 2


def kmeans_torch(
    Z: Float[Tensor, "n d"], k: int, generator: torch.Generator, n_iter: int = 100
) -> Int[Tensor, " n"]:
    """Cluster the rows of ``Z`` into ``k`` groups with k-means++ seeding and Lloyd iterations.

    Deterministic given ``generator`` (a CPU generator; random draws are made on the CPU and moved to
    ``Z.device``). An empty cluster is re-seeded with the point farthest from its centroid.

    Returns:
        labels [n]: cluster index of every row, in ``[0, k)``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> kmeans_torch(torch.randn(10, 3, dtype=torch.float64), 2, g).shape
        torch.Size([10])
    """
    n = Z.shape[0]
    sq_norms = (Z * Z).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [Z[first]]
    closest = ((Z - Z[first]) ** 2).sum(1)
    for _ in range(1, k):
        weights = closest.clamp_min(0).cpu()
        if float(weights.sum()) <= 0:  # all points coincide with chosen centres
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(weights, 1, generator=generator))
        centers.append(Z[idx])
        closest = torch.minimum(closest, ((Z - Z[idx]) ** 2).sum(1))
    C = torch.stack(centers)
    labels = torch.full((n,), -1, dtype=torch.long, device=Z.device)
    for _ in range(n_iter):
        dist = sq_norms[:, None] - 2 * Z @ C.T + (C * C).sum(1)[None, :]
        new_labels = dist.argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(C).index_add_(0, labels, Z)
        C = sums / counts.clamp_min(1)[:, None].to(Z.dtype)
        for j in torch.nonzero(counts == 0).flatten().tolist():
            far = int(dist.min(1).values.argmax())
            C[j] = Z[far]
    return labels


def update_u(V: Float[Tensor, "n k"], Z: Float[Tensor, "n d"]) -> Float[Tensor, "k d"]:
    """Least-squares concept update ``U = (V^T V)^{-1} V^T Z`` (exact minimiser of ``||Z - V U||`` in ``U``).

    A jitter of ``1e-12 * mean(diag(V^T V))`` keeps the solve defined when ``V`` loses rank.

    Examples:
        >>> V, U = torch.rand(6, 2, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
        >>> torch.allclose(update_u(V, V @ U), U)
        True
    """
    gram = V.T @ V
    jitter = 1e-12 * gram.diagonal().mean().clamp_min(_TINY)
    gram = gram + jitter * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, V.T @ Z)


def update_v(
    V: Float[Tensor, "n k"], ZUt: Float[Tensor, "n k"], UUt: Float[Tensor, "k k"]
) -> Float[Tensor, "n k"]:
    """Multiplicative update of the activations (Ding, Li & Jordan 2010, eq. 11-12, in our notation).

    ``V <- V * sqrt(((Z U^T)^+ + V (U U^T)^-) / ((Z U^T)^- + V (U U^T)^+))``; keeps ``V >= 0`` and never
    increases ``||Z - V U||`` for fixed ``U``.

    Args:
        V: current activations [n, k], non-negative.
        ZUt: ``Z @ U.T`` [n, k].
        UUt: ``U @ U.T`` [k, k].

    Examples:
        >>> V = torch.rand(4, 2, dtype=torch.float64); U = torch.randn(2, 3, dtype=torch.float64)
        >>> bool((update_v(V, (V @ U) @ U.T, U @ U.T) >= 0).all())
        True
    """
    numer = _pos(ZUt) + V @ _neg(UUt)
    denom = _neg(ZUt) + V @ _pos(UUt)
    return V * torch.sqrt(numer / denom.clamp_min(_TINY))


def _sq_error(
    z_sq: Tensor, V: Float[Tensor, "n k"], ZUt: Float[Tensor, "n k"], UUt: Float[Tensor, "k k"]
) -> Tensor:
    """``||Z - V U||_F^2`` from Gram quantities, without forming the [n, d] residual."""
    return (z_sq - 2 * (V * ZUt).sum() + ((V.T @ V) * UUt).sum()).clamp_min(0)


def fit_seminmf(
    Z: Float[Tensor, "n d"], k: int, max_iter: int, tol: float, generator: torch.Generator
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "k d"], list[float]]:
    """Alternate the exact ``U`` step and the multiplicative ``V`` step from a k-means start.

    Initialisation as in the paper: ``V = H + 0.2`` with ``H`` the k-means cluster indicators. Each iteration
    computes ``U`` by least squares, then updates ``V``; the absolute Frobenius error ``||Z - V U||_F`` after
    the iteration is recorded. Both steps are non-increasing in the error, so the history is non-increasing up
    to floating-point rounding. Stops when the relative decrease falls below ``tol`` or after ``max_iter``.

    Returns:
        V [n, k], U [k, d], history (one absolute error per iteration run).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> V, U, hist = fit_seminmf(torch.randn(20, 5, dtype=torch.float64), 3, 50, 1e-6, g)
        >>> V.shape, U.shape
        (torch.Size([20, 3]), torch.Size([3, 5]))
    """
    labels = kmeans_torch(Z, k, generator)
    V = torch.nn.functional.one_hot(labels, k).to(Z.dtype) + 0.2
    z_sq = (Z * Z).sum()
    history: list[float] = []
    U = update_u(V, Z)
    for _ in range(max_iter):
        U = update_u(V, Z)
        ZUt, UUt = Z @ U.T, U @ U.T
        V = update_v(V, ZUt, UUt)
        err = float(_sq_error(z_sq, V, ZUt, UUt).sqrt())
        if history and history[-1] - err <= tol * max(history[-1], _TINY):
            history.append(err)
            break
        history.append(err)
    return V, U, history


def nnls_fista(
    Z: Float[Tensor, "n d"], U: Float[Tensor, "k d"], max_iter: int, tol: float
) -> Float[Tensor, "n k"]:
    """Solve ``min_{V >= 0} ||Z - V U||_F`` for fixed ``U``, row by row, by accelerated projected gradient.

    Works on the Gram form (``G = U U^T``, ``B = Z U^T``) with step ``1 / lambda_max(G)`` and gradient-based
    adaptive restart. Every row follows its own trajectory; a row stops moving once its update is below
    ``tol`` relative to its norm, so results do not depend on which other rows are in the batch.
    Starts from the clipped unconstrained least-squares solution.

    Examples:
        >>> U = torch.randn(2, 4, dtype=torch.float64); V = torch.rand(5, 2, dtype=torch.float64)
        >>> torch.allclose(nnls_fista(V @ U, U, 500, 1e-12), V, atol=1e-6)
        True
    """
    G = U @ U.T
    B = Z @ U.T
    k = G.shape[0]
    eye = torch.eye(k, dtype=G.dtype, device=G.device)
    jitter = 1e-12 * G.diagonal().mean().clamp_min(_TINY)
    V = torch.linalg.solve(G + jitter * eye, B.T).T.clamp_min(0)
    step = 1.0 / float(torch.linalg.eigvalsh(G)[-1].clamp_min(_TINY))
    Y, t = V.clone(), torch.ones(V.shape[0], 1, dtype=V.dtype, device=V.device)
    active = torch.ones(V.shape[0], dtype=torch.bool, device=V.device)
    for _ in range(max_iter):
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        v_old, y, t_a = V[idx], Y[idx], t[idx]
        v_new = (y - step * (y @ G - B[idx])).clamp_min(0)
        t_new = (1 + torch.sqrt(1 + 4 * t_a * t_a)) / 2
        delta = v_new - v_old
        restart = ((y - v_new) * delta).sum(1, keepdim=True) > 0
        y_new = torch.where(restart, v_new, v_new + ((t_a - 1) / t_new) * delta)
        t_new = torch.where(restart, torch.ones_like(t_new), t_new)
        V[idx], Y[idx], t[idx] = v_new, y_new, t_new
        moved = delta.norm(dim=1) > tol * v_new.norm(dim=1).clamp_min(tol)
        active[idx] = moved
    return V
