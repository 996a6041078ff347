"""Notebook HTML of results, and the report page: self-contained, world-readable, atomic."""

from __future__ import annotations

import os
import re
import stat

import numpy as np
import torch
from PIL import Image

from hooked_mllm.concepts import KMeansConcepts, SteeringReport, analyze_shift
from hooked_mllm.patching import PatchingResult, activation_patching, logit_diff
from hooked_mllm.testing import random_image
from hooked_mllm.viz import Report, attention_heads, logit_lens_grid, patching_figure, steering_dose_figure


def test_patching_result_shows_cells_per_layer(run):
    model, _, _, _, _ = run
    clean = model.prepare(images=[random_image(0)], prompts=["what color is the circle ?"])
    corrupted = model.prepare(images=[random_image(1)], prompts=["what color is the circle ?"])
    result = activation_patching(model, clean, corrupted, logit_diff(5, 6), over="cell", layers=[0, 2])
    html = result._repr_html_()
    layer, unit = result.peak()
    assert f"peak at layer {layer}, {result.labels[unit]}" in html and html.count("<img") == 1
    fig = patching_figure(result, random_image(0))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["layer 0", "layer 2"]
    np.testing.assert_allclose(panels[1].images[-1].get_array(), result.values[1].numpy(), rtol=1e-6)
    normalized = patching_figure(result, normalized=True)
    got = [ax for ax in normalized.axes if ax.get_title()][0].images[-1].get_array()
    np.testing.assert_allclose(got, result.normalized()[0].numpy(), rtol=1e-6)


def test_position_sweep_figure_labels_units():
    values = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]])
    result = PatchingResult(
        values=values,
        hook="blocks.{l}.hook_resid_pre",
        layers=[0, 1],
        over="position",
        labels=["0:a", "1:b", "2:c"],
        units=[[0], [1], [2]],
        clean_metric=2.0,
        corrupted_metric=0.0,
        forward_passes=8,
        rows=8,
    )
    fig = patching_figure(result)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0:a", "1:b", "2:c"]
    assert "peak at layer 1, 0:a (2.000)" in result._repr_html_()


def test_shift_and_steering_reports_show_their_numbers():
    rng = np.random.default_rng(0)
    A = np.repeat(np.eye(3) * 10, 6, axis=0) + rng.normal(0, 0.1, (18, 3))
    B = A + np.repeat([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]], 6, axis=0)
    result = analyze_shift(A, B, KMeansConcepts(3, random_state=0), KMeansConcepts(3, random_state=0))
    html = result._repr_html_()
    assert f"{result.mean_consistency:.3f}" in html and html.count("<tr>") == 4
    assert f"{result.improvement.mean_distance_gain:.3f}" in html
    glob = result.baselines["global_mean_shift"]["mean_distance_gain"]
    assert (
        f"baseline global mean shift: {glob:.3f} in distance" in html and "baseline random assignment" in html
    )
    report = SteeringReport(
        target_rate=0.75,
        target_rate_before=0.0,
        other_accuracy_before=1.0,
        other_accuracy_after=0.5,
        answers=[("is there a red circle ?", "yes", "yes", "no")],
    )
    html = report._repr_html_()
    assert "0.00 &rarr; 0.75" in html and "1.00 &rarr; 0.50" in html and "1 of 1" in html
    fig = steering_dose_figure([0.0, 1.0], [report, report])
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[0.75, 0.75], [0.5, 0.5]]


def test_report_is_self_contained_readable_and_atomic(run, tmp_path):
    model, _, cache, _, images = run
    report = Report("views <&>")
    report.section("1. Attention", "What the heads look at.")
    report.attention(attention_heads(cache, 0, image=images[0])).attention(attention_heads(cache, 1))
    report.section("2. Lens", "Top tokens.").html(logit_lens_grid(model, cache).to_html())
    report.image(Image.new("RGB", (4, 4)), caption="tiny").figure(
        steering_dose_figure([0, 1], [0, 1], [1, 1])
    )
    os.umask(0o077)  # even a strict umask leaves the report readable by others
    try:
        path = report.save(tmp_path / "out")
    finally:
        os.umask(0o022)
    html = path.read_text(encoding="utf-8")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
    assert html.count("var CircuitsVis") == 1 and html.count("CircuitsVis.render(") == 2
    assert (
        "<title>views &lt;&amp;&gt;</title>" in html and "<p class='what'>What the heads look at.</p>" in html
    )
    assert not re.search(r"""(src|href)=["']https?:""", html) and "unpkg" not in html
    assert html.count("data:image/png;base64,") >= 3
    assert "CircuitsVis" not in Report("plain").text("x").render()
