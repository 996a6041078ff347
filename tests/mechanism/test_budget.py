"""Memory budgets: chunked tools equal an unchunked call at every budget; estimates against measured peaks."""

from __future__ import annotations

import weakref

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hooked_mllm import HookedMLLM, geometry
from hooked_mllm.budget import (
    DEFAULT_BUDGET,
    MemoryBudgetError,
    memory_budget,
    parse_memory,
    resolve_budget,
    set_memory_budget,
)
from hooked_mllm.estimate import estimate_tool
from hooked_mllm.mechanism import capture, head_contributions, image_locations, logit_lens_map
from hooked_mllm.testing import random_image, tiny_gemma3, tiny_llava, tiny_processor

BIG = "100GB"


class LiveBytes(TorchDispatchMode):
    """The peak bytes of live tensor storages created inside the ``with`` block (freed storages
    subtract): what the code in the block allocated, measured, not computed from shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self.sizes, self.largest = 0, 0, {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in self.sizes and ptr not in inputs:  # a view of an input is no allocation
                    self.sizes[ptr] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    self.largest = max(self.largest, storage.nbytes())
                    weakref.finalize(storage, self._free, ptr)
        return out

    def _free(self, ptr: int) -> None:
        self.live -= self.sizes.pop(ptr, 0)


_CACHE: dict = {}


def _setup(name: str):
    if name not in _CACHE:
        if name == "llava":
            model = HookedMLLM.from_hf(tiny_llava(), tiny_processor())
            size = 32
        else:  # Gemma 3: grouped-query heads and a post-attention (sandwich) norm
            hf, processor = tiny_gemma3(attn_implementation="eager")
            model, size = HookedMLLM.from_hf(hf, processor), 32
        batch = model.prepare(
            images=[random_image(0, size), random_image(1, size)],
            prompts=["what color is the circle ?", "what ?"],
        )
        _CACHE[name] = model, batch, capture(model, batch)
    return _CACHE[name]


def _smallest(est) -> int:
    """A budget that leaves room for exactly one vector per chunk."""
    return est.result + est.fixed + est.working // est.chunk


def _close(a, b, atol=1e-7):
    """Equal up to float32 rounding: the matrix products' kernels depend on the chunk's shape."""
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=atol)


def _close_maps(a, b):
    """Log-probability differences of about -4 nats each, summed over heads: a few float32 steps."""
    _close(a, b, atol=1e-5)


def test_parse_memory_units_and_errors():
    assert parse_memory("4GB") == 4 * 10**9 and parse_memory("4GiB") == parse_memory("4G") == 4 * 2**30
    assert parse_memory("512 MiB") == 512 * 2**20 and parse_memory(1000) == 1000
    assert parse_memory("1.5kb") == 1500
    for bad in ("four GB", "4XB", 0, -3, True, None, "0MB"):
        with pytest.raises(ValueError, match="memory|budget"):
            parse_memory(bad)
    assert resolve_budget(None) == DEFAULT_BUDGET
    with memory_budget("1MiB") as limit:
        assert limit == resolve_budget(None) == 2**20
        assert resolve_budget("2MiB") == 2 * 2**20  # the call's own argument wins
    assert resolve_budget(None) == DEFAULT_BUDGET
    set_memory_budget("3GB")
    try:
        assert resolve_budget(None) == 3 * 10**9
    finally:
        set_memory_budget(None)
    assert resolve_budget(None) == DEFAULT_BUDGET


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_head_contributions_equal_at_every_budget(family):
    model, batch, run = _setup(family)
    layers, positions = [1, 0, 1], [5, 2, 9, 5, 0]
    whole = head_contributions(model, run, layers=layers, positions=positions, max_memory=BIG)
    # independent: one layer at a time, as MechanismRun.contributions gives it
    expected = torch.stack([run.contributions(l, positions=positions).transpose(0, 1) for l in layers])
    _close(whole, expected)
    est = estimate_tool(model, batch, "head_contributions", layers=layers, positions=positions)
    assert est.result == whole.numel() * whole.element_size()
    assert est.n_vectors == model.cfg.n_heads * len(positions)
    for budget in (_smallest(est), _smallest(est) + 3 * est.working // est.chunk, est.peak - 1):
        chunked = head_contributions(model, run, layers=layers, positions=positions, max_memory=budget)
        _close(chunked, whole)
        assert (
            estimate_tool(
                model, batch, "head_contributions", layers=layers, positions=positions, max_memory=budget
            ).chunk
            < est.chunk
        )
    with pytest.raises(MemoryBudgetError, match="head_contributions cannot fit") as info:
        head_contributions(model, run, layers=layers, positions=positions, max_memory=_smallest(est) - 1)
    assert info.value.estimate.result == est.result and "fewer layers" in str(info.value)


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_image_locations_equal_at_every_budget(family):
    model, batch, run = _setup(family)
    n_heads = model.cfg.n_heads
    pairs = [(1, n_heads - 1), (0, 0), (1, n_heads - 1), (1, 0)]  # repeats count twice
    for heads in ("all", pairs):
        whole = image_locations(model, run, heads=heads, row=None, max_memory=BIG)
        est = estimate_tool(model, batch, "image_locations", heads=heads, row=1)
        for budget in (_smallest(est), _smallest(est) + 5 * est.working // est.chunk):
            chunked = image_locations(model, run, heads=heads, row=None, max_memory=budget)
            for a, b in zip(whole, chunked, strict=True):
                _close_maps(a.values, b.values)
    # independent: the sum of per-head maps, each from its own call
    one_by_one = sum(image_locations(model, run, heads=[p], max_memory=BIG).values for p in pairs)
    _close_maps(image_locations(model, run, heads=pairs, max_memory=BIG).values, one_by_one)
    with pytest.raises(MemoryBudgetError, match="image_locations cannot fit"):
        image_locations(model, run, heads="all", max_memory=_smallest(est) - 1)


@pytest.mark.parametrize("frozen", [False, True])
def test_logit_lens_map_equal_at_every_budget(frozen):
    model, batch, _ = _setup("llava")
    whole = logit_lens_map(model, batch, row=1, tokens=["red", "blue"], frozen=frozen, max_memory=BIG)
    est = estimate_tool(model, batch, "logit_lens_map", row=1, tokens=["red", "blue"], frozen=frozen)
    assert est.chunk == est.n_vectors == whole.probs.shape[1] * whole.probs.shape[2]
    for budget in (_smallest(est), _smallest(est) + 2 * est.working // est.chunk):
        chunked = logit_lens_map(
            model, batch, row=1, tokens=["red", "blue"], frozen=frozen, max_memory=budget
        )
        assert (chunked.tokens == whole.tokens).all()
        _close(chunked.probs, whole.probs)
        for name in whole.token_probs:
            _close(chunked.token_probs[name], whole.token_probs[name])
    with pytest.raises(MemoryBudgetError, match="logit_lens_map"):
        logit_lens_map(
            model, batch, row=1, tokens=["red", "blue"], frozen=frozen, max_memory=_smallest(est) - 1
        )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_any_budget_gives_the_same_contributions_and_map(data):
    model, batch, run = _setup("llava")
    n_layers, seq = model.cfg.n_layers, batch.input_ids.shape[1]
    layers = data.draw(st.lists(st.integers(-n_layers, n_layers - 1), min_size=1, max_size=4))
    positions = data.draw(st.lists(st.integers(0, seq - 1), min_size=1, max_size=8))
    est = estimate_tool(model, batch, "head_contributions", layers=layers, positions=positions)
    budget = data.draw(st.integers(_smallest(est), est.peak + 10))
    _close(
        head_contributions(model, run, layers=layers, positions=positions, max_memory=budget),
        head_contributions(model, run, layers=layers, positions=positions, max_memory=BIG),
    )
    loc = estimate_tool(model, batch, "image_locations", heads="all")
    budget = data.draw(st.integers(_smallest(loc), loc.peak + 10))
    _close_maps(
        image_locations(model, run, heads="all", max_memory=budget).values,
        image_locations(model, run, heads="all", max_memory=BIG).values,
    )


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_estimate_bounds_the_measured_peak(family):
    """The peak of live tensors measured during real calls stays within the estimate, and the estimate
    within the budget; at a budget of one vector per chunk the largest tensor shrinks to one vector's."""
    model, batch, run = _setup(family)
    for tool, call, kwargs in (
        ("head_contributions", head_contributions, dict(layers=[0, 1, 1])),
        ("image_locations", image_locations, dict(heads="all")),
    ):
        full = estimate_tool(model, batch, tool, **kwargs)
        for budget in (full.peak, _smallest(full)):
            est = estimate_tool(model, batch, tool, max_memory=budget, **kwargs)
            with LiveBytes() as seen:
                out = call(model, run, max_memory=budget, **kwargs)
            del out
            assert est.peak <= budget
            assert seen.peak <= est.peak, (tool, budget, seen.peak, est)
            assert seen.peak >= est.result
        if tool == "image_locations":  # one vector's logits, not the whole chunk's
            assert seen.largest < 2 * 4 * model.cfg.d_vocab + 4 * est.fixed
    # the forward's captured tensors: what capture() holds
    held = sum(
        t.numel() * 4 for t in (run.pattern, run.v, run.resid_pre, run.attn_out, run.mlp_out, run.final)
    )
    assert full.capture == held


def test_estimates_on_a_real_size_preset_without_weights():
    model = geometry.build("llava-1.5-7b")
    batch = geometry.prepare(model, "llava-1.5-7b", (640, 480))
    cfg = model.cfg
    est = estimate_tool(model, batch, "image_locations", heads="all")
    n_image = int(batch.image_mask.sum())
    assert est.n_vectors == cfg.n_layers * cfg.n_heads * n_image and est.chunk < est.n_vectors
    assert est.peak <= DEFAULT_BUDGET and est.fixed >= cfg.d_vocab * cfg.d_model * 4  # bfloat16 weights
    with pytest.raises(MemoryBudgetError, match="fewer layers") as info:
        estimate_tool(model, batch, "head_contributions")  # every layer, head and position: too big
    assert (
        info.value.estimate.result == 4 * cfg.n_layers * cfg.n_heads * batch.input_ids.numel() * cfg.d_model
    )
    one = estimate_tool(model, batch, "head_contributions", layers=[16], positions=list(range(n_image)))
    assert one.peak <= DEFAULT_BUDGET
    cache = estimate_tool(model, batch, "run_with_cache", names_filter="blocks.0.hook_resid_post")
    assert cache.nbytes == batch.input_ids.numel() * cfg.d_model * 2
    with pytest.raises(ValueError, match="knows"):
        estimate_tool(model, batch, "nope")
    with pytest.raises(ValueError, match="takes no"):
        estimate_tool(model, batch, "head_contributions", heads="all")
