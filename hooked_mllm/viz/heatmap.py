"""Heatmaps over the image with matplotlib: any per-cell map, upsampled and overlaid, with a colour bar.

A "map" is anything with one value per image cell: a ``[rows, cols]`` array or tensor, or
an object whose ``.values`` is one (a location map, a :class:`~hooked_mllm.patching.PatchingResult`
over cells for one layer, a concept's activation over patches, an attention row reshaped to the
grid). :func:`heatmap` draws one over its image (each cell stretched over the pixels it covers,
nearest-neighbour so cell borders stay honest; ``smooth=True`` for bilinear), with a title and a
colour bar; :func:`heatmaps` draws several side by side (layers, methods, baselines) on one
shared colour scale; :func:`frame_strip` lays out one map per time step of a video (titled
``vid0[t2]``, each over its step's first frame). Maps where both signs matter get a diverging
colour map centred on 0.

Examples:
    >>> import numpy as np
    >>> fig = heatmap(np.eye(3), title="diagonal")
    >>> fig.axes[0].get_title()
    'diagonal'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from jaxtyping import Float
from PIL import Image


def as_map(value: Any) -> Float[np.ndarray, "rows cols"]:
    """``value`` (array, tensor, or object with ``.values``) as a float ``[rows, cols]`` numpy array.

    Leading dimensions of size 1 are dropped; anything else that is not 2-D is refused.
    """
    array = _array(value)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(
            f"A heatmap needs a [rows, cols] map; got shape {array.shape}. Select one layer/head "
            "first, or pass several maps to heatmaps()."
        )
    return array


def _array(value: Any) -> np.ndarray:
    if not isinstance(value, (np.ndarray, list, tuple)) and not hasattr(value, "detach"):
        value = getattr(value, "values", value)
        if callable(value):  # a mapping's .values() method, not a map
            raise TypeError("Need a [rows, cols] array or an object with a .values [rows, cols] attribute.")
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _limits(maps: Sequence[np.ndarray], vmin: float | None, vmax: float | None, cmap: str | None):
    """Colour limits and map: diverging and centred on 0 when both signs matter (the smaller side is at
    least 2 % of the larger), else sequential over ``[min, max]``."""
    lo = min(float(np.nanmin(m)) for m in maps)
    hi = max(float(np.nanmax(m)) for m in maps)
    if lo < 0 and (hi <= 0 or min(-lo, hi) >= 0.02 * max(-lo, hi)):
        top = max(abs(lo), abs(hi)) or 1.0
        return (-top if vmin is None else vmin), (top if vmax is None else vmax), cmap or "RdBu_r"
    return (lo if vmin is None else vmin), (hi if vmax is None else vmax), cmap or "inferno"


def _draw(
    ax: Any,
    array: np.ndarray,
    image: Image.Image | None,
    title: str | None,
    vmin: float,
    vmax: float,
    cmap: str,
    alpha: float,
    smooth: bool,
    grid_lines: bool,
) -> Any:
    rows, cols = array.shape
    if image is not None:
        rgb = np.asarray(image.convert("RGB"))
        h, w = rgb.shape[:2]
        ax.imshow(rgb, extent=(0, w, h, 0), interpolation="nearest")
    else:
        h, w, alpha = rows, cols, 1.0
    shown = ax.imshow(
        array,
        extent=(0, w, h, 0),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        alpha=alpha,
        interpolation="bilinear" if smooth else "nearest",
    )
    if grid_lines:
        for r in range(1, rows):
            ax.axhline(r * h / rows, color="white", lw=0.4, alpha=0.5)
        for c in range(1, cols):
            ax.axvline(c * w / cols, color="white", lw=0.4, alpha=0.5)
    ax.set_xticks([(c + 0.5) * w / cols for c in range(cols)], [f"c{c}" for c in range(cols)], fontsize=7)
    ax.set_yticks([(r + 0.5) * h / rows for r in range(rows)], [f"r{r}" for r in range(rows)], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    if title:
        ax.set_title(title, fontsize=10)
    return shown


def heatmap(
    values: Any,
    image: Image.Image | None = None,
    *,
    title: str | None = None,
    ax: Any = None,
    cmap: str | None = None,
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    smooth: bool = False,
    colorbar: bool = True,
    label: str | None = None,
    grid_lines: bool = True,
) -> Any:
    """One map over its image; returns the matplotlib ``Figure``.

    Args:
        values: ``[rows, cols]`` array/tensor or an object with ``.values`` of that shape.
        image: The image the grid covers (PIL); without it the bare map is drawn.
        title: Axes title. ``label``: colour-bar label.
        ax: Draw into this axes instead of a new figure.
        cmap: matplotlib colour map (default ``inferno``, ``RdBu_r`` centred on 0 when negative values occur).
        alpha: Opacity of the map over the image.
        smooth: Bilinear upsampling instead of nearest (blocky, one block per cell).

    Examples:
        >>> fig = heatmap(result.values[2], scene.image, title="layer 2")   # doctest: +SKIP
        >>> fig.savefig("layer2.png")                                        # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    array = as_map(values)
    lo, hi, cmap = _limits([array], vmin, vmax, cmap)
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
    else:
        fig = ax.figure
    shown = _draw(ax, array, image, title, lo, hi, cmap, alpha, smooth, grid_lines)
    if colorbar:
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        if label:
            bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig


def _as_maps(maps: Any, titles: Sequence[str] | None) -> tuple[list[np.ndarray], list[str]]:
    if isinstance(maps, Mapping):
        return [as_map(v) for v in maps.values()], [str(k) for k in maps]
    if not isinstance(maps, (list, tuple)):
        stack = _array(maps)
        if stack.ndim != 3:
            raise ValueError(
                f"heatmaps() needs several [rows, cols] maps: a list, a dict, or a [n, rows, cols] "
                f"array; got shape {stack.shape}."
            )
        layers = getattr(maps, "layers", None)
        names = titles or ([f"layer {layer}" for layer in layers] if layers is not None else None)
        return list(stack), list(names) if names else [str(i) for i in range(len(stack))]
    arrays = [as_map(m) for m in maps]
    return arrays, list(titles) if titles is not None else [str(i) for i in range(len(arrays))]


def heatmaps(
    maps: Any,
    image: Image.Image | Sequence[Image.Image | None] | None = None,
    *,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
    ncols: int | None = None,
    cmap: str | None = None,
    alpha: float = 0.6,
    shared_scale: bool = True,
    smooth: bool = False,
    label: str | None = None,
    panel_size: float = 2.6,
) -> Any:
    """Several maps side by side (layers, methods, baselines) over their image(s); returns the ``Figure``.

    Args:
        maps: A list of maps, a ``{title: map}`` dict, a ``[n, rows, cols]`` array/tensor, or an
            object with such ``.values`` (a cell-level ``PatchingResult``: one panel per layer,
            titled by its ``layers``).
        image: One image under every panel, or one per panel (None for a bare panel).
        titles: Panel titles (default: dict keys, ``layer {l}``, or indices).
        shared_scale: One colour scale (and one colour bar) for all panels; else one each.

    Examples:
        >>> fig = heatmaps({"attention": attn, "patching": patch.values[0]}, scene.image)   # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    arrays, names = _as_maps(maps, titles)
    if not arrays:
        raise ValueError("heatmaps() got no maps.")
    images: list[Image.Image | None] = (
        list(image) if isinstance(image, (list, tuple)) else [cast("Image.Image | None", image)] * len(arrays)
    )
    if len(images) != len(arrays):
        raise ValueError(f"{len(images)} images for {len(arrays)} maps")
    ncols = ncols or min(len(arrays), 6)
    nrows = -(-len(arrays) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(
            panel_size * ncols + (0.8 if shared_scale else 0),
            panel_size * nrows + (0.5 if suptitle else 0.2),
        ),
        squeeze=False,
        constrained_layout=True,
    )
    shared = _limits(arrays, None, None, cmap) if shared_scale else None
    last = None
    for k, ax in enumerate(axes.flat):
        if k >= len(arrays):
            ax.axis("off")
            continue
        lo, hi, cm = shared if shared else _limits([arrays[k]], None, None, cmap)
        last = _draw(ax, arrays[k], images[k], names[k], lo, hi, cm, alpha, smooth, True)
        if not shared_scale:
            fig.colorbar(last, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    if shared_scale and last is not None:
        bar = fig.colorbar(last, ax=axes.ravel().tolist(), shrink=0.85)
        bar.ax.tick_params(labelsize=7)
        if label:
            bar.set_label(label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return fig


def frame_strip(
    maps: Sequence[Any],
    frames: Sequence[Image.Image] | None = None,
    *,
    frames_per_step: int = 1,
    video: int = 0,
    **kwargs: Any,
) -> Any:
    """One map per time step of a video, left to right on one colour scale; returns the ``Figure``.

    The panels are titled ``vid{video}[t{t}]`` (as the attention views label video tokens) and,
    with ``frames``, panel ``t`` sits over input frame ``t * frames_per_step`` (the first frame of
    the step; Qwen2-VL's ``frames_per_step`` is 2, :attr:`~hooked_mllm.spans.VideoSpan.frames_per_step`).

    Args:
        maps: One map per time step, in order (``[image_locations(model, batch.frames_as_images(),
            image=t) for t in ...]``, or a ``[time, rows, cols]`` array such as ``cache.video``'s norms).
        frames: The video's input frames (PIL images), or None for bare panels.
        frames_per_step: Input frames per time step.
        video: The video's index in its row (for the titles).
        **kwargs: Passed to :func:`heatmaps` (``cmap``, ``alpha``, ``label``, ``shared_scale``...).

    Examples:
        >>> import numpy as np
        >>> fig = frame_strip(np.random.rand(3, 2, 2))
        >>> [ax.get_title() for ax in fig.axes if ax.get_title()]
        ['vid0[t0]', 'vid0[t1]', 'vid0[t2]']
    """
    arrays = [as_map(m) for m in maps]
    if not arrays:
        raise ValueError("frame_strip() got no maps (one per time step).")
    images: list[Image.Image | None] | None = None
    if frames is not None:
        needed = (len(arrays) - 1) * frames_per_step + 1
        if len(frames) < needed:
            raise ValueError(
                f"{len(arrays)} time steps of {frames_per_step} frame(s) need at least {needed} frames; "
                f"got {len(frames)}."
            )
        images = [frames[t * frames_per_step] for t in range(len(arrays))]
    titles = [f"vid{video}[t{t}]" for t in range(len(arrays))]
    return heatmaps(arrays, images, titles=titles, ncols=kwargs.pop("ncols", len(arrays)), **kwargs)
