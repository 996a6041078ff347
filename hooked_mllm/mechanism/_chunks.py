"""The chunked loops of the mechanism tools, sized by :mod:`hooked_mllm.budget`.

Each loop computes exactly what the one-shot computation did, a slice at a time: the same
per-vector operations (a head's contribution at a position, one vector's readout through the LM
head), written into a result allocated once, so any budget gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import budget as _budget
from ..lens import logit_lens
from .capture import MechanismRun


def _position_list(run: MechanismRun, positions: Any) -> list[int]:
    seq = run.v.shape[2]
    if positions is None:
        return list(range(seq))
    index = torch.as_tensor(positions)
    if index.dim() != 1 or index.dtype in (torch.bool, torch.float32, torch.float64):
        raise ValueError(
            f"positions must be a list (or 1-d integer tensor) of sequence indices, got {positions!r}."
        )
    out = index.tolist()
    bad = [p for p in out if not -seq <= p < seq]
    if bad:
        raise ValueError(f"positions {bad} lie outside the sequence of {seq} positions.")
    return [p % seq for p in out]


def contributions(
    run: MechanismRun, layers: Sequence[int], positions: Any, max_memory: Any
) -> Float[Tensor, "layer head batch pos d_model"]:
    """``head_contributions``' result, computed a chunk of heads x positions at a time."""
    pos = _position_list(run, positions)
    n_rows, seq = run.v.shape[1], run.v.shape[2]
    plan = _budget.plan_contributions(
        run.model, len(layers), n_rows, len(pos), seq, _budget.resolve_budget(max_memory)
    )
    n_heads, d_model = run.n_heads, run.resid_pre.shape[-1]
    out = torch.empty(len(layers), n_heads, n_rows, len(pos), d_model, device=run.v.device)
    step_h, step_p = _budget.split(n_heads, len(pos), plan.chunk)
    for i, layer in enumerate(layers):
        for h0 in range(0, n_heads, step_h):
            heads = list(range(h0, min(h0 + step_h, n_heads)))
            for p0 in range(0, len(pos), step_p):
                part = run.contributions(layer, heads=heads, positions=pos[p0 : p0 + step_p])
                out[i, h0 : h0 + len(heads), :, p0 : p0 + step_p] = part.transpose(0, 1)
                del part
    return out


def location_scores(
    run: MechanismRun, row: int, heads: Sequence[tuple[int, int]], positions: Sequence[int], max_memory: Any
) -> Float[Tensor, "pair pos"]:
    """``lp(x_l + c[l, h, j]) - lp(x_l)`` per chosen head (in the order given) and position of one row."""
    seq = run.v.shape[2]
    plan = _budget.plan_locations(
        run.model, len(heads), len(positions), run.v.shape[1], seq, _budget.resolve_budget(max_memory)
    )
    out = torch.empty(len(heads), len(positions), device=run.v.device)
    by_layer: dict[int, list[int]] = {}
    for i, (l, _) in enumerate(heads):
        by_layer.setdefault(l, []).append(i)
    pos = list(positions)
    for l, where in by_layer.items():
        base = run.resid_pre[l, row]
        base_lp = run.log_prob(base, row, chunk_rows=1)
        step_h, step_p = _budget.split(len(where), len(pos), plan.chunk)
        for h0 in range(0, len(where), step_h):
            slots = where[h0 : h0 + step_h]
            hs = [heads[i][1] for i in slots]
            for p0 in range(0, len(pos), step_p):
                c = run.contributions(l, heads=hs, positions=pos[p0 : p0 + step_p], rows=[row])[0]
                lp = run.log_prob(base + c, row, chunk_rows=plan.chunk)
                out[slots, p0 : p0 + step_p] = lp - base_lp
                del c, lp
    return out


def lens_chunks(model: Any, resid: Float[Tensor, "pos d_model"], ref: Tensor | None, chunk: int) -> Any:
    """Yield ``(start, probs)``: the logit lens' float32 probabilities of ``chunk`` positions at a time."""
    for p0 in range(0, resid.shape[0], chunk):
        part = resid[p0 : p0 + chunk]
        scale = None if ref is None else ref[p0 : p0 + chunk]
        yield p0, logit_lens(model, part, scale_from=scale).float().softmax(-1)
