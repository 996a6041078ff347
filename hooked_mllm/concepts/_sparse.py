"""Sparse non-negative dictionary learning in torch: the objective of the CoX-LMM reference code, fast.

Objective (scikit-learn's ``DictionaryLearning(positive_code=True)``, which the reference code uses)::

    min_{V >= 0, ||u_k|| <= 1}  0.5 * ||Z - V U||_F^2 + alpha * ||V||_1

with ``Z [n, d]``, codes ``V [n, k]`` and atoms ``U [k, d]``. Codes are solved by coordinate descent
on the Gram form (``G = U U^T``, ``B = Z U^T``), vectorised over rows; atoms by block coordinate descent
on ``A = V^T V`` and ``C = V^T Z`` (Mairal et al. 2010), each atom projected onto the unit ball. The
full-batch fit alternates the two; :func:`online_step` is the minibatch / streaming variant that only
keeps ``A`` and ``C`` (O(k d) memory), so data that does not fit in memory can be streamed through.

Used by :class:`hooked_mllm.concepts.decompose.SparseDictionary`.

Examples:
    >>> Z = torch.rand(50, 8, dtype=torch.float64)
    >>> V, U, hist = fit_sparse(Z, init_atoms(Z, 3, torch.Generator().manual_seed(0)), 0.1, 100, 1e-6)
    >>> bool((V >= 0).all()), bool((U.norm(dim=1) <= 1 + 1e-9).all())
    (True, True)
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

_EPS = 1e-12


def init_atoms(Z: Float[Tensor, "n d"], k: int, generator: torch.Generator) -> Float[Tensor, "k d"]:
    """k-means++ seeding on the row directions: ``k`` spread-out data rows, scaled to unit norm.

    Seeds from at most 10,000 rows drawn at random, so that no copy of a large ``Z`` is made.
    """
    if Z.shape[0] > 10_000:
        Z = Z[torch.randperm(Z.shape[0], generator=generator)[:10_000].to(Z.device)]
    unit = Z / Z.norm(dim=1, keepdim=True).clamp_min(_EPS)
    n = unit.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    dist = (1 - (unit @ unit[first]).abs()).clamp_min(0)
    for _ in range(1, k):
        total = float(dist.sum())
        if total <= _EPS:
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial((dist / total).cpu(), 1, generator=generator))
        chosen.append(idx)
        dist = torch.minimum(dist, (1 - (unit @ unit[idx]).abs()).clamp_min(0))
    return unit[chosen].clone()


def sparse_codes(
    B: Float[Tensor, "n k"],
    G: Float[Tensor, "k k"],
    alpha: float,
    V: Float[Tensor, "n k"] | None = None,
    max_sweeps: int = 50,
    tol: float = 1e-6,
) -> Float[Tensor, "n k"]:
    """Non-negative lasso codes ``argmin_{V>=0} 0.5||Z - V U||^2 + alpha |V|_1`` from ``B = Z U^T``,
    ``G = U U^T``.

    Cyclic coordinate descent over the ``k`` coordinates, all rows at once, warm-started from ``V``;
    stops when a sweep moves no code by more than ``tol`` times the largest code.
    """
    V = B.new_zeros(B.shape) if V is None else V.clone()
    diag = G.diagonal().clamp_min(_EPS)
    for _ in range(max_sweeps):
        change = B.new_zeros(())
        for j in range(G.shape[0]):
            old = V[:, j].clone()
            num = B[:, j] - V @ G[:, j] + old * G[j, j]
            V[:, j] = ((num - alpha) / diag[j]).clamp_min(0)
            change = torch.maximum(change, (V[:, j] - old).abs().max())
        if float(change) <= tol * max(float(V.abs().max()), _EPS):
            break
    return V


def update_atoms(
    U: Float[Tensor, "k d"],
    A: Float[Tensor, "k k"],
    C: Float[Tensor, "k d"],
    spare: Float[Tensor, "m d"] | None = None,
) -> Float[Tensor, "k d"]:
    """One block-coordinate sweep over the atoms, each projected onto the unit ball.

    An atom no code uses (``A_jj == 0``) is replaced by a row of ``spare`` (unit-normalised), if given.
    """
    U = U.clone()
    for j in range(U.shape[0]):
        if float(A[j, j]) <= _EPS:
            if spare is not None and len(spare):
                row = spare[j % len(spare)]
                U[j] = row / row.norm().clamp_min(_EPS)
            continue
        u = U[j] + (C[j] - A[j] @ U) / A[j, j]
        U[j] = u / u.norm().clamp_min(1.0)
    return U


def objective(z_sq: Tensor, V: Tensor, B: Tensor, G: Tensor, alpha: float) -> float:
    """``0.5 ||Z - V U||^2 + alpha |V|_1`` from Gram quantities (``B = Z U^T``, ``G = U U^T``)."""
    sq = z_sq - 2 * (V * B).sum() + ((V.T @ V) * G).sum()
    return float(0.5 * sq.clamp_min(0) + alpha * V.sum())


def fit_sparse(
    Z: Float[Tensor, "n d"],
    U: Float[Tensor, "k d"],
    alpha: float,
    max_iter: int,
    tol: float,
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "k d"], list[float]]:
    """Full-batch alternating minimisation from atoms ``U``; returns codes, atoms, objective history."""
    norms = torch.linalg.vector_norm(Z, dim=1)  # no [n, d] temporaries: Z may be most of the memory
    z_sq = (norms * norms).sum()
    spare = Z[norms.argsort(descending=True)[: U.shape[0]]]  # rows that restart an atom no code uses
    V = None
    history: list[float] = []
    G, B = U @ U.T, Z @ U.T
    for _ in range(max_iter):
        V = sparse_codes(B, G, alpha, V, max_sweeps=10)
        A, C = V.T @ V, V.T @ Z
        U = update_atoms(U, A, C, spare=spare)
        G, B = U @ U.T, Z @ U.T  # for the objective now and the codes next iteration: two passes over Z
        value = objective(z_sq, V, B, G, alpha)
        if history and history[-1] - value <= tol * max(abs(history[-1]), _EPS):
            history.append(value)
            break
        history.append(value)
    assert V is not None
    return V, U, history


def online_step(
    Z: Float[Tensor, "m d"],
    U: Float[Tensor, "k d"],
    A: Float[Tensor, "k k"],
    C: Float[Tensor, "k d"],
    alpha: float,
    seen: int,
    forget: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One minibatch of online dictionary learning: code the block, fold it into ``A``/``C``, update atoms.

    ``A`` and ``C`` are running sums scaled by ``beta = (1 - m / (seen + m)) ** forget``-style
    forgetting so that early, poorly coded blocks fade (``forget=0`` keeps plain sums).
    """
    m = Z.shape[0]
    V = sparse_codes(Z @ U.T, U @ U.T, alpha, max_sweeps=20)
    beta = (seen / (seen + m)) ** forget if seen else 0.0
    A = beta * A + V.T @ V
    C = beta * C + V.T @ Z
    U = update_atoms(U, A, C, spare=Z)
    return U, A, C
