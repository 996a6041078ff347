"""Property-based checks: random position, layer, head and cell selections give what separate calls give,
in the order asked, repeats kept (``hypothesis``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hooked_mllm import HookedMLLM  # noqa: E402
from hooked_mllm._decomposition import ResidDecomposition  # noqa: E402
from hooked_mllm.mechanism import capture, explain_positions, head_contributions  # noqa: E402
from hooked_mllm.mechanism.scores import head_location_scores, layer_list  # noqa: E402
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor  # noqa: E402

SETTINGS = settings(
    max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
FEW = settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model():
    return HookedMLLM.from_hf(tiny_llava("llama", seed=2), tiny_processor())


@pytest.fixture(scope="module")
def batch(model):
    return model.prepare(images=[random_image(8)], prompts=["is there a red square ?"])


@pytest.fixture(scope="module")
def cache(model, batch):
    return model.run_with_cache(batch)[1]


@pytest.fixture(scope="module")
def run(model, batch):
    return capture(model, batch)


def positions(length):
    return st.lists(st.integers(-length, length - 1), min_size=1, max_size=6)


def pos_slices(length):
    return st.one_of(
        st.none(),
        st.integers(-length, length - 1),
        positions(length),
        st.builds(
            slice,
            st.integers(-length, length),
            st.integers(-length, length),
            st.sampled_from([None, 1, 2, 3]),
        ),
        st.tuples(st.integers(0, length), st.integers(0, length)),
    )


@given(selection=pos_slices(12))
@SETTINGS
def test_pos_slice_is_read_as_transformer_lens_reads_it(selection):
    slicing = pytest.importorskip("transformer_lens.utilities.slice")
    tensor = torch.arange(2 * 12 * 3).reshape(2, 12, 3)
    expected = slicing.Slice(selection).apply(tensor, dim=-2)
    assert torch.equal(ResidDecomposition._pos(tensor, selection), expected)


@given(data=st.data())
@SETTINGS
def test_cache_stacks_over_a_list_of_positions_are_the_single_positions(cache, batch, data):
    chosen = data.draw(positions(batch.input_ids.shape[1]))
    for method in (
        "accumulated_resid",
        "decompose_resid",
        "stack_head_results",
        "get_full_resid_decomposition",
    ):
        together = getattr(cache, method)(pos_slice=chosen)
        alone = torch.stack([getattr(cache, method)(pos_slice=p) for p in chosen], dim=-2)
        torch.testing.assert_close(together, alone, msg=method)
    tokens = torch.tensor([5])
    together = cache.logit_attrs(cache.decompose_resid(pos_slice=chosen), tokens, pos_slice=chosen)
    for i, p in enumerate(chosen):
        one = cache.logit_attrs(cache.decompose_resid(pos_slice=p), tokens, pos_slice=p)
        torch.testing.assert_close(together[..., i], one)


@given(data=st.data())
@FEW
def test_run_with_cache_positions_are_the_positions_asked(model, batch, cache, data):
    chosen = data.draw(positions(batch.input_ids.shape[1]))
    _, cut = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_post", positions=chosen)
    torch.testing.assert_close(cut["resid_post", 1], cache["resid_post", 1][:, chosen], atol=1e-6, rtol=1e-5)


@given(layers=st.lists(st.integers(-4, 3), min_size=1, max_size=5))
@SETTINGS
def test_layer_list_keeps_order_and_repeats(layers):
    assert layer_list(layers, 4) == [l % 4 for l in layers]
    assert layer_list(layers, 4, unique=True) == list(dict.fromkeys(l % 4 for l in layers))


@given(data=st.data())
@SETTINGS
def test_head_contributions_over_random_layers_and_positions(model, run, data):
    n = model.cfg.n_layers
    layers = data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4))
    chosen = data.draw(positions(run.v.shape[2]))
    together = head_contributions(model, run, layers=layers, positions=chosen)
    full = head_contributions(model, run)
    for i, layer in enumerate(layers):
        torch.testing.assert_close(together[i], full[layer % n][:, :, chosen])


@given(data=st.data())
@SETTINGS
def test_head_location_scores_are_sums_of_single_heads_and_positions(model, run, data):
    heads = data.draw(
        st.lists(
            st.tuples(st.integers(0, model.cfg.n_layers - 1), st.integers(0, model.cfg.n_heads - 1)),
            min_size=1,
            max_size=4,
        )
    )
    chosen = data.draw(positions(run.v.shape[2]).map(lambda ps: [p % run.v.shape[2] for p in ps]))
    together = head_location_scores(run, 0, heads, chosen)
    alone = sum(torch.stack([head_location_scores(run, 0, [h], [p]) for p in chosen])[:, 0] for h in heads)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@given(cells=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=4))
@FEW
def test_explain_positions_over_random_cells(model, batch, cells):
    together = explain_positions(model, batch, cells, layer=2, head=1, k=3)
    assert [e.cell for e in together.positions] == cells
    for cell, entry in zip(cells, together.positions):
        alone = explain_positions(model, batch, [cell], layer=2, head=1, k=3).positions[0]
        assert entry.position == alone.position
        for part, top in entry.parts.items():
            assert [t for t, _ in top] == [t for t, _ in alone.parts[part]]
            assert np.allclose([p for _, p in top], [p for _, p in alone.parts[part]], atol=1e-5)
