"""nnsight habits in ``model.trace``: several invokes, traced generation, patterns; each checked against
the bare HF model (its own forward, ``generate``, ``output_attentions``) and plain torch hooks."""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


@pytest.fixture(scope="module")
def model():
    return HookedMLLM.from_hf(tiny_llava("llama", seed=5), tiny_processor())


@pytest.fixture(scope="module")
def batches(model):
    one = model.prepare(images=[random_image(0)], prompts=["what color is the circle ?"])
    two = model.prepare(
        images=[random_image(1), random_image(2)], prompts=["how many", "is there a red square ?"]
    )
    return one, two


def hf_logits(model, batch, zero_mlp_layer=None):
    """The bare HF forward, optionally with a plain torch hook zeroing one MLP's output."""
    handle = None
    if zero_mlp_layer is not None:
        mlp = model.hf_model.model.language_model.layers[zero_mlp_layer].mlp
        handle = mlp.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
    try:
        with torch.no_grad():
            return model.hf_model(**batch.inputs).logits
    finally:
        if handle is not None:
            handle.remove()


def test_invokes_batched_into_one_forward(model, batches):
    one, two = batches
    with model.trace() as tracer:
        with tracer.invoke(one):
            logits_one = model.hook_point("hook_logits").output.save()
        with tracer.invoke(two):
            mlp = model.hook_point("blocks.1.hook_mlp_out")
            mlp.output = torch.zeros_like(mlp.output)
            logits_two = model.hook_point("hook_logits").output.save()
        with tracer.invoke("a red circle"):
            logits_text = model.hook_point("hook_logits").output.save()
    width = max(one.input_ids.shape[1], two.input_ids.shape[1])
    assert logits_one.shape[:2] == (1, width) and logits_two.shape[:2] == (2, width)
    # left-padded to one length: the last positions of each row are its own tokens
    for got, batch, zero in ((logits_one, one, None), (logits_two, two, 1)):
        expected = hf_logits(model, batch, zero_mlp_layer=zero)
        keep = ~batch.pad_mask
        torch.testing.assert_close(
            got[:, -batch.input_ids.shape[1] :][keep], expected[keep], atol=1e-5, rtol=1e-4
        )
    text = model.text_batch("a red circle")
    with torch.no_grad():
        expected = model.hf_model(input_ids=text.input_ids).logits
    torch.testing.assert_close(logits_text[:, -text.input_ids.shape[1] :], expected, atol=1e-5, rtol=1e-4)


def test_vision_points_are_refused_in_one_of_several_invokes(model, batches):
    one, two = batches
    with pytest.raises(ValueError, match="laid out by image"):
        with model.trace() as tracer:
            with tracer.invoke(one):
                model.hook_point("vision.blocks.0.hook_resid_post").output.save()
            with tracer.invoke(two):
                pass
    with model.trace(one):  # a trace of one input reads them as ever
        vision = model.hook_point("vision.blocks.0.hook_resid_post").output.save()
    assert vision.shape[0] == 1


def test_traced_generation_per_step(model, batches):
    one, _ = batches
    with model.generate(one, max_new_tokens=3) as tracer:
        resid = list().save()
        for _step in tracer.iter[:3]:
            resid.append(model.hook_point("blocks.0.hook_resid_post").output)
            mlp = model.hook_point("blocks.1.hook_mlp_out")
            mlp.output = torch.zeros_like(mlp.output)
        ids = tracer.result.save()
    seen = []
    layers = model.hf_model.model.language_model.layers
    handles = [
        layers[0].register_forward_hook(
            lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)
        ),
        layers[1].mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out)),
    ]
    try:
        with torch.no_grad():
            expected = model.hf_model.generate(**one.inputs, max_new_tokens=3, do_sample=False)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(ids, expected)
    assert [r.shape[1] for r in resid] == [one.input_ids.shape[1], 1, 1]
    for got, want in zip(resid, seen):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # called without `with`, generate runs as before
        plain = model.hf_model.generate(**one.inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(model.generate(one, max_new_tokens=3).sequences, plain)


def test_pattern_inside_a_trace(model, batches):
    one, _ = batches
    config = model.adapter.text_cfg(model.hf_model.config)
    before = config._attn_implementation
    assert before != "eager"  # sdpa computes no pattern
    with model.trace(one):
        pattern = model.hook_point("blocks.1.attn.hook_pattern").output.save()
    assert config._attn_implementation == before  # restored
    eager = tiny_llava("llama", seed=5, attn_implementation="eager")
    with torch.no_grad():
        expected = eager(**one.inputs, output_attentions=True).attentions[1]
    torch.testing.assert_close(pattern, expected)
    with pytest.raises(RuntimeError, match="no value in this run"):
        with model.trace(one, eager_attention=False):
            model.hook_point("blocks.1.attn.hook_pattern").output.save()
