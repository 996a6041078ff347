"""``LocationMap``: one score per image grid cell, the result type of every location method.

Every method of :mod:`hooked_mllm.mechanism` (the head-contribution map, the attention,
relevancy, input-times-gradient and occlusion baselines, the logit-lens probability map)
returns a :class:`LocationMap` for one image of one batch row: the raw scores on the
image's patch grid, with normalising and upsampling (bicubic); its colouring, overlay and
inline PNG for notebooks are drawn by :mod:`hooked_mllm.viz.location`. :func:`grid_span` finds
the image and refuses images without a grid; :func:`to_map` turns per-position scores into a map.

Examples:
    >>> import numpy as np
    >>> m = LocationMap(values=np.array([[0.0, 1.0], [3.0, 2.0]]), method="demo", label="toy")
    >>> m.peak(), m.normalized().values.max()
    ((1, 0), 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..inputs import ImageSpan, MultimodalBatch


@dataclass(frozen=True, eq=False, kw_only=True)
class LocationMap:
    """Scores over one image's patch grid (higher: more important for the answer).

    Attributes:
        values: ``[rows, cols]`` float scores, row-major like the image tokens.
        method: Which method made it (``"heads"``, ``"attention"``, ``"relevancy"``...).
        label: A short description (the heads used, the target token...).
        row: The batch row it belongs to.
        image: The image index within that row.
        positions: The sequence positions of the cells, row-major (``rows * cols`` of them).
        target: The token the scores explain, if any.

    Examples:
        >>> m = image_locations(model, batch)                       # doctest: +SKIP
        >>> m.peak(), m.overlay(scene.image).size                   # doctest: +SKIP
        ((2, 3), (48, 48))
    """

    values: np.ndarray
    method: str
    label: str = ""
    row: int = 0
    image: int = 0
    positions: tuple[int, ...] = ()
    target: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"LocationMap values must be [rows, cols], got shape {values.shape}.")
        object.__setattr__(self, "values", values)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def normalized(self) -> LocationMap:
        """The map min-max normalised to ``[0, 1]`` (all zeros where it is constant)."""
        lo, hi = float(self.values.min()), float(self.values.max())
        values = (self.values - lo) / (hi - lo) if hi > lo else np.zeros_like(self.values)
        return LocationMap(
            values=values,
            method=self.method,
            label=self.label,
            row=self.row,
            image=self.image,
            positions=self.positions,
            target=self.target,
            extra=dict(self.extra),
        )

    def peak(self) -> tuple[int, int]:
        """``(row, col)`` of the highest score (the first one on ties)."""
        flat = int(np.argmax(self.values))
        return divmod(flat, self.values.shape[1])

    def peak_index(self) -> int:
        """The highest cell's index in the row-major flattened grid."""
        return int(np.argmax(self.values))

    def upsample(self, size: int | tuple[int, int]) -> np.ndarray:
        """The normalised map resized bicubically to ``size`` (``(width, height)`` or a side).

        Returns ``[height, width]`` floats clipped to ``[0, 1]``.
        """
        width, height = (size, size) if isinstance(size, int) else size
        norm = self.normalized().values.astype(np.float32)
        up = Image.fromarray(norm, mode="F").resize((int(width), int(height)), Image.Resampling.BICUBIC)
        return np.clip(np.asarray(up), 0.0, 1.0)

    def colorize(self, size: int | tuple[int, int], cmap: str = "inferno") -> Image.Image:
        """The upsampled map coloured with a matplotlib colormap, as an RGB image (drawn by ``viz``)."""
        from ..viz.location import colorize

        return colorize(self, size, cmap)

    def overlay(self, image: Image.Image, alpha: float = 0.5, cmap: str = "inferno") -> Image.Image:
        """``image`` blended with the coloured map (bicubic upsampling over the whole image).

        Drawn by :func:`hooked_mllm.viz.location.overlay`.

        Args:
            image: The image the map is about (any PIL mode; the grid spans all of it).
            alpha: Weight of the map (0: the image only, 1: the map only).
            cmap: A matplotlib colormap name.
        """
        from ..viz.location import overlay

        return overlay(self, image, alpha, cmap)

    def _repr_png_bytes(self, image: Image.Image | None = None, side: int = 192) -> bytes:
        from ..viz.location import png_bytes

        return png_bytes(self, image, side)

    def _repr_html_(self) -> str:
        from ..viz.location import location_map_html

        return location_map_html(self)

    def __repr__(self) -> str:
        rows, cols = self.shape
        return f"LocationMap({self.method!r}, {rows}x{cols}, peak={self.peak()}, label={self.label!r})"


def grid_span(batch: MultimodalBatch, row: int, image: int) -> ImageSpan:
    """The span of image ``image`` of batch row ``row``, refusing images without a patch grid."""
    if batch.no_image_tokens is not None:
        raise ValueError(batch.no_image_tokens)
    spans = batch.images_of(row)
    if not spans:
        raise ValueError(f"Row {row} holds no image tokens; location maps need an image in the prompt.")
    if not 0 <= image < len(spans):
        raise ValueError(f"Row {row} has {len(spans)} image(s); image={image} is out of range.")
    span = spans[image]
    if span.grid is None:
        raise ValueError(
            f"Image {image} of row {row} has {span.n_tokens} image tokens that form no patch grid (resampled "
            "latents, or anyres tiles whose tokens do not match image_sizes), so a location map cannot be "
            "laid out. Head and layer scores still work; maps need a family with a grid (LLaVA, Qwen2-VL, "
            "Gemma 3, PaliGemma, Idefics3 tiles, LLaVA-NeXT views...)."
        )
    return span


def to_map(
    scores: Any, span: ImageSpan, image: int, method: str, label: str, target: str | None = None, **extra: Any
) -> LocationMap:
    """A :class:`LocationMap` from ``[n_tokens]`` scores in the span's token order.

    ``image`` is the span's index among its row's images.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    rows, cols = span.grid  # type: ignore[misc]
    if values.shape[0] != rows * cols:
        raise ValueError(f"Got {values.shape[0]} scores for a {rows}x{cols} grid.")
    return LocationMap(
        values=values.reshape(rows, cols),
        method=method,
        label=label,
        row=span.row,
        image=image,
        positions=tuple(span.token_positions),
        target=target,
        extra=dict(extra),
    )
