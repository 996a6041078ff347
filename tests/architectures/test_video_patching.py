"""Patching over a video's ``(t, r, c)`` cells and attribution patching over frames and cells (Qwen2-VL,
Qwen3-VL, LLaVA-OneVision): against plain torch hooks on HF's forward (a patch; an independent
``torch.autograd`` gradient), the units against index arithmetic (property-based), and the figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hooked_mllm import HookedMLLM
from hooked_mllm import testing as t
from hooked_mllm.patching import _units, activation_patching, attribution_patching, logit_diff
from hooked_mllm.viz import patching_figure

from .families import image
from .test_video import PROMPTS, array_video, frames, hf, video_tokens

_MODELS: dict[str, HookedMLLM] = {}
METRIC = logit_diff(3, 4)


@pytest.fixture(scope="module", params=["2", "3", "onevision"])
def model(request) -> HookedMLLM:
    if request.param not in _MODELS:
        if request.param == "3":
            _MODELS["3"] = HookedMLLM.from_hf(*t.tiny_qwen3_vl(attn_implementation="eager"))
        elif request.param == "onevision":
            _MODELS["onevision"] = HookedMLLM.from_hf(*t.tiny_llava_onevision(attn_implementation="eager"))
        else:
            _MODELS["2"] = HookedMLLM.from_hf(t.tiny_qwen2_vl("2"), t.tiny_qwen2_vl_processor(version="2"))
    return _MODELS[request.param]


@pytest.fixture(scope="module")
def pair(model):
    onevision = model.adapter.name == "llava_onevision"
    clean_clip = array_video(1, 3, 16, 16) if onevision else frames(0, 4, 16, 24)
    other = array_video(7, 3, 16, 16) if onevision else frames(7, 4, 16, 24)
    clean = model.prepare(videos=[clean_clip], prompts=[PROMPTS[0]])
    return clean, model.prepare(videos=[other], prompts=[PROMPTS[0]])


def _layer(model, layer):
    return model.adapter.module(model.hf_model, f"{model.adapter.modules.lm_layers}.{layer}")


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, hidden):
    return ((hidden, *args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=hidden))


def layer_input(model, batch, layer):
    seen = {}

    def keep(module, args, kwargs):
        seen["in"] = _hidden(args, kwargs).detach().clone()

    handle = _layer(model, layer).register_forward_pre_hook(keep, with_kwargs=True)
    try:
        hf(model, batch.inputs)
    finally:
        handle.remove()
    return seen["in"]


def expected_cell_units(batch, cell):
    """Each (t, R, C) block's positions by index arithmetic on the video tokens of input_ids."""
    span = batch.videos_of(0)[0]
    rows, cols = span.grid
    tokens = video_tokens(batch, 0)
    if span.n_tokens < len(tokens):  # LLaVA-OneVision: the newline after the last frame is in no cell
        tokens = tokens[: span.n_tokens]
    cr, cc = cell
    units, labels = [], []
    for k in range(span.time):
        for r in range(rows // cr):
            for c in range(cols // cc):
                at = [(k * rows + r * cr + dr) * cols + c * cc + dc for dr in range(cr) for dc in range(cc)]
                units.append([tokens[i] for i in at])
                labels.append(f"vid0[t{k} r{r}c{c}]")
    return units, labels, (span.time, rows // cr, cols // cc)


def test_activation_patching_over_video_cells_equals_a_torch_patch(model, pair):
    clean, corrupted = pair
    result = activation_patching(model, clean, corrupted, METRIC, layers=[1], over="cell", video=0)
    units, labels, grid = expected_cell_units(corrupted, (1, 1))
    assert result.units == units and result.labels == labels and result.video == 0
    assert result.values.shape == (1, *grid)
    clean_in = layer_input(model, clean, 1)
    flat = result.values.reshape(-1)
    for i, unit in enumerate(units):

        def pre(module, args, kwargs, unit=unit):
            hidden = _hidden(args, kwargs).clone()
            hidden[:, unit] = clean_in[:, unit]
            return _with_hidden(args, kwargs, hidden)

        handle = _layer(model, 1).register_forward_pre_hook(pre, with_kwargs=True)
        try:
            expected = METRIC(hf(model, corrupted.inputs).logits, corrupted)
        finally:
            handle.remove()
        torch.testing.assert_close(flat[i], expected[0], atol=1e-5, rtol=1e-4)


def torch_attribution(model, clean, corrupted, layer):
    """Per position: (clean - corrupted) . d metric / d layer input, by torch.autograd on HF's forward."""
    kept = {}

    def pre(module, args, kwargs):
        hidden = _hidden(args, kwargs).detach().requires_grad_(True)
        kept["in"] = hidden
        return _with_hidden(args, kwargs, hidden)

    handle = _layer(model, layer).register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.enable_grad():
            metric = METRIC(model.hf_model(**corrupted.inputs).logits, corrupted).sum()
            (grad,) = torch.autograd.grad(metric, [kept["in"]])
    finally:
        handle.remove()
    diff = layer_input(model, clean, layer) - kept["in"].detach()
    return (diff * grad)[0].sum(-1), float(metric.detach())


def test_attribution_over_frames_and_cells_equals_torch_autograd_and_sums_positions(model, pair):
    clean, corrupted = pair
    per_pos, corrupted_metric = torch_attribution(model, clean, corrupted, 1)
    frames_ = attribution_patching(model, clean, corrupted, METRIC, layers=[1], over="frame")
    cells = attribution_patching(
        model, clean, corrupted, METRIC, layers=[1], over="cell", video=0, cell=(2, 1)
    )
    span = corrupted.videos_of(0)[0]
    assert frames_.values.shape == (1, span.time) and frames_.labels == [
        f"vid0[t{k}]" for k in range(span.time)
    ]
    units, labels, grid = expected_cell_units(corrupted, (2, 1))
    assert cells.units == units and cells.labels == labels and cells.values.shape == (1, *grid)
    for result in (frames_, cells):
        expected = torch.stack([per_pos[u].sum() for u in result.units]) + corrupted_metric
        torch.testing.assert_close(result.values.reshape(-1), expected.float(), atol=1e-4, rtol=1e-3)
        assert result.corrupted_metric == pytest.approx(corrupted_metric, abs=1e-5)
    video = [p for u in frames_.units for p in u]  # the per-position sweep over the same positions
    positions = attribution_patching(model, clean, corrupted, METRIC, layers=[1], positions=video)
    by_pos = dict(zip(video, (positions.values[0] - positions.corrupted_metric).tolist()))
    for result in (frames_, cells):
        sums = [sum(by_pos[p] for p in u) + result.corrupted_metric for u in result.units]
        np.testing.assert_allclose(result.values.reshape(-1).numpy(), sums, atol=1e-4, rtol=1e-4)


def test_video_cell_results_show_as_figures_and_location_maps(model, pair):
    clean, corrupted = pair
    result = attribution_patching(model, clean, corrupted, METRIC, layers=[0, 1], over="cell", video=0)
    time, rows, cols = result.values.shape[1:]
    assert result.normalized().shape == result.values.shape
    assert result.to_image(scale=2).size == (time * rows * cols * 2, 2 * 2)
    fig = patching_figure(result)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        f"layer {la}, vid0[t{k}]" for la in (0, 1) for k in range(time)
    ]
    np.testing.assert_allclose(
        panels[time + 1].images[-1].get_array(), result.values[1, 1].numpy(), rtol=1e-6
    )
    assert "peak at layer" in result._repr_html_()
    step = result.location_map(layer=1, frame=1, normalized=False)
    np.testing.assert_allclose(step.values, result.values[1, 1].numpy())
    assert step.positions == tuple(p for u in result.units[rows * cols : 2 * rows * cols] for p in u)
    with pytest.raises(ValueError, match="pass frame="):
        result.location_map()
    with pytest.raises(ValueError, match="pass frame="):
        result.location_map(frame=time)


def test_choosing_a_video_cannot_be_confused_with_choosing_an_image(model, pair):
    clean, corrupted = pair
    with pytest.raises(ValueError, match="video=0"):  # a video row: over="cell" alone names no image
        activation_patching(model, clean, corrupted, METRIC, layers=[1], over="cell")
    with pytest.raises(ValueError, match="not image="):
        activation_patching(model, clean, corrupted, METRIC, layers=[1], over="frame", image=0)
    with pytest.raises(ValueError, match="not both"):
        attribution_patching(model, clean, corrupted, METRIC, layers=[1], over="cell", image=0, video=0)
    with pytest.raises(ValueError, match="video= chooses"):
        attribution_patching(model, clean, corrupted, METRIC, layers=[1], over="position", video=0)
    with pytest.raises(ValueError, match="does not tile"):
        activation_patching(model, clean, corrupted, METRIC, layers=[1], over="cell", video=0, cell=(3, 1))
    with pytest.raises(ValueError, match="out of range"):
        activation_patching(model, clean, corrupted, METRIC, layers=[1], over="frame", video=1)


@pytest.fixture(scope="module")
def both():
    """One row holding an image and a video (Qwen2-VL)."""
    if "2" not in _MODELS:
        _MODELS["2"] = HookedMLLM.from_hf(t.tiny_qwen2_vl("2"), t.tiny_qwen2_vl_processor(version="2"))
    model = _MODELS["2"]
    return model, model.prepare(
        images=[image(0, 16, 24)], videos=[frames(3, 6, 32, 48)], prompts=[PROMPTS[0]]
    )


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_video_cell_units_follow_index_arithmetic(both, data):
    model, batch = both
    span = batch.videos_of(0)[0]
    assert batch.images_of(0) and (span.time, span.grid) == (3, (3, 4))  # resized to 3 x 4 cells
    cell = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 7)))
    rows, cols = span.grid
    if rows % cell[0] or cols % cell[1]:
        with pytest.raises(ValueError, match="does not tile"):
            _units(model, batch, "cell", None, None, cell, video=0)
        return
    units, labels, grid = _units(model, batch, "cell", None, None, cell, video=0)
    cr, cc = cell
    assert grid == (span.time, rows // cr, cols // cc) and len(units) == len(labels) == int(np.prod(grid))
    first = (
        span.start
    )  # Qwen2-VL: one run of video tokens, cell (t, r, c) at start + (t * rows + r) * cols + c
    for i, (unit, label) in enumerate(zip(units, labels)):
        k, rest = divmod(i, grid[1] * grid[2])
        r, c = divmod(rest, grid[2])
        assert label == f"vid0[t{k} r{r}c{c}]"
        expected = [
            first + (k * rows + r * cr + dr) * cols + c * cc + dc for dr in range(cr) for dc in range(cc)
        ]
        assert unit == expected
        assert all(batch.video_mask[0, p] and not batch.image_mask[0, p] for p in unit)
    image_units, image_labels, _ = _units(model, batch, "cell", None, None, (1, 1))  # image= (default 0)
    assert image_labels[0] == "r0c0" and all(batch.image_mask[0, u[0]] for u in image_units)
