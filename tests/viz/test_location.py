"""LocationMap's pictures are drawn by hooked_mllm.viz.location; the map's methods hand off to it."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from hooked_mllm.mechanism import LocationMap
from hooked_mllm.viz import location


@pytest.fixture
def m() -> LocationMap:
    return LocationMap(values=np.array([[0.0, 1.0], [3.0, 2.0]]), method="demo", label="a<b & c")


def test_colorize_is_the_colormap_of_the_upsampled_map(m):
    rgba = colormaps["viridis"](m.upsample((7, 5)))
    expected = (rgba[..., :3] * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(location.colorize(m, (7, 5), "viridis")), expected)
    assert np.array_equal(np.asarray(m.colorize((7, 5), "viridis")), expected)


def test_overlay_blends_the_image_with_the_coloured_map(m):
    image = Image.new("RGB", (9, 6), (10, 200, 30))
    coloured = np.asarray(location.colorize(m, (9, 6)), dtype=np.float64)
    expected = 0.7 * np.asarray(image, dtype=np.float64) + 0.3 * coloured
    got = np.asarray(m.overlay(image, alpha=0.3), dtype=np.float64)
    assert np.abs(got - expected).max() <= 1.0
    assert m.overlay(image, alpha=0.3).tobytes() == location.overlay(m, image, alpha=0.3).tobytes()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        location.overlay(m, image, alpha=-0.1)


def test_html_figure_carries_the_png_and_an_escaped_caption(m):
    html = m._repr_html_()
    assert html == location.location_map_html(m)
    assert "demo: a&lt;b &amp; c (2x2, peak (1, 0))" in html
    assert m._repr_png_bytes().startswith(b"\x89PNG")
