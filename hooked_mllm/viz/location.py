"""Drawing a :class:`~hooked_mllm.mechanism.LocationMap`: coloured, over its image, inline in a notebook.

The location map (:mod:`hooked_mllm.mechanism.maps`) holds the scores and the numbers
(normalising, peaks, bicubic upsampling); its ``colorize``, ``overlay`` and ``_repr_html_``
hand off here, like every other result's pictures. The map is read by duck typing (``.values``,
``.upsample``, ``.method``, ``.label``, ``.peak()``), so this module imports nothing of
:mod:`hooked_mllm.mechanism`. matplotlib is imported when a map is coloured.

Examples:
    >>> import numpy as np
    >>> from hooked_mllm.mechanism import LocationMap
    >>> m = LocationMap(values=np.array([[0.0, 1.0], [3.0, 2.0]]), method="demo")
    >>> colorize(m, 8).size
    (8, 8)
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
from PIL import Image


def colorize(location_map: Any, size: int | tuple[int, int], cmap: str = "inferno") -> Image.Image:
    """The map's upsampled, normalised scores coloured with a matplotlib colormap, as an RGB image.

    Args:
        location_map: A location map (anything with ``.upsample(size)`` giving ``[height, width]``
            floats in ``[0, 1]``).
        size: ``(width, height)`` of the picture, or one side.
        cmap: A matplotlib colormap name.

    Returns:
        An RGB image of ``size``.

    Examples:
        >>> import numpy as np
        >>> from hooked_mllm.mechanism import LocationMap
        >>> colorize(LocationMap(values=np.eye(2), method="demo"), (6, 4)).size
        (6, 4)
    """
    from matplotlib import colormaps

    rgba = colormaps[cmap](location_map.upsample(size))
    return Image.fromarray((rgba[..., :3] * 255).round().astype(np.uint8), mode="RGB")


def overlay(location_map: Any, image: Image.Image, alpha: float = 0.5, cmap: str = "inferno") -> Image.Image:
    """``image`` blended with the coloured map (bicubic upsampling over the whole image).

    Args:
        location_map: A location map (see :func:`colorize`).
        image: The image the map is about (any PIL mode; the grid spans all of it).
        alpha: Weight of the map (0: the image only, 1: the map only).
        cmap: A matplotlib colormap name.

    Returns:
        An RGB image the size of ``image``.

    Raises:
        ValueError: ``alpha`` outside ``[0, 1]``.

    Examples:
        >>> import numpy as np
        >>> from hooked_mllm.mechanism import LocationMap
        >>> overlay(LocationMap(values=np.eye(2), method="demo"), Image.new("L", (10, 10))).mode
        'RGB'
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    return Image.blend(base, colorize(location_map, base.size, cmap), alpha)


def png_bytes(location_map: Any, image: Image.Image | None = None, side: int = 192) -> bytes:
    """PNG bytes of the map over ``image``, or of the coloured map alone at ``side`` x ``side`` pixels.

    Examples:
        >>> import numpy as np
        >>> from hooked_mllm.mechanism import LocationMap
        >>> png_bytes(LocationMap(values=np.eye(2), method="demo"))[:4]
        b'\\x89PNG'
    """
    picture = overlay(location_map, image) if image is not None else colorize(location_map, side)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def location_map_html(location_map: Any) -> str:
    """The map as an inline HTML figure (a PNG and a caption: method, label, grid size, peak).

    Examples:
        >>> import numpy as np
        >>> from hooked_mllm.mechanism import LocationMap
        >>> "peak (0, 1)" in location_map_html(LocationMap(values=np.eye(2)[::-1], method="demo"))
        True
    """
    data = base64.b64encode(png_bytes(location_map)).decode("ascii")
    rows, cols = location_map.values.shape
    caption = html.escape(
        f"{location_map.method}: {location_map.label} ({rows}x{cols}, peak {location_map.peak()})",
        quote=False,
    )
    return (
        f'<figure style="display:inline-block;margin:4px"><img src="data:image/png;base64,{data}" '
        f'style="image-rendering:auto"/><figcaption style="font-size:small">{caption}'
        "</figcaption></figure>"
    )
