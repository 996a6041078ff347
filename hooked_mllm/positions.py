"""Position selectors: which sequence positions a cache or a hook function touches.

A selector turns a :class:`~hooked_mllm.inputs.MultimodalBatch` into a ``[batch, pos]``
boolean mask. Strings and plain values are accepted wherever a selector is:
``"image"``, ``"text"``, ``"last"``, ``"all"``, an int (negative counts from each row's
end), a slice, a list of indices, or a boolean mask (``[pos]`` or ``[batch, pos]``).

Example:
    >>> from hooked_mllm import positions
    >>> mask = positions.resolve("image", batch)           # doctest: +SKIP
    >>> mask = positions.image(index=0, rows=slice(0, 2)).mask(batch)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .inputs import MultimodalBatch


class Selector:
    """Base class: a rule mapping a batch to a ``[batch, pos]`` mask."""

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        raise NotImplementedError

    def __or__(self, other: Any) -> Selector:
        return _Union(self, as_selector(other))


@dataclass(frozen=True)
class _Union(Selector):
    left: Selector
    right: Selector

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        return self.left.mask(batch, seq_len) | self.right.mask(batch, seq_len)


@dataclass(frozen=True)
class _Named(Selector):
    kind: str

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        if self.kind == "image":
            return batch.image_mask.clone()
        if self.kind == "text":
            return batch.text_mask.clone()
        if self.kind == "all":
            return ~batch.pad_mask
        if self.kind == "last":
            out = torch.zeros_like(batch.pad_mask)
            out[torch.arange(len(batch)), batch.last_positions()] = True
            return out
        raise ValueError(f"Unknown position name {self.kind!r}; use 'image', 'text', 'last' or 'all'.")


@dataclass(frozen=True)
class Image(Selector):
    """Image tokens: all, one image (``index`` within each row), or a region of its grid.

    ``rows``/``cols`` select grid cells (ints, slices or lists), for gridded images only.
    """

    index: int | None = None
    rows: Any = None
    cols: Any = None

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        out = torch.zeros_like(batch.pad_mask)
        for row in range(len(batch)):
            spans = batch.images_of(row)
            chosen = spans if self.index is None else spans[self.index : self.index + 1 or None]
            for span in chosen:
                if self.rows is None and self.cols is None:
                    out[row, span.start : span.end] = True
                    continue
                if span.grid is None:
                    raise ValueError(f"Image {span.index} has no patch grid, so rows/cols cannot select cells.")
                cells = torch.zeros(span.grid, dtype=torch.bool)
                cells[_index(self.rows), _index(self.cols)] = True
                out[row, span.start : span.end] = cells.flatten()
        return out


def _index(value: Any) -> Any:
    if value is None:
        return slice(None)
    if isinstance(value, (list, tuple)):
        return torch.tensor(value)
    return value


@dataclass(frozen=True)
class Indices(Selector):
    """Explicit positions: an int, a list of ints, or a slice (negative ints count from the end)."""

    value: Any

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        length = seq_len or batch.shape[1]
        out = torch.zeros(len(batch), length, dtype=torch.bool)
        value = self.value
        if isinstance(value, slice):
            out[:, value] = True
        else:
            idx = torch.as_tensor([value] if isinstance(value, int) else list(value))
            if (idx >= length).any() or (idx < -length).any():
                raise IndexError(f"Position(s) {self.value!r} out of range for sequence length {length}")
            out[:, idx] = True
        return out


@dataclass(frozen=True, eq=False)
class Mask(Selector):
    """A boolean mask, ``[pos]`` (same for every row) or ``[batch, pos]``."""

    value: Tensor

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        value = self.value.to(torch.bool).cpu()
        length = seq_len or batch.shape[1]
        if value.dim() == 1:
            value = value.expand(len(batch), -1)
        if tuple(value.shape) != (len(batch), length):
            raise ValueError(f"Position mask has shape {tuple(self.value.shape)}; expected "
                             f"[{length}] or [{len(batch)}, {length}].")
        return value.clone()


def image(index: int | None = None, rows: Any = None, cols: Any = None) -> Image:
    """Select image tokens (optionally image ``index`` of each row and grid ``rows``/``cols``)."""
    return Image(index, rows, cols)


def text() -> Selector:
    """Select ordinary text tokens (not image, special or padding)."""
    return _Named("text")


def last() -> Selector:
    """Select each row's last non-padding token."""
    return _Named("last")


def indices(value: int | slice | Sequence[int]) -> Indices:
    """Select explicit positions."""
    return Indices(value)


def as_selector(value: Any) -> Selector:
    """Turn any accepted selector form into a :class:`Selector`."""
    if isinstance(value, Selector):
        return value
    if isinstance(value, str):
        return _Named(value) if value != "image" else Image()
    if isinstance(value, Tensor) and value.dtype == torch.bool:
        return Mask(value)
    if isinstance(value, (int, slice, list, tuple)) or isinstance(value, Tensor):
        return Indices(value.tolist() if isinstance(value, Tensor) else value)
    raise TypeError(f"Cannot select positions with {type(value).__name__}; use 'image', 'text', 'last', "
                    "'all', an int, a slice, a list of ints, a boolean mask or a positions.* selector.")


def resolve(selector: Any, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
    """The ``[batch, pos]`` mask of ``selector`` on ``batch``."""
    return as_selector(selector).mask(batch, seq_len)


def gather_index(mask: Bool[Tensor, "batch pos"]) -> Int[Tensor, "batch k"]:
    """Per-row positions of a mask selecting the same number of positions in every row."""
    counts = mask.sum(dim=1)
    if len(counts) and (counts != counts[0]).any():
        raise ValueError(
            f"The position selector picks a different number of positions per row ({counts.tolist()}); "
            "cache all positions and use cache.image()/cache.text(), or select rows separately."
        )
    return mask.nonzero()[:, 1].view(mask.shape[0], -1)
