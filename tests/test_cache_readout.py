"""A cache without its model: the readout it carries, saving, loading and moving.

The cache's helpers are computed before the model is freed, the model is freed (checked with a
weak reference), and the saved cache, loaded into a fresh object, must give the same results and
agree with the HF model's own norm and LM head applied to the cached residual.
"""

from __future__ import annotations

import gc
import os
import stat
import weakref

import pytest
import torch

from hooked_mllm import ActivationCache, HookedMLLM
from hooked_mllm.readout import CacheReadout
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


def _helpers(cache: ActivationCache, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    stack = cache.decompose_resid()
    return {
        "decompose": stack,
        "decompose_ln": cache.decompose_resid(apply_ln=True),
        "accumulated_ln": cache.accumulated_resid(apply_ln=True, incl_mid=True),
        "accumulated_ln_layer1": cache.accumulated_resid(layer=1, apply_ln=True),
        "logit_attrs": cache.logit_attrs(stack, tokens, incorrect_tokens=torch.tensor([7, 7])),
        "heads": cache.stack_head_results(apply_ln=True),
        "full": cache.get_full_resid_decomposition(),
        "neurons_mlp_input": cache.stack_neuron_results(1, apply_ln=True, mlp_input=True),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``(path, originals, independent, tokens)``: a cache saved after its model was freed."""
    hf = tiny_llava("llama", seed=3)
    model = HookedMLLM.from_hf(hf, tiny_processor())
    batch = model.prepare(
        images=[random_image(0), random_image(1)], prompts=["what color is the circle ?", "how many objects"]
    )
    logits, cache = model.run_with_cache(batch)
    tokens = torch.tensor([5, 9])
    originals = _helpers(cache, tokens)
    with torch.no_grad():  # the HF model's own final norm and LM head on the cached residual
        resid = cache["resid_post", -1]
        normed = hf.model.language_model.norm(resid)
        independent = {
            "normed": normed,
            "logits": hf.lm_head(normed),
            "run_logits": logits,
            "o_proj": hf.model.language_model.layers[1].self_attn.o_proj.weight.clone(),
        }
    ref = weakref.ref(model)
    del model, hf, batch, logits
    gc.collect()
    assert ref() is None, "the cache (or something it holds) keeps the model alive"
    path = tmp_path_factory.mktemp("cache") / "run.cache"
    cache.save(path)
    originals["store"] = dict(cache)
    return path, originals, independent, tokens


def test_saved_file_is_atomic_and_readable(saved):
    path, *_ = saved
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_loaded_cache_equals_the_original(saved):
    path, originals, independent, tokens = saved
    loaded = ActivationCache.load(path)
    assert isinstance(loaded.readout, CacheReadout) and loaded.readout.n_layers == 3
    assert set(loaded) == set(originals["store"])
    for name, value in originals["store"].items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)
    for name, value in _helpers(loaded, tokens).items():
        torch.testing.assert_close(value, originals[name], rtol=0, atol=0, msg=name)


def test_loaded_cache_agrees_with_the_hf_modules(saved):
    path, _, independent, tokens = saved
    loaded = ActivationCache.load(path)
    stack = loaded.decompose_resid()
    torch.testing.assert_close(
        loaded.apply_ln_to_stack(stack).sum(0), independent["normed"], atol=1e-5, rtol=1e-4
    )
    attrs = loaded.logit_attrs(stack, tokens)
    rows = torch.arange(2)
    torch.testing.assert_close(attrs.sum(0), independent["logits"][rows, :, tokens], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(attrs.sum(0), independent["run_logits"][rows, :, tokens], atol=1e-4, rtol=1e-4)
    # Head results: hook_z times the o_proj weight, split by head by hand.
    z = loaded["z", 1]
    w = independent["o_proj"]  # [d_model, n_heads * d_head]
    by_hand = torch.einsum("bphd,mhd->bphm", z, w.reshape(w.shape[0], z.shape[-2], z.shape[-1]))
    heads = loaded.stack_head_results(layer=2)[z.shape[-2] :]
    torch.testing.assert_close(heads, by_hand.movedim(2, 0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(heads.sum(0), loaded["attn_out", 1], atol=1e-5, rtol=1e-4)


def test_loaded_cache_keeps_its_batch_views(saved):
    path, originals, *_ = saved
    loaded = ActivationCache.load(path)
    grid = loaded.image("blocks.0.hook_resid_pre")
    assert grid.shape == (2, 4, 4, loaded.readout.d_model)
    torch.testing.assert_close(grid[0].flatten(0, 1), loaded["projector.hook_out"][0])
    row = loaded.apply_slice_to_batch_dim(1)
    assert not row.has_batch_dim and len(row.batch) == 1
    torch.testing.assert_close(row["resid_post", 0], originals["store"]["blocks.0.hook_resid_post"][1])
    text = loaded.text(("resid_post", 0))
    resid = originals["store"]["blocks.0.hook_resid_post"]
    for r in range(2):
        expected = resid[r][loaded.batch.text_mask[r]]
        got = text[r] if isinstance(text, list) else text[r]
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_string_tokens_need_a_tokenizer_after_loading(saved):
    path, *_ = saved
    loaded = ActivationCache.load(path)
    stack = loaded.decompose_resid(pos_slice=-1)
    with pytest.raises(ValueError, match="tokenizer"):
        loaded.logit_attrs(stack, "red", pos_slice=-1)
    tokenizer = tiny_processor().tokenizer
    with_tok = ActivationCache.load(path, tokenizer=tokenizer)
    token = tokenizer.encode("red", add_special_tokens=False)
    assert len(token) == 1
    torch.testing.assert_close(
        with_tok.logit_attrs(stack, "red", pos_slice=-1), with_tok.logit_attrs(stack, token[0], pos_slice=-1)
    )


def test_to_moves_activations_and_readout(saved):
    path, *_ = saved
    moved = ActivationCache.load(path).to("meta")
    assert all(value.device.type == "meta" for value in moved.values())
    readout = moved.readout
    assert readout.W_U.device.type == "meta" and readout.ln_final.weight.device.type == "meta"
    assert all(w.device.type == "meta" for w in readout.W_O)


def test_not_a_cache_and_no_model(saved, tmp_path):
    path, *_ = saved
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a saved ActivationCache"):
        ActivationCache.load(other)
    loaded = ActivationCache.load(path)
    with pytest.raises(AttributeError, match="does not hold the model"):
        loaded.model  # noqa: B018 (the access is what raises)
    with pytest.raises(TypeError, match="CacheReadout"):
        ActivationCache({}, object())  # type: ignore[arg-type]


def test_readout_is_reused_until_a_weight_is_replaced():
    hf = tiny_llava("llama", seed=4)
    model = HookedMLLM.from_hf(hf, tiny_processor())
    first = model.readout()
    assert model.readout() is first
    assert first.W_U.data_ptr() == hf.lm_head.weight.data_ptr()  # a view, not a copy
    with torch.no_grad():
        hf.lm_head.weight.mul_(2)  # in place: the views see it
    assert model.readout() is first
    torch.testing.assert_close(first.W_U, hf.lm_head.weight.T)
    hf.lm_head.weight.data = hf.lm_head.weight.data.clone() * 3  # new storage: a new readout
    second = model.readout()
    assert second is not first
    torch.testing.assert_close(second.W_U, hf.lm_head.weight.T)
