"""Finding images in a token sequence: a pure function from id tensors to :class:`ImageSpan` s.

:func:`find_image_spans` takes the ``[batch, pos]`` mask of image tokens (and, where the
family needs them, the ids, a row-separator id, each image's grid or token count, or its
views) and returns one :class:`ImageSpan` per image, in order, with how many images each
row holds. It reads no processor, tokenizer or model: :mod:`hooked_mllm.batch` gathers those
inputs from the adapter and the HF tensors and calls it. Geometry that contradicts the
tokens degrades to "positions known, grid unknown" with a warning; it never raises.

Examples:
    >>> import torch
    >>> mask = torch.tensor([[0, 1, 1, 1, 1, 0, 1, 1, 1, 1]]).bool()
    >>> spans, per_row = find_image_spans(mask, image_grid=lambda n: (2, n // 2))
    >>> [(s.start, s.end, s.grid) for s in spans], per_row
    ([(1, 5, (2, 2)), (6, 10, (2, 2))], (2,))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

Grid = tuple[int, int]
ImageViews = tuple[int, list[tuple[tuple[int, ...], Grid]]]
"""One image's token count and its views ``[(offsets in the image's run, (rows, cols)), ...]``."""
_Runs = list[tuple[int, list[tuple[int, int]]]]


@dataclass(frozen=True, kw_only=True)
class ImageSpan:
    """Where one image's tokens sit: row, sequence positions ``[start, end)``, grid.

    ``grid`` is ``(rows, cols)`` with ``rows * cols == n_tokens`` (row-major), or
    None where the tokens form no grid (resampled latents).

    ``positions`` is None where the image's tokens are the contiguous run
    ``[start, end)``. Where other tokens sit between them (Pixtral's ``[IMG_BREAK]``
    after every row of patches), it lists the image tokens' sequence positions in
    order, separators excluded; ``start`` / ``end`` then bound the first and last of
    them, and grid cell ``(r, c)`` is at ``positions[r * cols + c]``. Use
    :attr:`token_positions` to cover both cases.

    Examples:
        >>> span = ImageSpan(row=0, index=0, start=2, end=9, grid=(2, 3), positions=(2, 3, 4, 6, 7, 8))
        >>> span.n_tokens, list(span.token_positions)[3]
        (6, 6)
    """

    row: int
    index: int
    start: int
    end: int
    grid: tuple[int, int] | None
    positions: tuple[int, ...] | None = None

    @property
    def n_tokens(self) -> int:
        return self.end - self.start if self.positions is None else len(self.positions)

    @property
    def token_positions(self) -> range | tuple[int, ...]:
        """The sequence positions of this image's tokens, in order (row-major where gridded)."""
        return range(self.start, self.end) if self.positions is None else self.positions

    def shifted(self, offset: int, **changes: Any) -> ImageSpan:
        """This span moved ``offset`` positions to the left (padding removed), with ``changes``."""
        positions = None if self.positions is None else tuple(p - offset for p in self.positions)
        return replace(self, start=self.start - offset, end=self.end - offset, positions=positions, **changes)


@dataclass(frozen=True, kw_only=True)
class VideoSpan(ImageSpan):
    """Where one video's tokens sit: an :class:`ImageSpan` whose tokens are ``time`` frames of
    ``grid`` each, frame after frame, each frame row-major.

    ``time`` counts the frames of the language model's sequence: Qwen2-VL merges
    ``frames_per_step`` (its ``temporal_patch_size``, 2) consecutive input frames into one, so
    time step ``t`` covers input frames ``[t * frames_per_step, (t + 1) * frames_per_step)`` (a
    video with a frame count that is not a multiple has its last frame repeated to fill the last
    step). ``grid`` is one frame's ``(rows, cols)`` after the spatial merge; ``n_tokens ==
    time * rows * cols``. ``time`` and ``grid`` are None where the inputs' geometry did not
    match the tokens (positions known, geometry unknown).

    Examples:
        >>> span = VideoSpan(row=0, index=0, start=3, end=15, grid=(2, 3), time=2, frames_per_step=2)
        >>> list(span.frame_positions(1)), span.cell_position(1, 0, 2)
        ([9, 10, 11, 12, 13, 14], 11)
    """

    time: int | None = None
    frames_per_step: int = 1

    def frame_positions(self, t: int) -> list[int]:
        """The sequence positions of time step ``t``'s tokens (row-major); negative ``t`` counts back."""
        time, grid = self.frame_geometry()
        if not -time <= t < time:
            raise IndexError(f"Video {self.index} has {time} time step(s); time step {t} is out of range.")
        per_frame = grid[0] * grid[1]
        first = (t % time) * per_frame
        return list(self.token_positions[first : first + per_frame])

    def cell_position(self, t: int, r: int, c: int) -> int:
        """The sequence position of cell ``(r, c)`` of time step ``t`` (no negative indices)."""
        time, (rows, cols) = self.frame_geometry()
        if not (0 <= t < time and 0 <= r < rows and 0 <= c < cols):
            raise IndexError(
                f"Video {self.index} has {time} time steps of {rows}x{cols} cells; cell {(t, r, c)} is out "
                "of range (cells take non-negative (t, r, c))."
            )
        return self.token_positions[(t * rows + r) * cols + c]

    def frame_geometry(self) -> tuple[int, tuple[int, int]]:
        """``(time, (rows, cols))``, or a ``ValueError`` where the geometry is unknown.

        Examples:
            >>> VideoSpan(row=0, index=0, start=0, end=8, grid=(2, 2), time=2).frame_geometry()
            (2, (2, 2))
        """
        if self.time is None or self.grid is None:
            raise ValueError(
                f"Video {self.index} has no frame geometry (its inputs' video_grid_thw did not match its "
                "tokens), so frames and cells cannot be selected; re-run the processor on the same videos."
            )
        return self.time, self.grid


def find_video_spans(
    video_mask: Bool[Tensor, "batch pos"],
    geometry: Sequence[tuple[int, int, int]],
    frames_per_step: int = 1,
    trailing: int = 0,
    ids: Int[Tensor, "batch pos"] | None = None,
    row_break: int | None = None,
) -> tuple[tuple[VideoSpan, ...], tuple[int, ...]]:
    """Every video's span in a batch, and how many videos each row holds.

    Args:
        video_mask: ``[batch, pos]`` True at video tokens (padding already excluded).
        geometry: Each video's ``(time, rows, cols)`` in the sequence, in order (the adapter's
            ``tokens.videos`` rule, from ``video_grid_thw``).
        frames_per_step: Input frames per time step (``temporal_patch_size``).
        trailing: Tokens after each video's frames in its run that belong to no frame
            (LLaVA-OneVision's newline): the span ends before them.
        ids: ``[batch, pos]`` the token ids; needed with ``row_break``.
        row_break: The id of a token ending each row of a frame's tokens (Molmo2's ``<im_col>``
            with ``video_use_col_tokens``): runs separated by exactly one of it are the rows of one
            time step, each ``cols`` long; the span lists the positions, separators excluded.

    Returns:
        ``(spans, videos_per_row)``. A video is one run of tokens (Qwen2-VL) or one run per time
        step (Qwen3-VL writes ``<t seconds>`` between its frames, Molmo2 a timestamp and frame
        markers; the span then lists its positions, separators excluded). Runs that do not match
        ``geometry`` keep their positions with ``time`` and ``grid`` None (with a warning), as image
        spans do.

    Examples:
        >>> import torch
        >>> mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1, 0]]).bool()
        >>> spans, per_row = find_video_spans(mask, [(2, 2, 2)], frames_per_step=2)
        >>> [(s.start, s.end, s.time, s.grid) for s in spans], per_row
        ([(1, 9, 2, (2, 2))], (1,))
    """
    runs = _runs(video_mask, ids, row_break)
    framed = _frame_runs(video_mask, runs, geometry, frames_per_step) or _trailing_runs(
        video_mask, geometry, frames_per_step, trailing
    )
    if framed is not None:
        return framed
    stacked: list[tuple[int, int] | None] = [(t * rows, cols) for t, rows, cols in geometry]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spans, per_row = _image_spans(video_mask, None, stacked, ids, row_break)
    if caught:
        warnings.warn(
            f"Video geometry unknown: the video inputs describe {len(geometry)} video(s) with "
            f"{[t * r * c + trailing for t, r, c in geometry]} tokens, but input_ids hold {len(spans)} "
            f"run(s) of video tokens with {[s.n_tokens for s in spans]} tokens. The video positions are "
            "kept ('video' selects them), but frames and cells cannot be selected and cache.video is "
            "unavailable. Re-run the processor on the same videos and text to get both.",
            stacklevel=4,
        )
    videos = tuple(
        VideoSpan(
            row=span.row,
            index=span.index,
            start=span.start,
            end=span.end,
            positions=span.positions,
            grid=None if span.grid is None else (geometry[i][1], geometry[i][2]),
            time=None if span.grid is None else geometry[i][0],
            frames_per_step=frames_per_step,
        )
        for i, span in enumerate(spans)
    )
    return videos, per_row


def _trailing_runs(
    video_mask: Tensor, geometry: Sequence[tuple[int, int, int]], frames_per_step: int, trailing: int
) -> tuple[tuple[VideoSpan, ...], tuple[int, ...]] | None:
    """Videos that are one run each of ``time * rows * cols`` frame tokens and ``trailing`` more
    (LLaVA-OneVision's newline), each span ending before those; None where the runs differ."""
    runs = _runs(video_mask, None, None)
    if not trailing or len(runs) != len(geometry):
        return None
    if any(
        len(parts) != 1 or parts[0][1] - parts[0][0] != t * r * c + trailing
        for (_, parts), (t, r, c) in zip(runs, geometry)
    ):
        return None
    spans: list[VideoSpan] = []
    per_row = [0] * video_mask.shape[0]
    for (row, parts), (time, rows, cols) in zip(runs, geometry):
        start = parts[0][0]
        spans.append(
            VideoSpan(
                row=row,
                index=len(spans),
                start=start,
                end=start + time * rows * cols,
                grid=(rows, cols),
                time=time,
                frames_per_step=frames_per_step,
            )
        )
        per_row[row] += 1
    return tuple(spans), tuple(per_row)


def _frame_runs(
    video_mask: Tensor, runs: _Runs, geometry: Sequence[tuple[int, int, int]], frames_per_step: int
) -> tuple[tuple[VideoSpan, ...], tuple[int, ...]] | None:
    """Videos whose time steps are separate runs (Qwen3-VL and Molmo2 write a timestamp between
    frames), or None where the runs are not exactly ``time`` runs of ``rows * cols`` tokens per
    video, in order (a run being one piece, or ``rows`` pieces of ``cols`` split by row breaks).

    Only taken where some video has more than one time step and the runs outnumber the videos, so
    a layout with one run per video never reaches it.
    """
    if len(runs) == len(geometry) or len(runs) != sum(t for t, _, _ in geometry):
        return None
    spans: list[VideoSpan] = []
    per_row = [0] * video_mask.shape[0]
    i = 0
    for time, rows, cols in geometry:
        frames = runs[i : i + time]
        i += time
        if {row for row, _ in frames} != {frames[0][0]} or any(
            [b - a for a, b in parts] not in ([rows * cols], [cols] * rows) for _, parts in frames
        ):
            return None
        row = frames[0][0]
        positions = tuple(p for _, parts in frames for a, b in parts for p in range(a, b))
        spans.append(
            VideoSpan(
                row=row,
                index=len(spans),
                start=positions[0],
                end=positions[-1] + 1,
                positions=positions,
                grid=(rows, cols),
                time=time,
                frames_per_step=frames_per_step,
            )
        )
        per_row[row] += 1
    return tuple(spans), tuple(per_row)


def find_image_spans(
    image_mask: Bool[Tensor, "batch pos"],
    *,
    ids: Int[Tensor, "batch pos"] | None = None,
    row_break: int | None = None,
    grids: Sequence[Grid | None] | None = None,
    image_grid: Callable[[int], Grid | None] | None = None,
    token_counts: Sequence[int] | None = None,
    views: Sequence[ImageViews] | None = None,
) -> tuple[tuple[ImageSpan, ...], tuple[int, ...]]:
    """Every image's span in a batch, and how many images each row holds.

    Args:
        image_mask: ``[batch, pos]`` True at image tokens (padding already excluded).
        ids: ``[batch, pos]`` the token ids; needed with ``row_break``.
        row_break: The id of a token separating the rows of one image's tokens (Pixtral's
            ``[IMG_BREAK]``): runs separated by exactly one of it are one image, whose grid
            is ``(runs, run length)``.
        grids: Each image's grid in order, from the image inputs (checked against the runs).
        image_grid: The grid of an image of ``n`` tokens (e.g. a square), used without ``grids``.
        token_counts: Each image's token count, used to cut runs where images touch.
        views: Per image, its token count and views; each view becomes a span (LLaVA-NeXT's
            base and high-resolution views). Falls back to one span per run with a warning.

    Returns:
        ``(spans, images_per_row)``.

    Examples:
        >>> import torch
        >>> mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1, 0]]).bool()   # two touching images
        >>> spans, _ = find_image_spans(mask, token_counts=[4, 4])
        >>> [(s.start, s.end) for s in spans]
        [(1, 5), (5, 9)]
    """
    found = _view_spans(image_mask, list(views)) if views else None
    if found is not None:
        return found
    return _image_spans(
        image_mask,
        image_grid,
        None if grids is None else list(grids),
        ids if row_break is not None else None,
        row_break,
        token_counts,
    )


def _runs(image_mask: Tensor, ids: Tensor | None, row_break: int | None) -> _Runs:
    """Per row, the runs of image tokens ``(row, [(start, end), ...])``; with ``row_break``,
    runs separated by exactly one such token are merged (the rows of one image)."""
    out = []
    for row, mask in enumerate(image_mask):
        padded = torch.cat([torch.tensor([False]), mask, torch.tensor([False])]).int()
        edges = padded.diff()
        starts = (edges == 1).nonzero().flatten().tolist()
        ends = (edges == -1).nonzero().flatten().tolist()
        runs = [[(start, end)] for start, end in zip(starts, ends)]
        if row_break is not None and ids is not None:
            merged: list[list[tuple[int, int]]] = []
            for run in runs:
                last = merged[-1][-1] if merged else None
                if last is not None and run[0][0] == last[1] + 1 and int(ids[row, last[1]]) == row_break:
                    merged[-1].append(run[0])
                else:
                    merged.append(run)
            runs = merged
        out += [(row, parts) for parts in runs]
    return out


def _split_touching(runs: _Runs, counts: list[int]) -> _Runs | None:
    """``runs`` cut where images touch, using each image's token count in order (None if they do not fit).

    Placeholders the chat template writes side by side (``<image><image>``) leave one run of
    image tokens for two images; a run whose length is the sum of the next few counts is cut
    into those images. Only a run of one contiguous piece is cut.
    """
    out, i = [], 0
    for row, parts in runs:
        length = sum(b - a for a, b in parts)
        taken, total = [], 0
        while i < len(counts) and total < length:
            taken.append(counts[i])
            total += counts[i]
            i += 1
        if total != length or (len(taken) > 1 and len(parts) > 1):
            return None
        start = parts[0][0]
        for n in taken:
            out.append((row, [(start, start + n)]) if len(taken) > 1 else (row, parts))
            start += n
    return out if i == len(counts) else None


def _view_spans(
    image_mask: Tensor, views: list[ImageViews]
) -> tuple[tuple[ImageSpan, ...], tuple[int, ...]] | None:
    """One span per view of each image (the adapter's ``tokens.views``), or None with a warning
    where the runs of image tokens do not hold exactly the images' token counts.

    Image ``i``'s run must be ``views[i][0]`` tokens long; each of its views becomes a span
    listing ``run start + offsets`` with the view's grid.
    """
    totals = [n for n, _ in views]
    runs = _runs(image_mask, None, None)
    if len(totals) > len(runs):
        runs = _split_touching(runs, totals) or runs
    sizes = [sum(b - a for a, b in parts) for _, parts in runs]
    if sizes != totals or any(len(parts) != 1 for _, parts in runs):
        warnings.warn(
            f"Image geometry unknown: the image inputs describe {len(totals)} image(s) with {totals} tokens, "
            f"but input_ids hold {len(runs)} run(s) of image tokens with {sizes} tokens. Each run is kept as "
            "one image span without a grid, so grid selectors (rows/cols/box) and location maps are "
            "unavailable. Re-run the processor on the same images and text to get both.",
            stacklevel=5,
        )
        return None
    spans: list[ImageSpan] = []
    per_row = [0] * image_mask.shape[0]
    for (row, parts), (_, image_views) in zip(runs, views):
        start = parts[0][0]
        for offsets, grid in image_views:
            if offsets != tuple(range(offsets[0], offsets[-1] + 1)):
                positions: tuple[int, ...] | None = tuple(start + o for o in offsets)
            else:
                positions = None
            spans.append(
                ImageSpan(
                    row=row,
                    index=len(spans),
                    start=start + offsets[0],
                    end=start + offsets[-1] + 1,
                    grid=grid,
                    positions=positions,
                )
            )
            per_row[row] += 1
    return tuple(spans), tuple(per_row)


def _image_spans(
    image_mask: Tensor,
    image_grid: Callable[[int], Grid | None] | None,
    grids: list[tuple[int, int] | None] | None = None,
    ids: Tensor | None = None,
    row_break: int | None = None,
    image_token_counts: Sequence[int] | None = None,
) -> tuple[tuple[ImageSpan, ...], tuple[int, ...]]:
    """Runs of image tokens per row, each one image, with its grid.

    Each contiguous run is one image, except that with ``row_break`` (a token id, with
    the ``ids``) runs separated by exactly one ``row_break`` token are the rows of one
    image: its span lists their positions and its grid is ``(n_runs, run length)``; and
    a run holding several touching images is cut by their token counts (from ``grids``, else
    ``image_token_counts``, the processor's count per image).
    ``grids`` (from the adapter's ``tokens.grids`` rule) gives each image's grid in order,
    checked against the rows where a span has separators (a span that is one run, such as
    Molmo2's low-resolution view, takes the grid as given; its token count is checked);
    otherwise ``image_grid`` derives it from the run's length. Geometry that
    contradicts the tokens degrades to "positions known, grid unknown" (grids None) with a
    warning: it never blocks a forward.
    """
    runs = _runs(image_mask, ids, row_break)
    expected = None if grids is None else [None if g is None else g[0] * g[1] for g in grids]
    known = None if expected is None or None in expected else [e for e in expected if e is not None]
    counts = known if known is not None else image_token_counts
    if counts and len(counts) > len(runs):
        runs = _split_touching(runs, list(counts)) or runs
    problem = None
    if grids is not None and expected is not None:  # expected is None exactly when grids is
        sizes = [sum(b - a for a, b in parts) for _, parts in runs]
        if len(grids) != len(runs) or any(e is not None and e != n for e, n in zip(expected, sizes)):
            problem = (
                f"the image inputs describe {len(grids)} image(s) with {expected} tokens, but input_ids "
                f"hold {len(runs)} run(s) of image tokens with {sizes} tokens"
            )
    spans: list[ImageSpan] = []
    per_row = [0] * image_mask.shape[0]
    for row, parts in runs:
        start, end = parts[0][0], parts[-1][1]
        positions = None
        if len(parts) > 1:
            positions = tuple(p for a, b in parts for p in range(a, b))
        n_tokens = end - start if positions is None else len(positions)
        widths = {b - a for a, b in parts}
        rows_grid = (len(parts), widths.pop()) if len(widths) == 1 else None
        if grids is not None:
            grid = grids[len(spans)] if problem is None else None
            if row_break is not None and grid is not None and len(parts) > 1 and grid != rows_grid:
                problem = (
                    f"image {len(spans)} is {grid[0]}x{grid[1]} tokens by its image inputs, but its "
                    f"tokens in input_ids form {rows_grid} rows x cols"
                )
                grid = None
        elif row_break is not None:
            grid = rows_grid
        else:
            grid = image_grid(n_tokens) if image_grid is not None else None
        spans.append(
            ImageSpan(row=row, index=len(spans), start=start, end=end, grid=grid, positions=positions)
        )
        per_row[row] += 1
    if problem is not None:
        warnings.warn(
            f"Image geometry unknown: {problem}. The image positions are kept (they are the image tokens), "
            "but no span has a grid, so grid selectors (rows/cols/box) and grid reshapes are unavailable. "
            "Re-run the processor on the same images and text to get both.",
            stacklevel=5,
        )
        spans = [replace(span, grid=None) for span in spans]
    return tuple(spans), tuple(per_row)
