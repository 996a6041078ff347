"""The same TransformerLens calls on TransformerLens 4.3's ``TransformerBridge`` and on ``HookedMLLM``.

Both wrap one tiny random LLaVA checkpoint (Llama LM with grouped-query attention), saved
locally and booted offline (``tests/tl_bridge.py``), and run one two-row batch with
padding; every comparison is on the rows' non-padding positions.
"""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor

pytest.importorskip("transformer_lens")
import tl_bridge  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava-parity")
    tiny_llava("llama", seed=7).save_pretrained(path)
    tiny_processor().save_pretrained(path)
    ours = HookedMLLM.from_pretrained(str(path))
    bridge = tl_bridge.load_bridge(str(path), tokenizer=ours.processor.tokenizer)
    return ours, bridge


@pytest.fixture(scope="module")
def caches(pair):
    ours, bridge = pair
    batch = ours.prepare(
        images=[random_image(5), random_image(6)],
        prompts=["what color is the circle ?", "is there a red square ?"],
    )
    _, mine = ours.run_with_cache(batch)
    _, theirs = tl_bridge.bridge_run_with_cache(
        bridge,
        None,
        input_ids=batch.input_ids,
        pixel_values=batch.inputs["pixel_values"],
        attention_mask=batch.attention_mask,
    )
    return mine, theirs, ~batch.pad_mask, batch


def masked(x, keep, batch_axis):
    """``x`` with padding positions zeroed; batch at ``batch_axis``, position right after it."""
    shape = [1] * x.dim()
    shape[batch_axis], shape[batch_axis + 1] = keep.shape
    return x * keep.view(shape).to(x.dtype)


@pytest.mark.parametrize(
    "key",
    [
        ("resid_post", -1),
        ("resid_pre", -2),
        ("attn_out", -3),
        ("mlp_out", 1),
        ("k0",),
        ("v", -1),
        ("q", 2),
        ("z", 1),
        ("mlp_post", 1),
        ("post2",),
        ("mlp_pre", 0),
        ("normalized", 0, "ln2"),
        ("normalized", 1, "ln1"),
        ("normalized",),
        ("resid_mid", 2),
        ("embed",),
    ],
)
def test_act_name_keys_give_the_same_tensors(caches, key):
    mine, theirs, keep, _ = caches
    a, b = mine[key], theirs[key]
    assert a.shape == b.shape, key
    torch.testing.assert_close(masked(a, keep, 0), masked(b, keep, 0), atol=ATOL, rtol=RTOL)


def test_attention_pattern_alias(caches):
    mine, theirs, keep, _ = caches
    for layer in (0, -1):
        a, b = mine["attn", layer], theirs["attn", layer]
        assert a.shape == b.shape
        rows = keep[:, None, :, None] & keep[:, None, None, :]
        torch.testing.assert_close(a * rows, b * rows, atol=ATOL, rtol=RTOL)
    with pytest.raises(KeyError, match="hook_pattern"):
        mine["attn_scores", 0]
    assert theirs["attn_scores", 0].shape == mine["attn", 0].shape  # the bridge has it; we refuse it


def test_compute_head_results(caches, pair):
    mine, theirs, keep, _ = caches
    mine.compute_head_results()
    theirs.compute_head_results()
    for layer in range(pair[0].cfg.n_layers):
        torch.testing.assert_close(
            masked(mine["result", layer], keep, 0),
            masked(theirs["result", layer], keep, 0),
            atol=ATOL,
            rtol=RTOL,
        )


@pytest.mark.parametrize("pos_slice", [None, -1, slice(-3, None)])
def test_stack_helpers_with_pos_slice(caches, pos_slice):
    mine, theirs, keep, batch = caches
    text = keep & ~batch.image_mask

    def cut(mask):
        return mask if pos_slice is None else mask[:, pos_slice]

    for call in (
        lambda c: c.accumulated_resid(pos_slice=pos_slice, return_labels=True),
        lambda c: c.decompose_resid(pos_slice=pos_slice, return_labels=True),
        lambda c: c.stack_head_results(pos_slice=pos_slice, return_labels=True),
        lambda c: c.stack_neuron_results(2, pos_slice=pos_slice, return_labels=True),
    ):
        (a, la), (b, lb) = call(mine), call(theirs)
        assert a.shape == b.shape and la == lb
        for i, label in enumerate(la):  # the bridge's "embed" is hook_embed: no image features in it
            mask = cut(text if label == "embed" else keep)
            torch.testing.assert_close(a[i] * mask[..., None], b[i] * mask[..., None], atol=ATOL, rtol=RTOL)


def test_full_resid_decomposition(caches, pair):
    mine, theirs, keep, batch = caches
    text = keep & ~batch.image_mask  # the bridge's "embed" is hook_embed: image features are not in it
    for kwargs in ({}, {"layer": 1, "mlp_input": True}, {"expand_neurons": False}):
        a, la = mine.get_full_resid_decomposition(return_labels=True, **kwargs)
        b, lb = theirs.get_full_resid_decomposition(return_labels=True, **kwargs)
        assert la == lb and a.shape == b.shape
        torch.testing.assert_close(masked(a, text, 1), masked(b, text, 1), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(masked(a[:-2], keep, 1), masked(b[:-2], keep, 1), atol=ATOL, rtol=RTOL)


def test_batch_dim_helpers(caches):
    mine, theirs, keep, _ = caches
    a, b = mine.apply_slice_to_batch_dim(1), theirs.apply_slice_to_batch_dim(1)
    assert a.has_batch_dim == b.has_batch_dim is False
    torch.testing.assert_close(
        a["resid_post", -1][keep[1]], b["resid_post", -1][keep[1]], atol=ATOL, rtol=RTOL
    )
    a, b = mine.apply_slice_to_batch_dim(slice(0, 1)), theirs.apply_slice_to_batch_dim(slice(0, 1))
    assert a["z", 0].shape == b["z", 0].shape
    a.remove_batch_dim(), b.remove_batch_dim()
    assert a.has_batch_dim == b.has_batch_dim is False and a["z", 0].shape == b["z", 0].shape
    torch.testing.assert_close(a["pattern", 0], b["pattern", 0], atol=ATOL, rtol=RTOL)


def test_weights(pair):
    ours, bridge = pair
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out", "W_E", "W_U", "b_U"):
        a, b = getattr(ours, name), getattr(bridge, name)
        assert a.shape == b.shape, name
        torch.testing.assert_close(a[...] if name[2:] not in ("E", "U") else a, b, atol=0, rtol=0)
    for name in (
        "b_Q",
        "b_K",
        "b_V",
        "b_O",
        "b_in",
        "b_out",
    ):  # bias-free here: zeros ours, AttributeError theirs
        with pytest.raises(AttributeError):
            getattr(bridge, name)
        assert not getattr(ours, name).full().any()


def test_token_helpers(pair):
    ours, bridge = pair
    for text in ("what color is the circle ?", "red"):
        assert torch.equal(ours.to_tokens(text), bridge.to_tokens(text))
        assert torch.equal(ours.to_tokens(text, prepend_bos=False), bridge.to_tokens(text, prepend_bos=False))
        assert ours.to_str_tokens(text) == bridge.to_str_tokens(text)
    two = ["what color is the circle ?", "red"]
    assert torch.equal(ours.to_tokens(two), bridge.to_tokens(two))
    ids = ours.to_tokens("what color")[0]
    assert ours.to_string(ids) == bridge.to_string(ids)
    assert ours.to_str_tokens(ids) == bridge.to_str_tokens(ids)
    assert ours.to_single_token("red") == bridge.to_single_token("red")
