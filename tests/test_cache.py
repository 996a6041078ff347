"""ActivationCache helpers checked against HF's logits and the model's own norm modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def full(hooked, batch):
    logits, cache = hooked.run_with_cache(batch)
    return logits, cache


def test_getitem_forms_and_errors(hooked, full):
    _, cache = full
    assert cache["resid_post", 1] is cache["blocks.1.hook_resid_post"]
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert ("resid_post", 1) in cache and "blocks.1.hook_resid_post" in cache
    _, partial = hooked.run_with_cache(cache.batch, names_filter="blocks.0.hook_resid_post")
    with pytest.raises(KeyError, match="was not cached"):
        partial["resid_post", 1]
    with pytest.raises(KeyError, match="not a hook name"):
        partial["blocks.0.hook_resid_pots"]


def test_decompose_resid_sums_to_final_residual(hooked, full):
    _, cache = full
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and labels[-1] == f"{hooked.cfg.n_layers - 1}_mlp_out"
    assert stack.shape[0] == 1 + 2 * hooked.cfg.n_layers
    torch.testing.assert_close(
        stack.sum(0), cache["resid_post", hooked.cfg.n_layers - 1], atol=1e-5, rtol=1e-5
    )
    acc = cache.accumulated_resid()
    assert acc.shape[0] == hooked.cfg.n_layers + 1
    torch.testing.assert_close(acc[1], cache["resid_pre", 1])


def test_apply_ln_and_logit_attrs_rebuild_hf_logits(hooked, full, batch):
    logits, cache = full
    stack = cache.decompose_resid()
    normed = cache.apply_ln_to_stack(stack)
    torch.testing.assert_close(normed.sum(0), cache["ln_final.hook_normalized"], atol=1e-5, rtol=1e-4)
    tokens = torch.tensor([5, 9])
    attrs = cache.logit_attrs(stack, tokens)
    assert attrs.shape == stack.shape[:-1]
    expected = logits[torch.arange(2), :, tokens]
    torch.testing.assert_close(attrs.sum(0), expected, atol=1e-4, rtol=1e-4)
    diff = cache.logit_attrs(stack, tokens, incorrect_tokens=torch.tensor([7, 7]))
    torch.testing.assert_close(diff.sum(0), expected - logits[:, :, 7], atol=1e-4, rtol=1e-4)


def test_stack_head_results_sum_to_attention_output(hooked, full):
    _, cache = full
    n_heads = hooked.cfg.n_heads
    heads, labels = cache.stack_head_results(layer=2, return_labels=True)
    assert heads.shape[0] == 2 * n_heads and labels[n_heads] == "L1H0"
    torch.testing.assert_close(heads[n_heads:].sum(0), cache["attn_out", 1], atol=1e-5, rtol=1e-4)
    with_rest = cache.stack_head_results(layer=2, incl_remainder=True)
    torch.testing.assert_close(with_rest.sum(0), cache["resid_pre", 2], atol=1e-5, rtol=1e-4)


def test_stack_activation(hooked, full):
    _, cache = full
    stacked = cache.stack_activation("resid_post")
    assert stacked.shape[0] == hooked.cfg.n_layers
    torch.testing.assert_close(stacked[2], cache["resid_post", 2])


def test_image_view_grid(hooked, full, batch):
    _, cache = full
    grid = cache.image("blocks.0.hook_resid_pre")
    assert grid.shape == (2, 4, 4, hooked.cfg.d_model)
    torch.testing.assert_close(grid[0].flatten(0, 1), cache["projector.hook_out"][0])
