"""TransformerLens habits on our side: cache keys and helpers, weight attributes, tokens.

Every identity is checked against values the model computed itself (cached hook points,
HF's own projections and logits) or a plain-torch recomputation from the HF modules.
"""

from __future__ import annotations

import pytest
import torch

from hooked_mllm.hook_points import act_name


@pytest.fixture
def full(hooked, batch):
    return hooked.run_with_cache(batch)


def test_act_name_matches_transformer_lens():
    from transformer_lens.utilities.components_utils import get_act_name

    for args in [
        ("k6",),
        ("scale4ln1",),
        ("pre5",),
        ("attn", 2),
        ("key", 1),
        ("query", 0),
        ("value", 3),
        ("mlp_post", 0),
        ("mlp_pre", 1),
        ("result", 1),
        ("attn_scores", 0),
        ("attn_logits", 0),
        ("embed",),
        ("normalized", 2, "ln2"),
        ("normalized", 2, "ln1"),
        ("normalized",),
        ("ln_final.hook_normalized",),
        ("resid_post", 1),
        ("z", 0, "a"),
        ("mlp_mid", 1),
        ("scale",),
        ("pos_embed",),
        ("resid_mid", 4),
        ("attn_out", 0),
        ("mlp_out", 2),
        ("q", 3),
        ("post", 0),
    ]:
        assert act_name(*args) == get_act_name(*args), args


def test_negative_layers_and_aliases(hooked, full):
    _, cache = full
    n = hooked.cfg.n_layers
    assert cache["resid_post", -1] is cache[f"blocks.{n - 1}.hook_resid_post"]
    assert cache["z", -n] is cache["blocks.0.attn.hook_z"]
    assert cache["attn", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["k0"] is cache["key", 0] is cache["blocks.0.attn.hook_k"]
    assert cache["mlp_post", 1] is cache["post", 1] and cache["mlp_pre", 1] is cache["blocks.1.mlp.hook_pre"]
    assert cache["normalized", 0, "ln2"] is cache["blocks.0.ln2.hook_normalized"]
    assert cache["normalized1ln1"] is cache["blocks.1.ln1.hook_normalized"]
    assert cache["embed"] is cache["hook_embed"] and cache["logits"] is cache["hook_logits"]
    assert cache["normalized"] is cache["ln_final.hook_normalized"]
    for key, offer in [
        (("attn_scores", 0), "hook_pattern"),
        (("result", 0), "compute_head_results"),
        (("scale", 0, "ln1"), "apply_ln_to_stack"),
        (("pos_embed",), "hook_embed"),
        (("mlp_mid", 0), "mlp.hook_post"),
        (("rot_q", 0), "hook_q"),
    ]:
        with pytest.raises(KeyError, match=f"TransformerLens hook name.*{offer}"):
            cache[key]
    with pytest.raises(KeyError, match="TransformerLens hook name.*hook_pattern"):
        hooked.hook_points.resolve(("attn_scores", 0))


def test_int_pos_slice_drops_the_position_axis(hooked, full):
    _, cache = full
    stack = cache.accumulated_resid()
    last = cache.accumulated_resid(pos_slice=-1)
    assert last.shape == stack.shape[:2] + stack.shape[3:]
    torch.testing.assert_close(last, stack[:, :, -1])
    kept = cache.decompose_resid(pos_slice=slice(-1, None))
    assert kept.shape[2] == 1
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), torch.tensor([5, 9]), pos_slice=-1)
    logits = cache["logits"]
    torch.testing.assert_close(
        attrs.sum(0), logits[torch.arange(2), -1, torch.tensor([5, 9])], atol=1e-4, rtol=1e-4
    )


def test_batch_dim_helpers(hooked, full, single):
    _, cache = full
    row = cache.apply_slice_to_batch_dim(1)
    assert not row.has_batch_dim and row["resid_post", 0].shape == cache["resid_post", 0].shape[1:]
    torch.testing.assert_close(row["z", 1], cache["z", 1][1])
    torch.testing.assert_close(row.decompose_resid(apply_ln=True), cache.decompose_resid(apply_ln=True)[:, 1])
    kept = cache.apply_slice_to_batch_dim(slice(0, 1))
    assert kept.has_batch_dim and kept["resid_post", 0].shape[0] == 1
    with pytest.raises(ValueError, match="batch size 2"):
        cache.remove_batch_dim()
    _, one = hooked.run_with_cache(single)
    expected = one["resid_post", 1][0].clone()
    assert one.remove_batch_dim() is one and not one.has_batch_dim
    torch.testing.assert_close(one["resid_post", 1], expected)
    with pytest.raises(ValueError, match="no batch dimension"):
        one.text(("resid_post", 0))


def test_toggle_autodiff(full):
    _, cache = full
    before = torch.is_grad_enabled()
    try:
        cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled()
        cache.toggle_autodiff(True)
        assert torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(before)


def test_head_results_sum_to_attn_out(hooked, full):
    _, cache = full
    cache.compute_head_results()
    for layer in range(hooked.cfg.n_layers):
        result = cache["result", layer]
        assert result.shape[-2:] == (hooked.cfg.n_heads, hooked.cfg.d_model)
        torch.testing.assert_close(
            result.sum(-2) + hooked.b_O[layer], cache["attn_out", layer], atol=1e-5, rtol=1e-5
        )


def test_neuron_results(hooked, full):
    _, cache = full
    down = hooked.hf_model.model.language_model.layers[0].mlp.down_proj.weight
    one = cache.get_neuron_results(0, neuron_slice=[3], pos_slice=-1)
    torch.testing.assert_close(one[..., 0, :], cache["post", 0][:, -1, 3, None] * down[:, 3])
    stack, labels = cache.stack_neuron_results(2, return_labels=True, incl_remainder=True)
    assert labels[:2] == ["L0N0", "L0N1"] and labels[-1] == "remainder" and len(labels) == stack.shape[0]
    d_mlp = hooked.cfg.d_mlp
    torch.testing.assert_close(stack[:d_mlp].sum(0), cache["mlp_out", 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stack.sum(0), cache["resid_pre", 2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "layer, mlp_input, target",
    [
        (None, False, ("resid_post", -1)),
        (1, True, ("resid_mid", 1)),
        (2, False, ("resid_pre", 2)),
        (0, False, ("resid_pre", 0)),
    ],
)
def test_full_resid_decomposition_sums_to_the_residual(hooked, full, layer, mlp_input, target):
    _, cache = full
    for expand in (True, False):
        stack, labels = cache.get_full_resid_decomposition(
            layer, mlp_input=mlp_input, expand_neurons=expand, return_labels=True
        )
        assert labels[-2:] == ["embed", "bias"] and len(labels) == stack.shape[0]
        torch.testing.assert_close(stack.sum(0), cache[target], atol=1e-4, rtol=1e-4)
    normed = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1)
    torch.testing.assert_close(normed.sum(0), cache["ln_final.hook_normalized"][:, -1], atol=1e-4, rtol=1e-4)


def test_weights_rebuild_the_cached_activations(hooked, full):
    _, cache = full
    cfg = hooked.cfg
    group = cfg.n_heads // cfg.n_kv_heads
    assert hooked.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert hooked.W_K.shape == hooked.W_V.shape == (cfg.n_layers, cfg.n_kv_heads, cfg.d_model, cfg.d_head)
    assert hooked.W_O.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model)
    assert hooked.W_in.shape == (cfg.n_layers, cfg.d_model, cfg.d_mlp)
    assert hooked.W_out.shape == (cfg.n_layers, cfg.d_mlp, cfg.d_model)
    assert hooked.W_E.shape == (cfg.d_vocab, cfg.d_model) and hooked.W_U.shape == (cfg.d_model, cfg.d_vocab)
    for layer in (0, -1):
        x = cache["ln1", layer]
        torch.testing.assert_close(
            torch.einsum("bpm,hmd->bphd", x, hooked.W_Q[layer]) + hooked.b_Q[layer],
            cache["q", layer],
            atol=1e-5,
            rtol=1e-5,
        )
        for w, b, name in ((hooked.W_K, hooked.b_K, "k"), (hooked.W_V, hooked.b_V, "v")):
            torch.testing.assert_close(
                torch.einsum("bpm,hmd->bphd", x, w[layer]) + b[layer],
                cache[name, layer],
                atol=1e-5,
                rtol=1e-5,
            )
            torch.testing.assert_close(
                torch.einsum("bpm,hmd->bphd", x, w.expanded(layer)),
                (cache[name, layer] - b[layer]).repeat_interleave(group, dim=2),
                atol=1e-5,
                rtol=1e-5,
            )
        z = cache["z", layer]
        torch.testing.assert_close(
            torch.einsum("bphd,hdm->bpm", z, hooked.W_O[layer]) + hooked.b_O[layer],
            cache["attn_out", layer],
            atol=1e-5,
            rtol=1e-5,
        )
        x2 = cache["ln2", layer]
        gated = torch.nn.functional.silu(x2 @ hooked.W_gate[layer] + 0) * (
            x2 @ hooked.W_in[layer] + hooked.b_in[layer]
        )
        torch.testing.assert_close(gated, cache["post", layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            cache["post", layer] @ hooked.W_out[layer] + hooked.b_out[layer],
            cache["mlp_out", layer],
            atol=1e-5,
            rtol=1e-5,
        )
    torch.testing.assert_close(hooked.W_O(1), hooked.W_O[1])
    torch.testing.assert_close(torch.einsum("lhdm->lm", hooked.W_O), hooked.W_O.full().sum((1, 2)))
    torch.testing.assert_close(hooked.W_O[1, 2], hooked.W_O.full()[1, 2])
    ids = cache.batch.input_ids
    text = cache.batch.text_mask
    torch.testing.assert_close(hooked.W_E[ids[text]], cache["embed"][text])
    torch.testing.assert_close(
        cache["ln_final.hook_normalized"] @ hooked.W_U + hooked.b_U, cache["logits"], atol=1e-5, rtol=1e-5
    )


def test_token_helpers(hooked):
    tok = hooked.tokenizer
    assert tok is hooked.processor.tokenizer
    ids = hooked.to_tokens("what color is the circle ?")
    assert ids[0, 0] == tok.bos_token_id
    assert ids[0, 1:].tolist() == tok.encode("what color is the circle ?", add_special_tokens=False)
    assert hooked.to_tokens("what color", prepend_bos=False)[0].tolist() == tok.encode(
        "what color", add_special_tokens=False
    )
    two = hooked.to_tokens(["what color", "what"], padding_side="left")
    assert two.shape == (2, 3) and two[1, -1] == ids[0, 1]
    strs = hooked.to_str_tokens("what color")
    assert strs == [tok.decode([i]) for i in hooked.to_tokens("what color")[0].tolist()]
    assert hooked.to_str_tokens(["what", "color"]) == [
        hooked.to_str_tokens("what"),
        hooked.to_str_tokens("color"),
    ]
    assert hooked.to_string(ids[0, 1:]) == tok.decode(ids[0, 1:].tolist())
    assert hooked.to_string(two) == [tok.decode(row.tolist()) for row in two]
    assert hooked.to_single_token("color") == tok.encode("color", add_special_tokens=False)[0]
    with pytest.raises(ValueError, match="2 tokens"):
        hooked.to_single_token("what color")


def test_batch_slice_keeps_the_images_of_the_chosen_rows(hooked):
    from hooked_mllm.testing import random_image

    batch = hooked.prepare(
        images=[random_image(0), random_image(1), random_image(2)],
        prompts=["what color", "how many objects", "is it red"],
    )
    _, cache = hooked.run_with_cache(batch)
    name = "vision.blocks.0.hook_resid_post"
    picked = cache.apply_slice_to_batch_dim([0, 2])
    torch.testing.assert_close(picked[name], cache[name][[0, 2]])
    torch.testing.assert_close(picked["resid_post", 0], cache["resid_post", 0][[0, 2]])
    one = cache.apply_slice_to_batch_dim(1)
    torch.testing.assert_close(one[name], cache[name][[1]])
    assert one["resid_post", 0].shape == cache["resid_post", 0].shape[1:]


def test_forward_loss(hooked, batch):
    with torch.no_grad():
        logits = hooked.hf_model(**batch.inputs).logits
    valid = ~batch.pad_mask[:, 1:] & ~batch.pad_mask[:, :-1] & ~batch.image_mask[:, 1:]
    targets = batch.input_ids[:, 1:].masked_fill(~valid, -100)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(hooked(batch, return_type="loss"), expected, atol=1e-5, rtol=1e-5)
    both_logits, loss = hooked(batch, return_type="both")
    torch.testing.assert_close(both_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    per_token = hooked(batch, return_type="loss", loss_per_token=True)
    assert per_token.shape == targets.shape and not per_token[~valid].any()
    torch.testing.assert_close(per_token.sum() / valid.sum(), expected, atol=1e-5, rtol=1e-5)
    assert hooked(batch, return_type=None) is None


def test_run_with_cache_remove_batch_dim(hooked, single):
    _, full = hooked.run_with_cache(single)
    _, cache = hooked.run_with_cache(single, remove_batch_dim=True)
    assert not cache.has_batch_dim
    torch.testing.assert_close(cache["resid_post", -1], full["resid_post", -1][0])


def test_add_hook_and_reset_hooks(hooked, batch):
    clean = hooked(batch)
    name = "blocks.1.hook_mlp_out"

    def zero(act, hook):
        return torch.zeros_like(act)

    def double(act, hook):
        return act * 2

    expected = hooked.run_with_hooks(batch, fwd_hooks=[(name, zero)])
    try:
        hooked.add_hook(name, zero)
        torch.testing.assert_close(hooked(batch), expected)
        torch.testing.assert_close(hooked(batch), expected)  # stays for later runs
        _, cache = hooked.run_with_cache(batch, names_filter=name)
        assert not cache[name].any()
        hooked.reset_hooks()
        torch.testing.assert_close(hooked(batch), clean)
        permanent = hooked.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", double)])
        hooked.add_hook("blocks.0.hook_resid_post", double, is_permanent=True)
        with hooked.hooks():
            torch.testing.assert_close(hooked(batch), permanent)
        hooked.add_hook(name, zero)
        hooked.reset_hooks()
        torch.testing.assert_close(hooked(batch), permanent)
        hooked.reset_hooks(including_permanent=True)
        torch.testing.assert_close(hooked(batch), clean)
        with pytest.raises(KeyError, match="hook_mlp_outt"):
            hooked.add_hook("blocks.1.hook_mlp_outt", zero)
        with pytest.raises(ValueError, match="forward hooks"):
            hooked.add_hook(name, zero, dir="bwd")
        torch.testing.assert_close(hooked(batch), clean)
    finally:
        hooked.reset_hooks(including_permanent=True)


def test_model_to_casts_like_hf_and_returns_the_model():
    """``model.to(dtype)`` casts the wrapped model (runs then match HF's own cast); refusals are clear."""
    import copy

    from hooked_mllm import toy

    model = toy.load("toy-llava")
    reference = copy.deepcopy(model.hf_model).to(torch.float64)
    from hooked_mllm.toy.data import encode

    scenes = toy.World(seed=3).sample(2)
    batch = dict(encode(model.processor, [s.image for s in scenes], ["how many objects ?"] * 2))
    assert model.to(torch.float64) is model and model.cpu() is model
    # attention patterns are left out: they switch attention to HF's eager path, whose softmax runs in float32
    logits, cache = model.run_with_cache(batch, names_filter=lambda n: "pattern" not in n)
    assert logits.dtype == torch.float64 and cache["blocks.0.hook_resid_post"].dtype == torch.float64
    with torch.no_grad():
        expected = reference(**batch).logits
    torch.testing.assert_close(logits, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(model(batch), expected, atol=1e-10, rtol=1e-10)
    model.remote = True
    with pytest.raises(ValueError, match="lives on its server"):
        model.to("cpu")
    model.remote = False
    model.hf_model.hf_device_map = {"": "cpu"}
    with pytest.raises(ValueError, match="dispatched by accelerate"):
        model.to(torch.float32)
