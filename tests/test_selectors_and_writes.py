"""Every selector honoured (order and repeats, as separate calls give) or refused; every write honoured or
refused; gradients where asked. Each check compares with separate calls or a plain-torch computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.mechanism import (
    explain_positions,
    head_contributions,
    image_locations,
    logit_lens_map,
)
from hooked_mllm.patching import attribution_patching
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


@pytest.fixture(scope="module")
def model():
    return HookedMLLM.from_hf(tiny_llava("llama", seed=5), tiny_processor())


@pytest.fixture(scope="module")
def batch(model):
    return model.prepare(images=[random_image(3)], prompts=["what color is the circle ?"])


def _close_parts(a, b):
    for part in a.parts:
        assert [t for t, _ in a.parts[part]] == [t for t, _ in b.parts[part]], part
        assert np.allclose([p for _, p in a.parts[part]], [p for _, p in b.parts[part]], atol=1e-5), part


def test_explain_positions_keeps_the_order_and_repeats_asked(model, batch):
    cells = [(1, 1), (0, 0), (1, 1), (3, 2)]
    together = explain_positions(model, batch, cells, layer=1, head=0, k=4)
    span = batch.images_of(0)[0]
    assert [e.position for e in together.positions] == [span.token_positions[r * 4 + c] for r, c in cells]
    for cell, entry in zip(cells, together.positions):
        alone = explain_positions(model, batch, [cell], layer=1, head=0, k=4).positions[0]
        assert entry.cell == cell and entry.position == alone.position
        _close_parts(entry, alone)


def test_run_with_cache_positions_in_the_order_given(model, batch):
    _, full = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_post")
    for chosen in ([7, 2, 7], [-1, 0], slice(9, 3, -2), torch.tensor([4, 4, 1])):
        _, cut = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_post", positions=chosen)
        seq = range(batch.input_ids.shape[1])
        where = torch.tensor(
            list(seq[chosen]) if isinstance(chosen, slice) else [seq[int(i)] for i in chosen]
        )
        torch.testing.assert_close(cut["resid_post", 1], full["resid_post", 1][:, where])
        assert cut.positions[0].tolist() == where.tolist()


def test_head_contributions_keep_layer_order_and_repeats(model, batch):
    together = head_contributions(model, batch, layers=[2, 0, 2, -1], positions=[9, 3, 9])
    for i, layer in enumerate([2, 0, 2, model.cfg.n_layers - 1]):
        alone = head_contributions(model, batch, layers=layer, positions=[9, 3, 9])[0]
        torch.testing.assert_close(together[i], alone)
    whole = head_contributions(model, batch, layers=[0])[0]
    torch.testing.assert_close(together[1], whole[:, :, [9, 3, 9]])
    with pytest.raises(ValueError, match="layers must name layers"):
        head_contributions(model, batch, layers=[model.cfg.n_layers])


def test_image_locations_refuses_layers_its_head_pairs_lie_outside(model, batch):
    with pytest.raises(ValueError, match="outside layers"):
        image_locations(model, batch, heads=[(0, 2)], layers=[1])
    inside = image_locations(model, batch, heads=[(0, 2), (2, 1)], layers=[2, 0])
    plain = image_locations(model, batch, heads=[(0, 2), (2, 1)])
    assert np.allclose(inside.values, plain.values)
    restricted = image_locations(model, batch, heads="all", layers=[1, 1])
    assert np.allclose(restricted.values, image_locations(model, batch, heads="all", layers=1).values)


def test_logit_lens_map_keeps_the_layer_order(model, batch):
    both = logit_lens_map(model, batch, layers=[2, 0])
    assert both.layers == (2, 0)
    for i, layer in enumerate((2, 0)):
        np.testing.assert_allclose(
            both.probs[i], logit_lens_map(model, batch, layers=[layer]).probs[0], atol=1e-6
        )


def test_grad_inside_inference_mode_is_refused(model, batch):
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        model.run_with_cache(batch, names_filter="blocks.0.hook_resid_post", grad=True)
    with torch.no_grad():  # no_grad is left by the run itself
        _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_post", grad=True)
    assert cache["resid_post", 0].requires_grad


def test_attribution_patching_under_no_grad(model, batch):
    corrupted = model.prepare(images=[random_image(4)], prompts=["what color is the circle ?"])

    def metric(logits, b):
        return logits[:, -1, 5] - logits[:, -1, 7]

    kwargs = {"layers": [1, 0], "positions": [4, 2, 9]}
    expected = attribution_patching(model, batch, corrupted, metric, **kwargs)
    with torch.no_grad():
        got = attribution_patching(model, batch, corrupted, metric, **kwargs)
    torch.testing.assert_close(got.values, expected.values)


# -- writes: honoured or refused ------------------------------------------------------------------


def test_in_place_pattern_write_in_a_trace_is_refused(model, batch):
    with pytest.raises(ValueError, match="hook_pattern.*had no effect"):
        with model.trace(batch):
            model.hook_point("blocks.0.attn.hook_pattern").output[:] = 0
    with pytest.raises(ValueError, match="read-only"):
        with model.trace(batch):
            point = model.hook_point("blocks.0.attn.hook_pattern")
            point.output = torch.zeros_like(point.output)
    with pytest.raises(ValueError, match="read-only"):
        model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, hook: a.zero_())])


def test_observation_hook_handing_its_input_back_writes_nothing(model, batch):
    plain = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, hook: None)])
    seen = []

    def observe(act, hook):
        seen.append(act.sum())
        return act

    names = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_mid", "blocks.1.attn.hook_q"]
    logits = model.run_with_hooks(batch, fwd_hooks=[(n, observe) for n in names])
    assert len(seen) == 3
    torch.testing.assert_close(logits, plain, atol=0, rtol=0)


def test_predicate_filter_on_text_only_skips_the_vision_tower(model):
    fired = []

    def keep(act, hook):
        fired.append(hook.name)

    text = "what color is the circle ?"
    logits = model.run_with_hooks(text, fwd_hooks=[(lambda n: n.endswith("hook_resid_post"), keep)])
    torch.testing.assert_close(logits, model(text))
    assert fired == [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    with pytest.raises(ValueError, match="text-only"):
        model.run_with_hooks(text, fwd_hooks=[("vision.blocks.0.hook_resid_post", keep)])


# -- gradients of every hook point in a trace, the nnsight way ------------------------------------


def _reference_grads(model, batch):
    """``d logits.sum() / d value`` with plain torch hooks that retain the modules' own tensors."""
    layer = model.hf_model.model.language_model.layers[1]
    attn = layer.self_attn
    kept = {}

    def keep(name, pick):
        def hook(module, args, output=None):
            tensor = pick(args, output)
            tensor.retain_grad()
            kept[name] = tensor

        return hook

    handles = [
        attn.q_proj.register_forward_hook(keep("q", lambda a, o: o)),
        attn.k_proj.register_forward_hook(keep("k", lambda a, o: o)),
        attn.v_proj.register_forward_hook(keep("v", lambda a, o: o)),
        attn.o_proj.register_forward_pre_hook(keep("z", lambda a, o: a[0])),
        layer.post_attention_layernorm.register_forward_pre_hook(keep("resid_mid", lambda a, o: a[0])),
        layer.register_forward_hook(keep("resid_post", lambda a, o: o[0] if isinstance(o, tuple) else o)),
    ]
    try:
        with torch.enable_grad():
            model.hf_model(**batch.inputs).logits.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    model.hf_model.zero_grad(set_to_none=True)
    heads, kv = model.cfg.n_heads, model.cfg.n_kv_heads
    return {
        "blocks.1.attn.hook_q": kept["q"].grad.unflatten(-1, (heads, -1)),
        "blocks.1.attn.hook_k": kept["k"].grad.unflatten(-1, (kv, -1)),
        "blocks.1.attn.hook_v": kept["v"].grad.unflatten(-1, (kv, -1)),
        "blocks.1.attn.hook_z": kept["z"].grad.unflatten(-1, (heads, -1)),
        "blocks.1.hook_resid_mid": kept["resid_mid"].grad,
        "blocks.1.hook_resid_post": kept["resid_post"].grad,
    }


def test_grad_of_every_hook_point_in_a_trace_backward(model, batch):
    expected = _reference_grads(model, batch)
    names = [n for n in expected if n != "blocks.1.hook_resid_mid"]  # in forward order
    # hook_resid_mid reads the block's input and its attention output, around hook_q: a trace of its own
    for chosen in (names, ["blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"], names[-1:]):
        grads: dict = {}
        with model.trace(batch):
            values = [model.hook_point(name).output for name in chosen]
            logits = model.nnsight.output.logits
            with logits.sum().backward():  # gradients arrive last value first
                for name, value in reversed(list(zip(chosen, values))):
                    grads[name] = value.grad.save()
        model.hf_model.zero_grad(set_to_none=True)
        assert list(grads) == chosen[::-1]
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_cache_to_keeps_explicit_positions_in_order(model, batch):
    from hooked_mllm.hooks import CacheTo

    _, full = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_post")
    for chosen in ([7, 2, 7], -1, slice(9, 3, -2)):
        store: dict = {}
        model.run_with_hooks(
            batch, fwd_hooks=[("blocks.1.hook_resid_post", CacheTo(store, positions=chosen))]
        )
        seq = range(batch.input_ids.shape[1])
        where = (
            list(seq[chosen])
            if isinstance(chosen, slice)
            else [seq[p] for p in ([chosen] if isinstance(chosen, int) else chosen)]
        )
        torch.testing.assert_close(store["blocks.1.hook_resid_post"], full["resid_post", 1][:, where])
