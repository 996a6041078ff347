"""Position selectors: which sequence positions a cache or a hook function touches.

A selector turns a :class:`~hooked_mllm.inputs.MultimodalBatch` into a ``[batch, pos]``
boolean mask. Strings and plain values are accepted wherever a selector is:
``"image"``, ``"video"``, ``"text"``, ``"last"``, ``"all"`` (prompt, no padding), ``"generated"``,
``"everything"`` (prompt and generated tokens), an int (negative counts from each row's
end), a slice, a list of indices, or a boolean mask (``[pos]`` or ``[batch, pos]``).

Examples:
    >>> from hooked_mllm import positions
    >>> mask = positions.resolve("image", batch)           # doctest: +SKIP
    >>> mask = positions.image(index=0, rows=slice(0, 2)).mask(batch)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .inputs import MultimodalBatch


class Selector:
    """Base class: a rule mapping a batch to a ``[batch, pos]`` mask.

    ``on_prompt`` / ``on_generated`` say whether the selector applies on the prompt
    forward and on generated-token steps (where each step has one new position).
    """

    on_prompt: bool = True
    on_generated: bool = False

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        raise NotImplementedError

    def step_mask(
        self, batch: MultimodalBatch | None, step: int, shape: tuple[int, int]
    ) -> Bool[Tensor, "batch pos"] | None:
        """The mask at one forward of a run (``step`` 0: the prompt), or None if nothing is selected.

        ``shape`` is the activation's ``(batch, pos)``. A prompt selector needs the batch.
        """
        if step > 0:
            return torch.ones(shape, dtype=torch.bool) if self.on_generated else None
        if not self.on_prompt:
            return None
        if batch is None:
            raise ValueError(
                "This position selector needs the run's MultimodalBatch; run through HookedMLLM."
            )
        return self.mask(batch, shape[1])

    def __or__(self, other: Any) -> Selector:
        return _Union(self, as_selector(other))


@dataclass(frozen=True)
class _Union(Selector):
    left: Selector
    right: Selector

    @property
    def on_prompt(self) -> bool:  # type: ignore[override]
        return self.left.on_prompt or self.right.on_prompt

    @property
    def on_generated(self) -> bool:  # type: ignore[override]
        return self.left.on_generated or self.right.on_generated

    def step_mask(
        self, batch: MultimodalBatch | None, step: int, shape: tuple[int, int]
    ) -> Bool[Tensor, "batch pos"] | None:
        masks = [
            m
            for m in (self.left.step_mask(batch, step, shape), self.right.step_mask(batch, step, shape))
            if m is not None
        ]
        if not masks:
            return None
        return masks[0] | masks[1] if len(masks) == 2 else masks[0]

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        return self.left.mask(batch, seq_len) | self.right.mask(batch, seq_len)


@dataclass(frozen=True)
class _Named(Selector):
    kind: str

    @property
    def on_prompt(self) -> bool:  # type: ignore[override]
        return self.kind != "generated"

    @property
    def on_generated(self) -> bool:  # type: ignore[override]
        return self.kind in ("generated", "everything")

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        if self.kind == "image":
            if batch.no_image_tokens is not None:
                raise ValueError(batch.no_image_tokens)
            return batch.image_mask.clone()
        if self.kind == "text":
            return batch.text_mask.clone()
        if self.kind in ("all", "everything"):
            return ~batch.pad_mask
        if self.kind == "generated":
            return torch.zeros_like(batch.pad_mask)
        if self.kind == "last":
            out = torch.zeros_like(batch.pad_mask)
            out[torch.arange(len(batch)), batch.last_positions()] = True
            return out
        raise ValueError(f"Unknown position name {self.kind!r}; use one of {', '.join(NAMES)}.")


@dataclass(frozen=True, kw_only=True)
class Image(Selector):
    """Image tokens: all, one image (``index`` within each row), or a region of its grid.

    ``rows``/``cols`` select grid cells (ints, slices or lists), for gridded images only.
    ``box=(left, top, right, bottom)`` in pixels of an image of ``image_size=(width, height)``
    selects every cell the box overlaps (the grid spans the whole image).

    An ``index`` past the last image of any row is an ``IndexError`` (as an integer position
    past the sequence is). Cells map to the span's image-token positions (:attr:`ImageSpan.token_positions`),
    so tokens between an image's rows (Pixtral's ``[IMG_BREAK]``) are never selected. Models
    with no image tokens in the sequence (Mllama's cross-attention) raise a ``ValueError``.
    """

    index: int | None = None
    rows: Any = None
    cols: Any = None
    box: tuple[float, float, float, float] | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.box is not None and (
            self.image_size is None or self.rows is not None or self.cols is not None
        ):
            raise ValueError("box= needs image_size=(width, height) and replaces rows=/cols=")

    def _cells(self, grid: tuple[int, int]) -> tuple[Any, Any]:
        if self.box is None:
            return _index(self.rows), _index(self.cols)
        left, top, right, bottom = self.box
        width, height = self.image_size  # type: ignore[misc]
        n_rows, n_cols = grid
        row0, row1 = int(top * n_rows // height), -int(-bottom * n_rows // height)
        col0, col1 = int(left * n_cols // width), -int(-right * n_cols // width)
        return slice(max(0, row0), min(n_rows, row1)), slice(max(0, col0), min(n_cols, col1))

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        if batch.no_image_tokens is not None:
            raise ValueError(batch.no_image_tokens)
        out = torch.zeros_like(batch.pad_mask)
        for row in range(len(batch)):
            spans = batch.images_of(row)
            if self.index is not None and not -len(spans) <= self.index < len(spans):
                raise IndexError(
                    f"positions.image({self.index}): row {row} has {len(spans)} image span(s) (per row: "
                    f"{[len(batch.images_of(r)) for r in range(len(batch))]}); an image index must be within "
                    "every row's images."
                )
            chosen = spans if self.index is None else spans[self.index : self.index + 1 or None]
            for span in chosen:
                where = torch.as_tensor(list(span.token_positions), dtype=torch.long)
                if self.rows is None and self.cols is None and self.box is None:
                    out[row, where] = True
                    continue
                if span.grid is None:
                    raise ValueError(
                        f"Image {span.index} has no patch grid, so rows/cols/box cannot select cells."
                    )
                cells = torch.zeros(span.grid, dtype=torch.bool)
                cells[self._cells(span.grid)] = True
                out[row, where] = cells.flatten()
        return out


@dataclass(frozen=True, kw_only=True)
class Video(Selector):
    """Video tokens: all, one video (``index`` within each row), some of its frames, or cells.

    ``frames`` selects time steps of the language model's sequence (:class:`~hooked_mllm.spans.VideoSpan`:
    Qwen2-VL merges 2 input frames into one step): an int (negative counts from the end), a
    slice, or a list of ints in increasing order without repeats. ``cells`` lists ``(t, r, c)``
    cells (time step, row, column of the frame's grid, non-negative), in sequence order without
    repeats. A selector is a mask, so it selects each position once, in sequence order: a list
    out of order or with repeats is refused (``cache.video(name, frames=[...])`` gathers frames in
    any order, repeats included). Out-of-range frames, cells or ``index`` are an ``IndexError``.

    Examples:
        >>> positions.video(frames=[0, 2]).mask(batch)               # doctest: +SKIP
        >>> positions.video(cells=[(0, 1, 1), (1, 0, 0)]).mask(batch)  # doctest: +SKIP
    """

    index: int | None = None
    frames: Any = None
    cells: Any = None

    def __post_init__(self) -> None:
        if self.frames is not None and self.cells is not None:
            raise ValueError("positions.video takes frames= or cells=, not both.")
        if self.frames is not None and not isinstance(self.frames, (int, slice, list, tuple)):
            raise TypeError(
                f"frames= takes an int, a slice or a list of ints, not {type(self.frames).__name__}."
            )
        listed = self.frames if isinstance(self.frames, (list, tuple)) else [self.frames]
        if (
            self.frames is not None
            and not isinstance(self.frames, slice)
            and not all(isinstance(f, int) and not isinstance(f, bool) for f in listed)
        ):
            raise TypeError(f"frames= takes ints (time steps); got {self.frames!r}.")
        if self.cells is not None:
            cells = list(self.cells)
            if not all(isinstance(c, (tuple, list)) and len(c) == 3 for c in cells) or not all(
                isinstance(v, int) for c in cells for v in c
            ):
                raise TypeError(f"cells= lists (t, r, c) triples of ints; got {cells!r}.")
            if any(a >= b for a, b in zip(map(tuple, cells), map(tuple, cells[1:]))):
                raise ValueError(
                    f"cells={cells!r} are not in sequence order without repeats; a position selector selects "
                    "each position once, in sequence order. Sort them and drop repeats, or gather them from "
                    "cache.video(...) in the order you need."
                )

    def _steps(self, time: int) -> list[int]:
        if self.frames is None:
            return list(range(time))
        if isinstance(self.frames, slice):
            return list(range(time))[self.frames]
        given = [self.frames] if isinstance(self.frames, int) else list(self.frames)
        bad = [f for f in given if not -time <= f < time]
        if bad:
            raise IndexError(f"positions.video(frames={self.frames!r}): the video has {time} time step(s).")
        steps = [f % time for f in given]
        if any(a >= b for a, b in zip(steps, steps[1:])):
            raise ValueError(
                f"frames={self.frames!r} are not in increasing order without repeats; a position selector "
                "selects each position once, in sequence order. Use cache.video(name, frames=[...]) to "
                "gather frames in any order, repeats included."
            )
        return steps

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        if batch.video_mask is None:
            from .batch import refuse_video

            refuse_video(None, "A video position selector was used")
        out = torch.zeros_like(batch.pad_mask)
        for row in range(len(batch)):
            spans = batch.videos_of(row)
            if self.index is not None and not -len(spans) <= self.index < len(spans):
                raise IndexError(
                    f"positions.video({self.index}): row {row} has {len(spans)} video(s) (per row: "
                    f"{[len(batch.videos_of(r)) for r in range(len(batch))]}); a video index must be within "
                    "every row's videos."
                )
            chosen = spans if self.index is None else spans[self.index : self.index + 1 or None]
            for span in chosen:
                if self.frames is None and self.cells is None:
                    where = list(span.token_positions)
                elif self.cells is not None:
                    where = [span.cell_position(*cell) for cell in self.cells]
                else:
                    where = [
                        p for t in self._steps(span.frame_geometry()[0]) for p in span.frame_positions(t)
                    ]
                out[row, torch.as_tensor(where, dtype=torch.long)] = True
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
            out[:, list(range(length)[value])] = True
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
            raise ValueError(
                f"Position mask has shape {tuple(self.value.shape)}; expected "
                f"[{length}] or [{len(batch)}, {length}]."
            )
        return value.clone()


@dataclass(frozen=True)
class Token(Selector):
    """The positions of a string's tokens in each row's prompt (``occurrence``-th match; -1: last).

    The string is tokenized without special tokens and matched as a token sequence, so
    a word and the same word with a leading-space marker are not confused silently:
    a string found in no row is an error.
    """

    text: str
    tokenizer: Any
    occurrence: int = -1

    def mask(self, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
        ids = self.tokenizer.encode(self.text, add_special_tokens=False)
        out = torch.zeros_like(batch.pad_mask)
        for row in range(len(batch)):
            seq = batch.input_ids[row].tolist()
            starts = [
                i
                for i in range(len(seq) - len(ids) + 1)
                if seq[i : i + len(ids)] == ids and not bool(batch.pad_mask[row, i])
            ]
            if not starts:
                raise ValueError(f"{self.text!r} (tokens {ids}) does not occur in row {row}'s prompt.")
            start = starts[self.occurrence]
            out[row, start : start + len(ids)] = True
        return out


NAMES = ("image", "video", "text", "last", "all", "generated", "everything")


def generated() -> Selector:
    """Select the generated tokens (each generation step's new position), not the prompt."""
    return _Named("generated")


def everything() -> Selector:
    """Select every prompt position (padding excluded) and every generated token."""
    return _Named("everything")


def token(text: str, tokenizer: Any, occurrence: int = -1) -> Token:
    """Select the positions of ``text``'s tokens in the prompt (see :class:`Token`)."""
    return Token(text, tokenizer, occurrence)


def image(
    index: int | None = None,
    rows: Any = None,
    cols: Any = None,
    box: tuple[float, float, float, float] | None = None,
    image_size: tuple[int, int] | None = None,
) -> Image:
    """Select image tokens: image ``index`` of each row, grid ``rows``/``cols``, or a pixel ``box``.

    Examples:
        >>> positions.image(box=(0, 0, 16, 16), image_size=(48, 48))   # the top-left 16 px  # doctest: +SKIP
    """
    return Image(index=index, rows=rows, cols=cols, box=box, image_size=image_size)


def video(index: int | None = None, frames: Any = None, cells: Any = None) -> Video:
    """Select video tokens: video ``index`` of each row, its time steps ``frames``, or ``(t, r, c)`` cells.

    See :class:`Video` (lists are taken in sequence order without repeats, or refused).

    Examples:
        >>> positions.video(frames=slice(0, 2))       # the first two time steps  # doctest: +SKIP
    """
    return Video(index=index, frames=frames, cells=cells)


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
        if value not in NAMES:
            raise ValueError(f"Unknown position name {value!r}; use one of {', '.join(NAMES)}.")
        return Image() if value == "image" else Video() if value == "video" else _Named(value)
    if isinstance(value, Tensor) and value.dtype == torch.bool:
        return Mask(value)
    if isinstance(value, (int, slice, list, tuple)) or isinstance(value, Tensor):
        return Indices(value.tolist() if isinstance(value, Tensor) else value)
    raise TypeError(
        f"Cannot select positions with {type(value).__name__}; use 'image', 'video', 'text', 'last', "
        "'all', an int, a slice, a list of ints, a boolean mask or a positions.* selector."
    )


def resolve(selector: Any, batch: MultimodalBatch, seq_len: int | None = None) -> Bool[Tensor, "batch pos"]:
    """The ``[batch, pos]`` mask of ``selector`` on ``batch``."""
    return as_selector(selector).mask(batch, seq_len)


def ordered_index(
    selector: Any, batch: MultimodalBatch, seq_len: int | None = None
) -> Int[Tensor, "batch k"]:
    """Per-row positions of ``selector`` in the order it gives them, repeats kept.

    Explicit positions (an int, a slice, a list or a 1-d integer tensor) keep their order and
    repeats (``[5, 1, 5]`` gives positions 5, 1, 5; a negative step runs backwards); every other
    selector gives its mask's positions in sequence order (:func:`gather_index`).

    Examples:
        >>> ordered_index([5, 1, 5], batch)[0].tolist()        # doctest: +SKIP
        [5, 1, 5]
    """
    chosen = as_selector(selector)
    mask = chosen.mask(batch, seq_len)  # checks the range
    if not isinstance(chosen, Indices):
        return gather_index(mask)
    value = chosen.value
    value = [value] if isinstance(value, int) else value if isinstance(value, slice) else list(value)
    where = torch.tensor(
        list(range(mask.shape[1])[value]) if isinstance(value, slice) else value, dtype=torch.long
    )
    where = torch.arange(mask.shape[1])[where]  # negative positions count from the end
    return where.expand(mask.shape[0], -1).clone()


def gather_index(mask: Bool[Tensor, "batch pos"]) -> Int[Tensor, "batch k"]:
    """Per-row positions of a mask selecting the same number of positions in every row."""
    counts = mask.sum(dim=1)
    if len(counts) and (counts != counts[0]).any():
        raise ValueError(
            f"The position selector picks a different number of positions per row ({counts.tolist()}); "
            "cache all positions and use cache.image()/cache.text(), or select rows separately."
        )
    return mask.nonzero()[:, 1].view(mask.shape[0], -1)
