"""Head scores, layer scores and the important-image-locations map, from one forward and no gradient.

The method of "Understanding Multimodal LLMs: the Mechanistic Interpretability of LLaVA in
VQA" (Yu & Ananiadou 2024), at each row's last position ``T`` with ``y`` the explained token
(the prediction by default), every readout ``lp(z) = log p(y | z)`` taken with the final
norm's scale frozen at the final residual at ``T`` (:meth:`MechanismRun.log_prob`):

* head score ``s[l, h] = lp(x_l + sum_j c[l, h, j]) - lp(x_l)``, ``x_l`` the layer's input;
* layer scores ``lp(x_l + attn_l) - lp(x_l)`` and ``lp(mid_l + mlp_l) - lp(mid_l)``;
* location map ``s_j = lp(x_l + c[l, h, j]) - lp(x_l)`` over the image's positions, for the
  top head (the paper's rule), the top ``k`` heads or any list of heads (their maps summed),
  optionally restricted to some layers.

Contents: :func:`head_contributions`, :func:`head_scores` (:class:`HeadScores`),
:func:`layer_scores` (:class:`LayerScores`), :func:`image_locations`. The per-position
decomposition lives in :mod:`.capture`; explaining single positions in :mod:`.explain`.

Examples:
    >>> from hooked_mllm.mechanism import image_locations
    >>> m = image_locations(model, batch, heads="top")               # doctest: +SKIP
    >>> m.peak(), m.label                                            # doctest: +SKIP
    ((1, 4), 'L2H1')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..model import HookedMLLM
from . import _chunks
from .capture import MechanismRun, capture
from .maps import LocationMap, grid_span, to_map

Heads = Any  # "top" | "all" | int | sequence of (layer, head)


@dataclass(frozen=True, eq=False)
class HeadScores:
    """``s[l, h]`` per row: how much each head's output at ``T`` raises ``log p(y)``.

    Attributes:
        values: ``[batch, layer, head]`` scores (nats).
        target: ``[batch]`` the explained token ids.
        tokens: The explained tokens as strings.
    """

    values: Float[Tensor, "batch layer head"]
    target: Int[Tensor, " batch"]
    tokens: tuple[str, ...]

    def top(self, k: int = 1, row: int = 0, layers: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """The ``k`` best ``(layer, head)`` of one row, best first, among ``layers`` (all)."""
        scores = self.values[row].clone()
        if layers is not None:
            allowed = torch.zeros(scores.shape[0], dtype=torch.bool)
            allowed[layer_list(layers, scores.shape[0], unique=True)] = True
            scores[~allowed] = -torch.inf
        n = int(torch.isfinite(scores).sum())
        if not 1 <= k <= n:
            raise ValueError(f"k must be between 1 and the {n} heads considered, not {k}.")
        flat = scores.flatten().topk(k).indices.tolist()
        return [divmod(i, scores.shape[1]) for i in flat]


@dataclass(frozen=True, eq=False)
class LayerScores:
    """Per row and layer, how much the attention and the MLP output at ``T`` raise ``log p(y)``.

    Attributes:
        attn: ``[batch, layer]`` ``lp(x_l + attn_l) - lp(x_l)``.
        mlp: ``[batch, layer]`` ``lp(mid_l + mlp_l) - lp(mid_l)``.
        target: ``[batch]`` the explained token ids.
    """

    attn: Float[Tensor, "batch layer"]
    mlp: Float[Tensor, "batch layer"]
    target: Int[Tensor, " batch"]


def layer_list(layers: Any, n_layers: int, unique: bool = False) -> list[int]:
    """``layers`` (None: all, an int, a list, a slice; negatives count from the end) as layer indices.

    In the order given with repeats kept; ``unique`` keeps each layer's first mention only (for
    ``layers=`` that restrict a choice rather than list results). Out-of-range layers are refused.

    Examples:
        >>> layer_list([3, -4, 3], 4), layer_list([3, -4, 3], 4, unique=True), layer_list(slice(2, None), 4)
        ([3, 0, 3], [3, 0], [2, 3])
    """
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    given = list(range(n_layers)[layers]) if isinstance(layers, slice) else list(layers)
    bad = [l for l in given if isinstance(l, bool) or not isinstance(l, int) or not -n_layers <= l < n_layers]
    if not given or bad:
        raise ValueError(
            f"layers must name layers in 0..{n_layers - 1} (negatives count from the end), got {layers!r}."
        )
    out = [l % n_layers for l in given]
    return list(dict.fromkeys(out)) if unique else out


def head_contributions(
    model: HookedMLLM,
    inputs: Any,
    *,
    layers: Any = None,
    positions: Any = None,
    target: Any = None,
    max_memory: int | str | None = None,
) -> Float[Tensor, "layer head batch pos d_model"]:
    """The per-head per-source-position contributions to the residual at each row's last position.

    ``c[l, h, b, j] = attn[l, h, T, j] * v[l, j, kv(h)] @ W_O[l, h]`` (mapped through a
    post-attention norm with its scale frozen, where the block has one). Summed over ``j``
    it is head ``h``'s output at ``T``; summed over heads too (plus ``o_proj``'s bias) it is
    ``blocks.{l}.hook_attn_out`` at ``T``.

    Args:
        inputs: A :class:`~hooked_mllm.MultimodalBatch` or a :class:`MechanismRun`.
        layers: Layers to return, in the order given with repeats (an int, a list, a slice; all
            by default).
        positions: Source positions (indices into the sequence; all by default).
        target: Unused for the contributions; fixes the run's target (see :func:`capture`).
        max_memory: Memory budget of the call (bytes or ``"4GB"``; default
            :func:`hooked_mllm.budget.resolve_budget`): the result is filled a chunk of heads x
            positions at a time so that the result and one chunk's copies fit it; same numbers
            at any budget.

    Returns:
        ``[layer, head, batch, pos, d_model]`` float32 (its size is layers x heads x rows x
        positions x d_model x 4 bytes: pick layers and positions on large models;
        :func:`hooked_mllm.estimate_tool` gives it before running).

    Raises:
        hooked_mllm.budget.MemoryBudgetError: When the result alone does not fit ``max_memory``.

    Examples:
        >>> c = head_contributions(model, batch, layers=[2], positions=list(range(5, 41)))  # doctest: +SKIP
    """
    run = capture(model, inputs, target)
    return _chunks.contributions(run, layer_list(layers, run.n_layers), positions, max_memory)


def head_scores(model: HookedMLLM, inputs: Any, *, target: Any = None) -> HeadScores:
    """``s[l, h] = lp(x_l(T) + head_out[l, h]) - lp(x_l(T))`` for every head and row.

    Examples:
        >>> scores = head_scores(model, batch)      # doctest: +SKIP
        >>> scores.top(3)                            # doctest: +SKIP
        [(2, 1), (3, 0), (1, 3)]
    """
    run = capture(model, inputs, target)
    outs = torch.stack([run.head_outputs(l) for l in range(run.n_layers)])  # [layer, batch, head, d]
    rows = []
    for b in range(len(run.batch)):
        base = run.resid_pre[:, b]  # [layer, d]
        rows.append(run.log_prob(base[:, None] + outs[:, b], b) - run.log_prob(base, b)[:, None])
    return HeadScores(torch.stack(rows).cpu(), run.target, tuple(run.target_tokens()))


def layer_scores(model: HookedMLLM, inputs: Any, *, target: Any = None) -> LayerScores:
    """Each layer's attention and MLP score at ``T`` (see :class:`LayerScores`).

    Examples:
        >>> ls = layer_scores(model, batch); ls.attn[0]      # doctest: +SKIP
    """
    run = capture(model, inputs, target)
    attn, mlp = [], []
    for b in range(len(run.batch)):
        pre, a, m = run.resid_pre[:, b], run.attn_out[:, b], run.mlp_out[:, b]
        attn.append(run.log_prob(pre + a, b) - run.log_prob(pre, b))
        mlp.append(run.log_prob(pre + a + m, b) - run.log_prob(pre + a, b))
    return LayerScores(torch.stack(attn).cpu(), torch.stack(mlp).cpu(), run.target)


def _choose_heads(
    run: MechanismRun, scores: HeadScores | None, heads: Heads, layers: Any, row: int
) -> list[tuple[int, int]]:
    allowed = layer_list(layers, run.n_layers, unique=True)
    if isinstance(heads, str) and heads == "all":
        return [(l, h) for l in allowed for h in range(run.n_heads)]
    if isinstance(heads, str) and heads == "top":
        heads = 1
    if isinstance(heads, int) and not isinstance(heads, bool):
        assert scores is not None
        return scores.top(heads, row=row, layers=allowed)
    pairs = (
        isinstance(heads, (list, tuple))
        and heads
        and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in heads)
    )
    if pairs:
        chosen = [(int(l) % run.n_layers, int(h)) for l, h in heads]
        bad = [(l, h) for l, h in chosen if not 0 <= h < run.n_heads]
        if bad:
            raise ValueError(
                f"Head index out of range in {bad}; the model has {run.n_heads} heads per layer."
            )
        outside = [(l, h) for l, h in chosen if l not in allowed]
        if layers is not None and outside:
            raise ValueError(
                f"heads {outside} lie outside layers={layers!r}; with a list of (layer, head) pairs the "
                "pairs name the layers: leave layers= out, or list only heads of those layers."
            )
        return chosen
    raise ValueError(
        f"heads must be 'top', 'all', a number k of top heads, or a list of (layer, head) pairs; "
        f"got {heads!r}."
    )


def head_location_scores(
    run: MechanismRun,
    row: int,
    heads: Sequence[tuple[int, int]],
    positions: Sequence[int],
    max_memory: int | str | None = None,
) -> Float[Tensor, " pos"]:
    """``sum over heads of lp(x_l + c[l, h, j]) - lp(x_l)`` at the given source positions of one row.

    Computed a chunk of heads x positions at a time within ``max_memory`` (see
    :mod:`hooked_mllm.budget`); summed per layer, layers in the order first named.
    """
    per_head = _chunks.location_scores(run, row, heads, positions, max_memory)  # [pair, pos]
    total = torch.zeros(len(positions), device=run.v.device)
    by_layer: dict[int, list[int]] = {}
    for i, (l, _) in enumerate(heads):
        by_layer.setdefault(l, []).append(i)
    for slots in by_layer.values():
        total = total + per_head[slots].sum(0)
    return total


def image_locations(
    model: HookedMLLM,
    inputs: Any,
    *,
    heads: Heads = "top",
    layers: Any = None,
    row: int | None = 0,
    image: int = 0,
    target: Any = None,
    max_memory: int | str | None = None,
) -> LocationMap | list[LocationMap]:
    """Which image locations the chosen heads carry to the answer: the paper's map, one forward.

    ``s_j = lp(x_l(T) + c[l, h, j]) - lp(x_l(T))`` over the positions of one image, laid out
    on its patch grid (raw scores: :meth:`LocationMap.normalized` min-max normalises).

    Args:
        inputs: A :class:`~hooked_mllm.MultimodalBatch` or a :class:`MechanismRun`.
        heads: ``"top"`` (the single best head by :func:`head_scores`, the paper's rule), an
            int ``k`` (the top ``k`` heads), ``"all"`` (every head of ``layers``), or a list of
            ``(layer, head)``; several heads' maps are summed.
        layers: Restrict the heads to these layers (an int, list or slice; all by default); with a
            list of ``(layer, head)`` pairs, a pair outside them is refused.
            On small models the top head is often in layer 0, whose query has not read the
            question yet; later layers, or summing heads, point better (docs/mechanism.md).
        row: The batch row (None: a list with one map per row).
        image: The image within the row.
        target: The explained token (default: the prediction; see :func:`capture`).
        max_memory: Memory budget of the readout (bytes or ``"4GB"``; see
            :mod:`hooked_mllm.budget`): the heads' contributions at the image positions go through
            the LM head a chunk of vectors at a time; same numbers at any budget.

    Raises:
        hooked_mllm.budget.MemoryBudgetError: When not even one vector's readout fits ``max_memory``.

    Examples:
        >>> m = image_locations(model, batch, heads=3, layers=slice(2, None))   # doctest: +SKIP
        >>> m.overlay(image)                                                     # doctest: +SKIP
    """
    run = capture(model, inputs, target)
    needs_scores = not (isinstance(heads, str) and heads == "all") and not isinstance(heads, (list, tuple))
    scores = head_scores(model, run) if needs_scores else None
    rows = range(len(run.batch)) if row is None else [row]
    tokens = run.target_tokens()
    maps = []
    for b in rows:
        span = grid_span(run.batch, b, image)
        chosen = _choose_heads(run, scores, heads, layers, b)
        values = head_location_scores(run, b, chosen, list(span.token_positions), max_memory)
        label = "all heads" if heads == "all" else ", ".join(f"L{l}H{h}" for l, h in chosen)
        if layers is not None:
            label += f" (layers {layer_list(layers, run.n_layers, unique=True)})"
        maps.append(to_map(values.cpu().numpy(), span, image, "heads", label, tokens[b], heads=chosen))
    return maps if row is None else maps[0]
