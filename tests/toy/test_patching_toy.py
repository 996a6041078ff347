"""Patching on the trained toy model, where the truth is known (which cell holds the object)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hooked_mllm.patching import activation_patching, attribution_patching, correlation, logit_diff


@pytest.fixture(scope="module")
def toy_model():
    from hooked_mllm import toy

    return toy.load("toy-llava")


def recoloured_pairs(model, n):
    from hooked_mllm.toy.world import COLORS, World

    tok = model.processor.tokenizer
    out = []
    for scene in World(seed=777):
        if len(out) == n:
            break
        if len(scene.objects) < 2 or not scene.questions_of("color"):
            continue
        qa = scene.questions_of("color")[0]
        target = next(o for o in scene.objects if o.shape in qa.question.split() and o.color == qa.answer)
        new = next(c for c in COLORS if c not in {o.color for o in scene.objects})
        pixels = np.array(scene.image)
        pixels[target.mask] = COLORS[new]
        clean = model.prepare(images=[scene.image], prompts=[qa.question])
        corrupted = model.prepare(images=[Image.fromarray(pixels)], prompts=[qa.question])
        ids = [tok.convert_tokens_to_ids(c) for c in (target.color, new)]
        out.append((clean, corrupted, ids, target.cell, new))
    return out


def test_object_cell_carries_the_colour(toy_model):
    peaks, corr = [], []
    for clean, corrupted, (good, bad), cell, _new in recoloured_pairs(toy_model, 3):
        metric = logit_diff(good, bad)
        sweep = activation_patching(
            toy_model, clean, corrupted, metric, hook="resid_pre", over="cell", cell=(2, 2), layers=[0, 1]
        )
        assert sweep.clean_metric > 0 > sweep.corrupted_metric
        row, col = cell
        layer0 = sweep.values[0]
        assert layer0[row, col] > 0 and layer0[row, col] == layer0.max()  # only the object's cell flips it
        others = layer0.clone()
        others[row, col] = float("-inf")
        assert float(others.max()) < 0
        peaks.append(sweep.labels[sweep.peak()[1]] == f"r{row}c{col}")
        approx = attribution_patching(
            toy_model, clean, corrupted, metric, hook="resid_pre", over="cell", cell=(2, 2), layers=[0, 1]
        )
        corr.append(correlation(approx.values, sweep.values))
    print(f"attribution vs activation patching correlation (resid_pre, image cells): {corr}")
    assert all(peaks)
    assert min(corr) >= 0.8
    clean, corrupted, (good, bad), _, _ = recoloured_pairs(toy_model, 1)[0]
    metric = logit_diff(good, bad)
    for hook in ("resid_mid", "resid_post", "attn_out", "mlp_out"):
        exact = activation_patching(toy_model, clean, corrupted, metric, hook=hook, over="cell", cell=(2, 2))
        approx = attribution_patching(
            toy_model, clean, corrupted, metric, hook=hook, over="cell", cell=(2, 2)
        )
        print(
            f"attribution vs activation patching correlation ({hook}, image cells): "
            f"{correlation(approx.values, exact.values):.3f}"
        )
