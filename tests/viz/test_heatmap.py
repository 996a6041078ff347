"""Heatmaps over the image: accepted inputs, the pixels drawn, colour scales, several panels."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from hooked_mllm.viz import as_map, heatmap, heatmaps

matplotlib.use("Agg")


@dataclass(frozen=True)
class Located:
    values: torch.Tensor


def test_as_map_accepts_arrays_tensors_and_values_objects():
    grid = np.arange(6.0).reshape(2, 3)
    for value in (grid, grid.tolist(), torch.tensor(grid), Located(torch.tensor(grid)), grid[None]):
        np.testing.assert_array_equal(as_map(value), grid)
    with pytest.raises(ValueError, match=r"\[rows, cols\]"):
        as_map(np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="values"):
        as_map({"a": 1})


def pixel(fig, ax, x: float, y: float) -> np.ndarray:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    px, py = ax.transData.transform((x, y))
    return rgba[int(round(rgba.shape[0] - py)), int(round(px)), :3].astype(float)


def test_bare_map_cells_have_the_colormap_colour():
    values = np.array([[0.0, 1.0], [0.25, 0.5]])
    fig = heatmap(values, title="bare")
    ax = fig.axes[0]
    cmap = matplotlib.colormaps["inferno"]
    for (r, c), v in np.ndenumerate(values):
        expected = np.array(cmap(v)[:3]) * 255
        np.testing.assert_allclose(pixel(fig, ax, c + 0.5, r + 0.5), expected, atol=3)
    assert ax.get_title() == "bare" and len(fig.axes) == 2  # the colour bar


def test_overlay_blends_map_over_the_upsampled_image():
    image = Image.new("RGB", (40, 20), (0, 200, 0))
    values = np.array([[0.0, 1.0]])
    fig = heatmap(values, image, alpha=0.5, colorbar=False)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0, 40) and ax.get_ylim() == (20, 0)  # the map spans the whole image
    cmap = matplotlib.colormaps["inferno"]
    for c, v in enumerate(values[0]):
        expected = 0.5 * np.array(cmap(v)[:3]) * 255 + 0.5 * np.array([0, 200, 0])
        np.testing.assert_allclose(pixel(fig, ax, 10 + 20 * c, 10), expected, atol=4)
    assert len(fig.axes) == 1


def test_negative_values_get_a_centred_diverging_scale():
    fig = heatmap(np.array([[-2.0, 1.0]]))
    shown = fig.axes[0].images[-1]
    assert shown.get_cmap().name == "RdBu_r" and shown.get_clim() == (-2.0, 2.0)
    fig = heatmap(np.array([[0.0, 3.0]]), vmin=0, vmax=10)
    assert fig.axes[0].images[-1].get_clim() == (0, 10)


def test_several_maps_side_by_side_on_one_scale():
    maps = {"attention": np.eye(3), "patching": 4 * np.eye(3)[::-1]}
    fig = heatmaps(maps, Image.new("RGB", (30, 30)))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["attention", "patching"]
    assert {ax.images[-1].get_clim() for ax in panels} == {(0.0, 4.0)}
    assert len(fig.axes) == 3  # two panels, one shared colour bar
    fig = heatmaps(list(maps.values()), shared_scale=False)
    assert [ax.images[-1].get_clim() for ax in fig.axes if ax.get_title()] == [(0.0, 1.0), (0.0, 4.0)]


def test_layer_stack_objects_get_one_panel_per_layer():
    @dataclass(frozen=True)
    class Sweep:
        values: torch.Tensor
        layers: list

    fig = heatmaps(Sweep(torch.rand(3, 2, 2), [0, 2, 5]), ncols=2)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["layer 0", "layer 2", "layer 5"]
    with pytest.raises(ValueError, match="several"):
        heatmaps(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="images for"):
        heatmaps([np.zeros((2, 2))] * 2, image=[None])


def test_frame_strip_puts_each_step_over_its_first_frame_on_one_scale():
    from hooked_mllm.viz import frame_strip

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(a) for a in rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)]
    maps = [k * np.eye(2) for k in (1.0, 2.0, 3.0)]
    fig = frame_strip(maps, frames, frames_per_step=2, video=1)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["vid1[t0]", "vid1[t1]", "vid1[t2]"]
    for step, ax in enumerate(panels):
        np.testing.assert_array_equal(ax.images[0].get_array(), np.asarray(frames[2 * step]))
        np.testing.assert_array_equal(ax.images[-1].get_array(), maps[step])
    assert {ax.images[-1].get_clim() for ax in panels} == {(0.0, 3.0)}
    with pytest.raises(ValueError, match="need at least 5 frames"):
        frame_strip(maps, frames[:4], frames_per_step=2)
    with pytest.raises(ValueError, match="no maps"):
        frame_strip([])
