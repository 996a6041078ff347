"""Property-based checks for patching sweeps and attention views: a random selection of layers, positions and
heads (unordered, repeats included) gives, entry by entry, what one call per entry gives (``hypothesis``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hooked_mllm import HookedMLLM  # noqa: E402
from hooked_mllm.patching import activation_patching, attribution_patching, logit_diff  # noqa: E402
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor  # noqa: E402
from hooked_mllm.viz import attention_heads, token_labels  # noqa: E402

FEW = settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model():
    return HookedMLLM.from_hf(tiny_llava("llama", seed=3, attn_implementation="eager"), tiny_processor())


@pytest.fixture(scope="module")
def pair(model):
    prompt = ["what color is the circle ?"]
    return model.prepare(images=[random_image(1)], prompts=prompt), model.prepare(
        images=[random_image(2)], prompts=prompt
    )


@pytest.fixture(scope="module")
def metric():
    return logit_diff(5, 9)


def selection(n: int, size: int = 4):
    return st.lists(st.integers(0, n - 1), min_size=1, max_size=size)


@FEW
@given(data=st.data())
@pytest.mark.parametrize("sweep", [activation_patching, attribution_patching])
def test_patching_over_random_layers_and_positions_is_one_call_per_entry(model, pair, metric, sweep, data):
    clean, corrupted = pair
    length = clean.inputs["input_ids"].shape[1]
    layers = data.draw(selection(model.cfg.n_layers, 2), label="layers")
    positions = data.draw(selection(length, 3), label="positions")
    result = sweep(model, clean, corrupted, metric, hook="resid_pre", layers=layers, positions=positions)
    assert result.layers == layers and result.values.shape == (len(layers), len(positions))
    for i, layer in enumerate(layers):
        for j, position in enumerate(positions):
            alone = sweep(
                model, clean, corrupted, metric, hook="resid_pre", layers=[layer], positions=[position]
            )
            torch.testing.assert_close(result.values[i, j], alone.values[0, 0], rtol=1e-5, atol=1e-5)


@FEW
@given(data=st.data())
def test_attention_view_over_random_positions_and_heads_is_the_pattern_at_them(model, pair, data):
    batch = pair[0]
    length = batch.inputs["input_ids"].shape[1]
    _, cache = model.run_with_cache(batch, names_filter="blocks.1.attn.hook_pattern")
    positions = data.draw(selection(length, 6), label="positions")
    heads = data.draw(selection(model.cfg.n_heads), label="heads")
    view = attention_heads(cache, layer=1, batch=batch, positions=positions, heads=heads)
    pattern = cache["blocks.1.attn.hook_pattern"][0]  # [heads, query, key], read directly
    expected = np.array([[[float(pattern[h, q, k]) for k in positions] for q in positions] for h in heads])
    assert np.allclose(np.asarray(view.props["attention"]), expected, atol=1e-5)
    labels = token_labels(batch, 0)
    assert view.props["tokens"] == [labels[p] for p in positions]
    assert view.props["attentionHeadNames"] == [f"L1H{h}" for h in heads]
