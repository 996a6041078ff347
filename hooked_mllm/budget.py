"""Memory budgets for the tools whose memory grows with layers x heads x positions x d_model or x vocabulary.

:func:`head_contributions`, :func:`image_locations` and :func:`logit_lens_map` (in
:mod:`hooked_mllm.mechanism`) work in chunks (over heads and positions, and vocabulary rows
through the LM head) sized so that what the call allocates stays within a memory budget: the
``max_memory=`` argument of each call (bytes, or a string such as ``"4GB"`` / ``"512MiB"``), else
the process default (:func:`set_memory_budget`, or ``with memory_budget("2GiB"):``), else
:data:`DEFAULT_BUDGET` (4 GiB: beside a 7-8 B model's bfloat16 weights on a 24 GB GPU). Chunking
never changes the numbers (the tests compare every budget down to one head and one position per
chunk with one unchunked call). A request that cannot fit even at one vector per chunk (its
result alone is larger than the budget) raises :class:`MemoryBudgetError` with the estimate.

:func:`hooked_mllm.estimate.estimate_tool` says, before running, how many bytes a call will
hold: its result, the fixed float32 copies it makes (the unembedding), its largest chunk's
working memory and the forward's captured tensors, from shapes only (it works on a
:mod:`hooked_mllm.geometry` model on the ``meta`` device). The tests compare it with the peak of
live tensors measured during real calls.

Examples:
    >>> from hooked_mllm.budget import parse_memory
    >>> parse_memory("4GB"), parse_memory("1.5GiB"), parse_memory(1024)
    (4000000000, 1610612736, 1024)
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DEFAULT_BUDGET",
    "MemoryBudgetError",
    "ToolEstimate",
    "memory_budget",
    "parse_memory",
    "resolve_budget",
    "set_memory_budget",
]

DEFAULT_BUDGET = 4 * 2**30
"""The budget when neither ``max_memory=`` nor :func:`set_memory_budget` gives one (4 GiB)."""

# Working copies of a chunk, in units of the chunk's own size (upper bounds, checked by the tests
# against the peak of live tensors during real calls):
_CONTRIB_COPIES = 4  # values x W_O, times the attention weight, the post-attention norm's copies
_READOUT_COPIES = 4  # logits, soft cap, logsumexp / softmax, float32 copy
_NORM_COPIES = 4  # the final norm's copies of the [n, d_model] inputs

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_default: list[int | None] = [None]


class MemoryBudgetError(ValueError):
    """A tool call that cannot fit its memory budget even at the smallest chunk.

    Attributes:
        estimate: The call's :class:`ToolEstimate` at the smallest chunk.
    """

    def __init__(self, message: str, estimate: ToolEstimate) -> None:
        super().__init__(message)
        self.estimate = estimate


def parse_memory(value: Any) -> int:
    """Bytes from an int, or a string with a unit: ``"4GB"`` (10^9), ``"4GiB"`` or ``"4G"`` (2^30).

    Examples:
        >>> parse_memory("512MiB"), parse_memory("2 G")
        (536870912, 2147483648)
    """
    if isinstance(value, bool):
        raise ValueError(f"A memory budget is a number of bytes or a string like '4GB', not {value!r}.")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(
                f"Cannot read {value!r} as a memory size; write bytes or a number with a unit: "
                "'4GB', '4GiB', '512MiB', '2G'."
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise ValueError(f"A memory budget is a number of bytes or a string like '4GB', not {value!r}.")
    out = int(number * _UNITS[unit])
    if out <= 0:
        raise ValueError(f"A memory budget must be positive, got {value!r}.")
    return out


def set_memory_budget(value: int | str | None) -> None:
    """Set the process-wide default budget of the chunked tools (None: back to :data:`DEFAULT_BUDGET`).

    Examples:
        >>> set_memory_budget("16GB"); resolve_budget(None)
        16000000000
        >>> set_memory_budget(None)
    """
    _default[0] = None if value is None else parse_memory(value)


@contextlib.contextmanager
def memory_budget(value: int | str) -> Iterator[int]:
    """Within the ``with`` block, the chunked tools' default budget is ``value`` (yields it in bytes).

    Examples:
        >>> with memory_budget("1GiB") as limit:
        ...     resolve_budget(None) == limit == 2**30
        True
    """
    previous, limit = _default[0], parse_memory(value)
    _default[0] = limit
    try:
        yield limit
    finally:
        _default[0] = previous


def resolve_budget(max_memory: int | str | None) -> int:
    """``max_memory`` in bytes, else the process default, else :data:`DEFAULT_BUDGET`."""
    if max_memory is not None:
        return parse_memory(max_memory)
    return _default[0] if _default[0] is not None else DEFAULT_BUDGET


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**24 else f"{n / 2**20:.2f} MiB"


@dataclass(frozen=True)
class ToolEstimate:
    """The bytes a tool call will hold, before running it.

    Attributes:
        tool: The tool's name.
        result: Bytes of what it returns (or keeps until it returns, e.g. the scores of each head).
        fixed: Bytes of copies made once per call (the float32 unembedding of a half-precision model).
        chunk: Vectors per chunk (a vector: one ``d_model`` contribution, or one position's logits).
        n_vectors: Vectors in all.
        working: Bytes of the largest chunk's working copies.
        capture: Bytes of the forward's captured tensors the tool reads (held from the forward on).
        budget: The budget the chunks were sized for.
    """

    tool: str
    result: int
    fixed: int
    chunk: int
    n_vectors: int
    working: int
    capture: int
    budget: int

    @property
    def peak(self) -> int:
        """Bytes the call adds at its peak beyond the forward's: result, fixed copies and one chunk."""
        return self.result + self.fixed + self.working

    @property
    def n_chunks(self) -> int:
        """How many chunks the call runs (per layer for the per-layer tools: the total)."""
        return math.ceil(self.n_vectors / self.chunk) if self.chunk else 0

    def __str__(self) -> str:
        return (
            f"{self.tool}: peak {_gib(self.peak)} (result {_gib(self.result)}, fixed {_gib(self.fixed)}, "
            f"working {_gib(self.working)} for {self.chunk} of {self.n_vectors} vectors per chunk); "
            f"the forward's captured tensors {_gib(self.capture)}; budget {_gib(self.budget)}"
        )


def plan(
    tool: str,
    *,
    result: int,
    fixed: int,
    per_vector: int,
    n_vectors: int,
    capture: int,
    budget: int,
    hint: str,
) -> ToolEstimate:
    """The largest chunk (in vectors, at most ``n_vectors``) whose working copies fit the budget beside the
    result and the fixed copies; :class:`MemoryBudgetError` when not even one vector fits."""
    room = budget - result - fixed
    chunk = min(n_vectors, room // per_vector) if per_vector else n_vectors
    if chunk < 1 and n_vectors:
        smallest = ToolEstimate(tool, result, fixed, 1, n_vectors, per_vector, capture, budget)
        raise MemoryBudgetError(
            f"{tool} cannot fit max_memory={_gib(budget)} even one vector at a time: {smallest}. "
            f"Pass a larger max_memory= (or set_memory_budget), or {hint}.",
            smallest,
        )
    chunk = max(chunk, 0)
    return ToolEstimate(tool, result, fixed, chunk, n_vectors, chunk * per_vector, capture, budget)


def split(n_heads: int, n_positions: int, chunk: int) -> tuple[int, int]:
    """Heads and positions per chunk for ``chunk`` vectors: whole positions of several heads, or part of
    the positions of one head."""
    if chunk >= n_positions:
        return max(1, min(n_heads, chunk // max(n_positions, 1))), n_positions
    return 1, max(1, chunk)


def _f32_copy(dtype: torch.dtype, numel: int) -> int:
    return 0 if dtype == torch.float32 else numel * 4


def _sizes(model: Any) -> tuple[int, int, int, int, int, int, torch.dtype]:
    cfg = model.cfg
    return cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model, cfg.d_vocab, cfg.dtype


def capture_bytes(model: Any, n_rows: int, seq: int) -> int:
    """Bytes of the forward's captured tensors the mechanism tools read (float32): each layer's attention
    row from the last position, its values at every position, and four ``d_model`` vectors."""
    layers, heads, kv, d_head, d_model, _, _ = _sizes(model)
    return 4 * n_rows * (layers * (heads * seq + seq * kv * d_head + 3 * d_model) + d_model)


def plan_contributions(
    model: Any, n_layers: int, n_rows: int, n_positions: int, seq: int, budget: int
) -> ToolEstimate:
    """:func:`~hooked_mllm.mechanism.head_contributions`'s plan: a float32 ``[layer, head, batch, pos,
    d_model]`` result filled chunk by chunk (a chunk: some heads x some positions, every row)."""
    _, heads, _, d_head, d_model, _, _ = _sizes(model)
    return plan(
        "head_contributions",
        result=4 * n_layers * heads * n_rows * n_positions * d_model,
        fixed=2 * 4 * heads * d_head * d_model,  # a float32 W_O and its chosen heads
        per_vector=_CONTRIB_COPIES * 4 * n_rows * d_model,
        n_vectors=heads * n_positions,
        capture=capture_bytes(model, n_rows, seq),
        budget=budget,
        hint="fewer layers= or positions=",
    )


def plan_locations(
    model: Any, n_pairs: int, n_positions: int, n_rows: int, seq: int, budget: int
) -> ToolEstimate:
    """:func:`~hooked_mllm.mechanism.image_locations`'s plan for one row: every chosen head's contribution at
    every image position read out through the LM head (a chunk: some heads x some positions); ``n_rows``,
    the batch's rows, sizes the forward's captured tensors only."""
    _, heads, _, d_head, d_model, vocab, dtype = _sizes(model)
    per_vector = 4 * (_CONTRIB_COPIES * d_model + _NORM_COPIES * d_model + _READOUT_COPIES * vocab)
    return plan(
        "image_locations",
        result=4 * n_pairs * n_positions,
        fixed=_f32_copy(dtype, vocab * d_model) + 2 * 4 * heads * d_head * d_model,  # unembedding, W_O
        per_vector=per_vector,
        n_vectors=n_pairs * n_positions,
        capture=capture_bytes(model, n_rows, seq),
        budget=budget,
        hint="fewer heads= or layers=",
    )


def plan_lens(
    model: Any, n_layers: int, n_positions: int, n_tokens: int, frozen: bool, budget: int
) -> ToolEstimate:
    """:func:`~hooked_mllm.mechanism.logit_lens_map`'s plan: each layer's image positions read through the
    final norm and the LM head (a chunk: some positions)."""
    _, _, _, _, d_model, vocab, dtype = _sizes(model)
    size = torch.empty((), dtype=dtype).element_size()
    return plan(
        "logit_lens_map",
        result=n_layers * n_positions * (4 + 8 + 4 * n_tokens),
        fixed=_f32_copy(dtype, vocab * d_model) if frozen else 0,
        per_vector=_READOUT_COPIES * 4 * vocab + size * vocab + _NORM_COPIES * 4 * d_model,
        n_vectors=n_positions,
        capture=size * (n_layers + 1) * n_positions * d_model,  # the layers' cached residuals (at most)
        budget=budget,
        hint="fewer layers=",
    )
