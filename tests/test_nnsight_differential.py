"""nnsight's patterns on ``HookedMLLM`` against nnsight itself on the bare Hugging Face model, same weights.

The bare model is wrapped in plain ``nnsight.NNsight`` and driven through its own module paths;
the wrapper through ``model.trace`` and ``model.hook_point(name)``. Reads, writes, gradients,
``stop``, ``skip`` and ``cache`` must give the same numbers.
"""

from __future__ import annotations

import pytest
import torch
from nnsight import NNsight

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def pair():
    ours = HookedMLLM.from_hf(tiny_llava("llama", seed=6), tiny_processor())
    bare = NNsight(tiny_llava("llama", seed=6))
    return ours, bare


@pytest.fixture(scope="module")
def batch(pair):
    return pair[0].prepare(images=[random_image(2)], prompts=["what color is the circle ?"])


def first(value):
    return value[0] if isinstance(value, tuple) else value


def close(a, b, what=""):
    assert a.shape == b.shape, (what, a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


def test_reads_match(pair, batch):
    ours, bare = pair
    heads = ours.cfg.n_heads
    with ours.trace(batch):
        resid = ours.hook_point("blocks.1.hook_resid_pre").output.save()
        q = ours.hook_point("blocks.1.attn.hook_q").output.save()
        z = ours.hook_point("blocks.1.attn.hook_z").output.save()
        mlp = ours.hook_point("blocks.1.hook_mlp_out").output.save()
        post = ours.hook_point("blocks.1.hook_resid_post").output.save()
        logits = ours.nnsight.output.logits.save()
    layer = bare.model.language_model.layers[1]
    with bare.trace(**batch.inputs):
        b_resid = layer.input.save()
        b_q = layer.self_attn.q_proj.output.save()
        b_z = layer.self_attn.o_proj.input.save()
        b_mlp = layer.mlp.output.save()
        b_post = first(layer.output).save()
        b_logits = bare.output.logits.save()
    close(resid, b_resid, "resid_pre")
    close(q, b_q.unflatten(-1, (heads, -1)), "q")
    close(z, b_z.unflatten(-1, (heads, -1)), "z")
    close(mlp, b_mlp, "mlp_out")
    close(post, b_post, "resid_post")
    close(logits, b_logits, "logits")


def test_writes_match(pair, batch):
    ours, bare = pair
    with ours.trace(batch):
        point = ours.hook_point("blocks.1.hook_mlp_out")
        point.output = point.output * 0
        q = ours.hook_point("blocks.2.attn.hook_q")
        q.output[:, :, 1] = 0  # one head's queries, edited in place
        logits = ours.nnsight.output.logits.save()
    layers = bare.model.language_model.layers
    d_head = ours.cfg.d_head
    with bare.trace(**batch.inputs):
        layers[1].mlp.output = layers[1].mlp.output * 0
        layers[2].self_attn.q_proj.output[:, :, d_head : 2 * d_head] = 0
        b_logits = bare.output.logits.save()
    close(logits, b_logits, "written logits")
    with torch.no_grad():
        plain = ours(batch)
    assert not torch.allclose(logits, plain, atol=1e-4)


def test_grads_match(pair, batch):
    ours, bare = pair
    heads = ours.cfg.n_heads
    with ours.trace(batch):
        q = ours.hook_point("blocks.1.attn.hook_q").output
        post = ours.hook_point("blocks.1.hook_resid_post").output
        logits = ours.nnsight.output.logits
        with logits.sum().backward():
            g_post = post.grad.save()
            g_q = q.grad.save()
    ours.hf_model.zero_grad(set_to_none=True)
    layer = bare.model.language_model.layers[1]
    with bare.trace(**batch.inputs):
        b_q = layer.self_attn.q_proj.output
        b_post = first(layer.output)
        b_logits = bare.output.logits
        with b_logits.sum().backward():
            gb_post = b_post.grad.save()
            gb_q = b_q.grad.save()
    for param in bare.parameters():  # the bare model's parameters, through the envoy
        param.grad = None
    close(g_post, gb_post, "grad resid_post")
    close(g_q, gb_q.unflatten(-1, (heads, -1)), "grad q")


def test_stop_skip_and_cache_match(pair, batch):
    ours, bare = pair
    with ours.trace(batch) as tracer:
        early = ours.hook_point("blocks.0.hook_resid_post").output.save()
        tracer.stop()
    with bare.trace(**batch.inputs) as tracer:
        b_early = first(bare.model.language_model.layers[0].output).save()
        tracer.stop()
    close(early, b_early, "stop")

    with ours.trace(batch):
        layer = ours.nnsight.model.language_model.layers[1]
        layer.skip(layer.input)
        skipped = ours.nnsight.output.logits.save()
    with bare.trace(**batch.inputs):
        layer = bare.model.language_model.layers[1]
        layer.skip(layer.input)
        b_skipped = bare.output.logits.save()
    close(skipped, b_skipped, "skip")

    with ours.trace(batch) as tracer:
        cache = tracer.cache()
    with bare.trace(**batch.inputs) as tracer:
        b_cache = tracer.cache()
    close(
        first(cache.model.model.language_model.layers[2].output),
        first(b_cache.model.model.language_model.layers[2].output),
        "cache",
    )


def test_invoke_of_token_ids(pair):
    ours, bare = pair
    ids = ours.to_tokens("what color is the circle ?")
    with ours.trace() as tracer:
        with tracer.invoke(ids):
            logits = ours.nnsight.output.logits.save()
    with bare.trace(input_ids=ids):
        b_logits = bare.output.logits.save()
    close(logits, b_logits, "invoke ids")
