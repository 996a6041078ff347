"""``run_with_hooks(bwd_hooks=...)`` and ``run_with_cache(incl_bwd=True)`` against plain torch autograd.

The reference gradients come from the bare HF model: plain torch forward hooks call
``retain_grad()`` on the modules' own tensors, and the same scalar is differentiated.
"""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


@pytest.fixture(scope="module")
def model():
    return HookedMLLM.from_hf(tiny_llava("llama", seed=3, attn_implementation="eager"), tiny_processor())


@pytest.fixture(scope="module")
def batch(model):
    return model.prepare(
        images=[random_image(0), random_image(1)], prompts=["what color is the circle ?", "how many objects"]
    )


def _out(value):
    return value[0] if isinstance(value, tuple) else value


def reference_grads(model, batch):
    """Gradients of the batch's loss w.r.t. module tensors, with plain torch hooks on the HF model."""
    hf = model.hf_model
    lm, vision = hf.model.language_model, hf.model.vision_tower.encoder
    kept: dict[str, torch.Tensor] = {}

    def keep(name, pick):
        def hook(module, args, output=None):
            tensor = pick(args, output)
            tensor.retain_grad()
            kept[name] = tensor

        return hook

    handles = [
        lm.layers[0].register_forward_hook(keep("resid_post0", lambda a, o: _out(o))),
        lm.layers[1].self_attn.o_proj.register_forward_pre_hook(keep("z1", lambda a, o: a[0])),
        lm.layers[1].self_attn.o_proj.register_forward_hook(keep("attn_out1", lambda a, o: o)),
        lm.layers[0].self_attn.register_forward_hook(keep("pattern0", lambda a, o: o[1])),
        lm.embed_tokens.register_forward_hook(keep("embed", lambda a, o: o)),
        vision.layers[0].register_forward_hook(keep("vision0", lambda a, o: _out(o))),
    ]
    try:
        with torch.enable_grad():
            logits = hf(**batch.inputs).logits
            model.lm_loss(logits, batch).backward()
    finally:
        for handle in handles:
            handle.remove()
    hf.zero_grad(set_to_none=True)
    n_heads = model.cfg.n_heads
    return {
        "blocks.0.hook_resid_post": kept["resid_post0"].grad,
        "blocks.1.attn.hook_z": kept["z1"].grad.unflatten(-1, (n_heads, -1)),
        "blocks.1.hook_resid_mid": kept["attn_out1"].grad,  # the attention output feeds only resid_mid
        "blocks.0.attn.hook_pattern": kept["pattern0"].grad,
        "hook_embed": kept["embed"].grad,
        "vision.blocks.0.hook_resid_post": kept["vision0"].grad,
    }


@pytest.fixture(scope="module")
def expected(model, batch):
    return reference_grads(model, batch)


def test_bwd_hooks_get_the_gradient_of_each_value(model, batch, expected):
    got = {}

    def keep(grad, hook):
        got[hook.name] = grad.clone()

    loss = model.run_with_hooks(batch, return_type="loss", bwd_hooks=[(name, keep) for name in expected])
    assert not got  # nothing fires before backward
    loss.backward()
    model.hf_model.zero_grad(set_to_none=True)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        assert got[name].shape == grad.shape, name
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_incl_bwd_caches_gradients(model, batch, expected):
    loss, cache = model.run_with_cache(batch, return_type="loss", incl_bwd=True)
    model.hf_model.zero_grad(set_to_none=True)
    torch.testing.assert_close(loss, model(batch, return_type="loss"))
    for name, grad in expected.items():
        torch.testing.assert_close(cache[f"{name}_grad"], grad, atol=1e-6, rtol=1e-5, msg=name)
        assert not cache[name].requires_grad
    positions, cut = model.run_with_cache(
        batch, names_filter="blocks.0.hook_resid_post", return_type="loss", incl_bwd=True, positions="last"
    )
    model.hf_model.zero_grad(set_to_none=True)
    assert set(cut) == {"blocks.0.hook_resid_post", "blocks.0.hook_resid_post_grad"}
    torch.testing.assert_close(
        cut["blocks.0.hook_resid_post_grad"],
        expected["blocks.0.hook_resid_post"][:, -1:],
        atol=1e-6,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="return_type='loss'"):
        model.run_with_cache(batch, incl_bwd=True)


def test_returned_gradient_replaces_it(model, batch):
    def embed_grad(**bwd):
        got = {}
        hooks = [("hook_embed", lambda grad, hook: got.setdefault("g", grad.clone()))]
        model.run_with_hooks(batch, return_type="loss", bwd_hooks=list(bwd.values()) + hooks).backward()
        model.hf_model.zero_grad(set_to_none=True)
        return got["g"]

    base = embed_grad()
    zeroed = embed_grad(h=("blocks.1.hook_resid_post", lambda grad, hook: torch.zeros_like(grad)))
    assert base.abs().sum() > 0 and not zeroed.any()  # resid_post(1) is the only path back to the embedding
    doubled = embed_grad(h=("blocks.2.hook_resid_pre", lambda grad, hook: 2 * grad))
    torch.testing.assert_close(doubled, 2 * base)
    z = embed_grad(h=("blocks.0.attn.hook_z", lambda grad, hook: torch.zeros_like(grad)))
    assert not torch.allclose(z, base)  # a per-head replacement reaches the model's gradient too


def test_gradient_is_taken_after_the_forward_hooks(model, batch):
    got = {}
    loss = model.run_with_hooks(
        batch,
        return_type="loss",
        fwd_hooks=[("blocks.0.hook_resid_post", lambda act, hook: 2 * act)],
        bwd_hooks=[
            (name, lambda grad, hook: got.setdefault(hook.name, grad))
            for name in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre")
        ],
    )
    loss.backward()
    model.hf_model.zero_grad(set_to_none=True)
    # w.r.t. the doubled value the model went on with, which is the next block's input
    torch.testing.assert_close(got["blocks.0.hook_resid_post"], got["blocks.1.hook_resid_pre"])


def _module_hooks(model):
    return [
        (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.hf_model.named_modules()
    ]


def test_hooks_go_with_the_run_also_when_one_raises(model, batch):
    calls = []
    before = _module_hooks(model)

    def fails(grad, hook):
        calls.append(hook.name)
        raise RuntimeError("boom")

    loss = model.run_with_hooks(batch, return_type="loss", bwd_hooks=[("blocks.1.hook_resid_post", fails)])
    with pytest.raises(RuntimeError, match="boom"):
        loss.backward()

    def bad_forward(act, hook):
        raise RuntimeError("forward boom")

    with pytest.raises(RuntimeError, match="forward boom"):
        model.run_with_hooks(
            batch,
            fwd_hooks=[("blocks.0.hook_mlp_out", bad_forward)],
            bwd_hooks=[("blocks.1.hook_resid_post", fails)],
        )
    model(batch, return_type="loss", grad=True).backward()
    model.hf_model.zero_grad(set_to_none=True)
    assert calls == ["blocks.1.hook_resid_post"]
    assert not model.nnsight._edits
    assert _module_hooks(model) == before  # nothing was registered on a module


def test_bwd_hook_errors(model, batch):
    with pytest.raises(ValueError, match="shape"):
        model.run_with_hooks(
            batch, return_type="loss", bwd_hooks=[("blocks.0.hook_resid_post", lambda g, h: g[:, :1])]
        ).backward()
    model.hf_model.zero_grad(set_to_none=True)
    with pytest.raises(TypeError, match="bwd_hooks takes"):
        model.run_with_hooks(batch, bwd_hooks=["blocks.0.hook_resid_post"])
    with pytest.raises(KeyError):
        model.run_with_hooks(batch, bwd_hooks=[("blocks.0.hook_resid_pots", lambda g, h: None)])
    frozen = HookedMLLM.from_hf(tiny_llava("llama").requires_grad_(False), tiny_processor())
    with pytest.raises(RuntimeError, match="does not require grad"):
        frozen.run_with_hooks(batch, bwd_hooks=[("blocks.0.hook_resid_post", lambda g, h: None)])
