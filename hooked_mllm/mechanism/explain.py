"""Reading image positions through the vocabulary: explaining chosen positions, and a logit-lens map.

* :func:`explain_positions`: for chosen image positions ``j`` of one row, at one layer, the
  top tokens of the logit lens of the layer's input at ``j``, of the parts its attention and
  its MLP wrote there (read with the final norm's scale frozen at ``j``'s final residual, so
  the parts add up), and of the chosen head's contribution ``c[l, h, j]`` to the last
  position (read with the scale frozen at ``T``), as in the paper's analysis.
* :func:`logit_lens_map`: the logit lens of every cell of one image at every layer's output
  (top token and its probability), plus the probability of chosen tokens per cell as
  :class:`~hooked_mllm.mechanism.LocationMap` s.

Examples:
    >>> ex = explain_positions(model, batch, [(2, 3)], layer=2)     # doctest: +SKIP
    >>> print(ex.table())                                           # doctest: +SKIP
    >>> lm = logit_lens_map(model, batch); lm.tokens[-1]             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import budget as _budget
from ..lens import logit_lens, top_tokens
from ..model import HookedMLLM
from . import _chunks
from .capture import capture, resolve_target
from .maps import LocationMap, grid_span, to_map
from .scores import head_scores, layer_list

PARTS = ("resid_pre", "attn_out", "mlp_out", "head")


_MARKDOWN_SPECIAL = str.maketrans({c: f"&#{ord(c)};" for c in "&<>|`*_[]\\~"} | {"\n": " ", "\r": " "})


def markdown_text(text: Any) -> str:
    """``text`` as literal text in a markdown table cell: a token such as ``<image>``, ``</s>`` or ``a|b``
    shows as itself, never as an HTML tag, a cell break or emphasis.

    Markup characters (``& < > | ` * _ [ ] \\ ~``) become numeric character references, line breaks spaces;
    ``html.unescape`` gives the text back.

    Examples:
        >>> markdown_text("<image>|**")
        '&#60;image&#62;&#124;&#42;&#42;'
    """
    return str(text).translate(_MARKDOWN_SPECIAL)


@dataclass(frozen=True)
class ExplainedPosition:
    """One explained position: its sequence index, grid cell, token, and top tokens per part."""

    position: int
    cell: tuple[int, int] | None
    token: str
    parts: dict[str, list[tuple[str, float]]]


@dataclass(frozen=True)
class PositionExplanation:
    """What :func:`explain_positions` found at one layer (and head) for one row.

    Attributes:
        layer: The layer read.
        head: The head whose contribution to ``T`` is read.
        target: The explained token at ``T``.
        positions: One :class:`ExplainedPosition` per position asked.
    """

    layer: int
    head: int
    target: str
    positions: tuple[ExplainedPosition, ...]

    def table(self, k: int = 3) -> str:
        """A markdown table: one row per position, the top ``k`` tokens of each part (tokens escaped)."""
        head = (
            "| position | cell | token | "
            + " | ".join(
                f"L{self.layer}H{self.head} -> T" if p == "head" else f"L{self.layer} {p}" for p in PARTS
            )
            + " |"
        )
        lines = [head, "|" + "---|" * (3 + len(PARTS))]
        for entry in self.positions:
            cells = [
                ", ".join(f"{markdown_text(t)} {p:.2f}" for t, p in entry.parts[part][:k]) for part in PARTS
            ]
            lines.append(
                f"| {entry.position} | {entry.cell} | {markdown_text(entry.token)} | "
                + " | ".join(cells)
                + " |"
            )
        return "\n".join(lines)


def _single_row(model: HookedMLLM, inputs: Any, row: int) -> Any:
    batch = model.to_batch(inputs.batch if hasattr(inputs, "pattern") else inputs)
    return batch if len(batch) == 1 else batch.row(row)


def explain_positions(
    model: HookedMLLM,
    inputs: Any,
    positions: Sequence[Any],
    *,
    layer: int,
    head: int | None = None,
    row: int = 0,
    image: int = 0,
    k: int = 5,
    target: Any = None,
) -> PositionExplanation:
    """The logit lens of what sits at chosen image positions and of what they send to ``T``.

    Args:
        inputs: A :class:`~hooked_mllm.MultimodalBatch` (row ``row`` is explained).
        positions: Sequence positions (ints) or ``(grid_row, grid_col)`` cells of image ``image``.
        layer: The layer read.
        head: The head whose contribution is read (default: that layer's best head by
            :func:`~hooked_mllm.mechanism.head_scores`).
        k: Top tokens kept per part.
        target: The token at ``T`` (default: the prediction).

    Examples:
        >>> explain_positions(model, batch, [(1, 4), (1, 5)], layer=2).table()   # doctest: +SKIP
    """
    single = _single_row(model, inputs, row)
    layer = layer_list(layer, model.cfg.n_layers)[0]
    span = grid_span(single, 0, image)
    cols = span.grid[1]  # type: ignore[index]
    cells = list(span.token_positions)
    seq: list[int] = []
    for p in positions:
        if isinstance(p, (tuple, list)):
            r, c = int(p[0]), int(p[1])
            seq.append(cells[r * cols + c])
        else:
            seq.append(int(p))
    run = capture(
        model,
        single,
        None if target is None else [target] if not isinstance(target, (list, tuple)) else target,
    )
    if head is None:
        head = head_scores(model, run).top(1, layers=[layer])[0][1]
    last = model.cfg.n_layers - 1
    names = [
        f"blocks.{layer}.hook_resid_pre",
        f"blocks.{layer}.hook_attn_out",
        f"blocks.{layer}.hook_mlp_out",
        f"blocks.{last}.hook_resid_post",
    ]
    _, cache = model.run_with_cache(single, names_filter=names, positions=seq)
    final = cache["resid_post", last][0]
    readouts = {
        "resid_pre": logit_lens(model, cache["resid_pre", layer][0]),
        "attn_out": logit_lens(model, cache["attn_out", layer][0], scale_from=final),
        "mlp_out": logit_lens(model, cache["mlp_out", layer][0], scale_from=final),
        "head": logit_lens(
            model, run.contributions(layer, heads=[head], positions=seq)[0, 0], scale_from=run.final[0]
        ),
    }
    tokens = single.tokens[0] if single.tokens is not None else None
    entries = []
    for i, pos in enumerate(seq):
        cell = divmod(cells.index(pos), cols) if pos in cells else None
        parts = {name: top_tokens(model, logits[i].cpu(), k=k) for name, logits in readouts.items()}
        token = tokens[pos] if tokens else str(pos)
        entries.append(ExplainedPosition(pos, cell, token, parts))
    return PositionExplanation(layer, int(head), run.target_tokens()[0], tuple(entries))


@dataclass(frozen=True, eq=False, kw_only=True)
class LensMap:
    """The logit lens over one image's grid, layer by layer.

    Attributes:
        layers: The layers read (each layer's output, ``hook_resid_post``).
        tokens: ``[layer, rows, cols]`` the top token per cell.
        probs: ``[layer, rows, cols]`` its probability.
        token_probs: Per requested token, ``[layer, rows, cols]`` its probability per cell.
        positions: The cells' sequence positions, row-major.
    """

    layers: tuple[int, ...]
    tokens: np.ndarray
    probs: np.ndarray
    token_probs: dict[str, np.ndarray] = field(default_factory=dict)
    positions: tuple[int, ...] = ()

    def map(self, token: str, layer: int = -1) -> LocationMap:
        """The probability of ``token`` per cell at ``layer`` (an index into :attr:`layers`) as a map."""
        if token not in self.token_probs:
            raise ValueError(
                f"{token!r} was not requested; logit_lens_map(..., tokens=[{token!r}]) keeps it. "
                f"Kept: {sorted(self.token_probs)}."
            )
        label = f"p({token}) at layer {self.layers[layer]}"
        return LocationMap(
            values=self.token_probs[token][layer],
            method="logit_lens",
            label=label,
            positions=self.positions,
            target=token,
        )

    def table(self, layer: int = -1) -> str:
        """The top tokens of one layer as a markdown grid (tokens escaped)."""
        grid = self.tokens[layer]
        lines = [
            "| " + " | ".join(f"c{c}" for c in range(grid.shape[1])) + " |",
            "|" + "---|" * grid.shape[1],
        ]
        lines += ["| " + " | ".join(markdown_text(t) for t in grid[r]) + " |" for r in range(grid.shape[0])]
        return "\n".join(lines)


def logit_lens_map(
    model: HookedMLLM,
    inputs: Any,
    *,
    row: int = 0,
    image: int = 0,
    layers: Any = None,
    tokens: Sequence[str] | None = None,
    frozen: bool = False,
    max_memory: int | str | None = None,
) -> LensMap:
    """The logit lens of every cell of one image after every layer (top token per cell per layer).

    Args:
        inputs: A :class:`~hooked_mllm.MultimodalBatch`.
        layers: Layers to read (all by default).
        tokens: Tokens whose probability to keep per cell (default: the model's prediction at
            the row's last position).
        frozen: Read with the final norm's scale frozen at each cell's final residual instead of
            each layer's own residual.
        max_memory: Memory budget of the readout (bytes or ``"4GB"``; see
            :mod:`hooked_mllm.budget`): the cells go through the LM head a chunk of positions at a
            time; same numbers at any budget.

    Raises:
        hooked_mllm.budget.MemoryBudgetError: When not even one position's logits fit ``max_memory``.

    Examples:
        >>> lm = logit_lens_map(model, batch, tokens=["red"])     # doctest: +SKIP
        >>> lm.map("red").peak()                                  # doctest: +SKIP
    """
    single = _single_row(model, inputs, row)
    span = grid_span(single, 0, image)
    rows, cols = span.grid  # type: ignore[misc]
    chosen = layer_list(layers, model.cfg.n_layers)
    last = model.cfg.n_layers - 1
    names = sorted({f"blocks.{l}.hook_resid_post" for l in chosen + [last]})
    logits, cache = model.run_with_cache(single, names_filter=names, positions=list(span.token_positions))
    if tokens is None:
        final = logits[0, single.last_positions()[0]].float()
        ids = resolve_target(model, None, final[None])
    else:
        ids = resolve_target(model, list(tokens), torch.zeros(len(tokens), 1))
    tokenizer = getattr(model.processor, "tokenizer", None)

    def names_of(id_list: list[int]) -> list[str]:
        return (
            tokenizer.convert_ids_to_tokens(id_list) if tokenizer is not None else [str(i) for i in id_list]
        )

    frozen_ref = cache["resid_post", last][0] if frozen else None
    n_pos = len(span.token_positions)
    plan = _budget.plan_lens(model, len(chosen), n_pos, len(ids), frozen, _budget.resolve_budget(max_memory))
    top_names: list[np.ndarray] = []
    top_probs: list[np.ndarray] = []
    kept: dict[str, list[np.ndarray]] = {name: [] for name in names_of(ids.tolist())}
    for l in chosen:
        value, index = torch.empty(n_pos), torch.empty(n_pos, dtype=torch.long)
        chosen_probs = torch.empty(len(ids), n_pos)
        for p0, probs in _chunks.lens_chunks(model, cache["resid_post", l][0], frozen_ref, plan.chunk):
            probs = probs.cpu()
            end = p0 + probs.shape[0]
            value[p0:end], index[p0:end] = probs.max(-1)
            chosen_probs[:, p0:end] = probs[:, ids].T
            del probs
        top_names.append(np.array(names_of(index.tolist()), dtype=object).reshape(rows, cols))
        top_probs.append(value.numpy().reshape(rows, cols))
        for name, p in zip(kept, chosen_probs):
            kept[name].append(p.numpy().reshape(rows, cols))
    return LensMap(
        layers=tuple(chosen),
        tokens=np.stack(top_names),
        probs=np.stack(top_probs),
        token_probs={name: np.stack(v) for name, v in kept.items()},
        positions=tuple(span.token_positions),
    )


def lens_location_map(
    model: HookedMLLM,
    inputs: Any,
    *,
    row: int | None = 0,
    image: int = 0,
    layer: int = -1,
    frozen: bool = False,
    target: Any = None,
) -> LocationMap | list[LocationMap]:
    """The probability of the explained token per cell at one layer's output, as a location map.

    One forward for every row (``row=None``: a list of maps). ``target`` as in
    :func:`~hooked_mllm.mechanism.capture` (default: the prediction at ``T``).

    Examples:
        >>> lens_location_map(model, batch, layer=-1).peak()     # doctest: +SKIP
    """
    batch = model.to_batch(inputs.batch if hasattr(inputs, "pattern") else inputs)
    layer = layer_list(layer, model.cfg.n_layers)[0]
    last = model.cfg.n_layers - 1
    names = sorted({f"blocks.{layer}.hook_resid_post", f"blocks.{last}.hook_resid_post"})
    logits, cache = model.run_with_cache(batch, names_filter=names)
    at_t = logits[torch.arange(len(batch)), batch.last_positions()].float()
    ids = resolve_target(model, target, at_t)
    tokenizer = getattr(model.processor, "tokenizer", None)
    maps = []
    for b in range(len(batch)) if row is None else [row]:
        span = grid_span(batch, b, image)
        where = list(span.token_positions)
        resid = cache["resid_post", layer][b, where]
        ref = cache["resid_post", last][b, where] if frozen else None
        probs = logit_lens(model, resid, scale_from=ref).float().softmax(-1)[:, int(ids[b])].cpu()
        token = (
            tokenizer.convert_ids_to_tokens([int(ids[b])])[0] if tokenizer is not None else str(int(ids[b]))
        )
        maps.append(to_map(probs.numpy(), span, image, "logit_lens", f"p({token}) at layer {layer}", token))
    return maps if row is None else maps[0]
