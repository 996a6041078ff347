"""Models dispatched with accelerate's ``device_map`` (CPU and disk offload) behave like unsharded ones.

The toy checkpoint is loaded twice: plainly, and with some language-model layers, the final norm,
the token embedding and the LM head offloaded to disk (their parameters on the ``meta`` device,
loaded only while each module runs). Caches, writing hooks, generation, the weight accessors the
cache helpers use and attribution patching's backward pass must all agree exactly.
"""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM, toy
from hooked_mllm.lens import logit_lens
from hooked_mllm.patching import answer_logprob, attribution_patching

pytest.importorskip("accelerate")

DEVICE_MAP = {
    "model.vision_tower": "cpu",
    "model.multi_modal_projector": "cpu",
    "model.language_model.embed_tokens": "disk",
    "model.language_model.layers.0": "cpu",
    "model.language_model.layers.1": "disk",
    "model.language_model.layers.2": "disk",
    "model.language_model.layers.3": "cpu",
    "model.language_model.norm": "disk",
    "model.language_model.rotary_emb": "cpu",
    "lm_head": "disk",
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = toy.checkpoint_dir("toy-llava")
    plain = HookedMLLM.from_pretrained(path)
    offloaded = HookedMLLM.from_pretrained(
        path, device_map=DEVICE_MAP, offload_folder=str(tmp_path_factory.mktemp("offload"))
    )
    assert offloaded.hf_model.lm_head.weight.device.type == "meta"  # really offloaded
    return plain, offloaded


@pytest.fixture(scope="module")
def batches(pair):
    plain, _ = pair
    scenes = toy.World(seed=77).sample(2)
    prompts = [scene.questions[0].question for scene in scenes]
    clean = plain.prepare(images=[s.image for s in scenes], prompts=prompts)
    corrupted = plain.prepare(images=[scenes[1].image, scenes[0].image], prompts=prompts)
    return clean, corrupted


def test_cache_and_logits_match(pair, batches):
    plain, offloaded = pair
    clean, _ = batches
    logits_a, cache_a = plain.run_with_cache(clean)
    logits_b, cache_b = offloaded.run_with_cache(clean)
    assert offloaded.device.type == "cpu"
    torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=0)
    assert set(cache_a) == set(cache_b)
    for name in cache_a:
        torch.testing.assert_close(cache_b[name], cache_a[name], rtol=0, atol=0, msg=name)


def test_writing_hooks_take_effect_on_offloaded_layers(pair, batches):
    plain, offloaded = pair
    clean, _ = batches

    def shift(act, hook):
        return act + 0.5

    hooks = [("blocks.1.hook_resid_post", shift), ("blocks.2.hook_mlp_out", shift)]
    base = offloaded.run_with_hooks(clean)
    edited = offloaded.run_with_hooks(clean, fwd_hooks=hooks)
    assert (edited - base).abs().max() > 1e-3
    torch.testing.assert_close(edited, plain.run_with_hooks(clean, fwd_hooks=hooks), rtol=0, atol=0)


def test_generation_matches(pair, batches):
    plain, offloaded = pair
    clean, _ = batches
    assert offloaded.generate(clean, max_new_tokens=3).text == plain.generate(clean, max_new_tokens=3).text


def test_weight_accessors_load_offloaded_weights(pair, batches):
    plain, offloaded = pair
    clean, _ = batches
    torch.testing.assert_close(offloaded.W_U, plain.W_U, rtol=0, atol=0)
    for layer in range(plain.cfg.n_layers):
        torch.testing.assert_close(offloaded.W_O(layer), plain.W_O(layer), rtol=0, atol=0)
    _, cache_a = plain.run_with_cache(clean, names_filter=lambda n: "hook_z" in n or "resid" in n)
    _, cache_b = offloaded.run_with_cache(clean, names_filter=lambda n: "hook_z" in n or "resid" in n)
    torch.testing.assert_close(cache_b.stack_head_results(), cache_a.stack_head_results(), rtol=0, atol=0)
    stack_a = cache_a.accumulated_resid(apply_ln=True)
    torch.testing.assert_close(cache_b.accumulated_resid(apply_ln=True), stack_a, rtol=0, atol=0)
    torch.testing.assert_close(
        logit_lens(offloaded, cache_b["resid_post", 1]),
        logit_lens(plain, cache_a["resid_post", 1]),
        rtol=0,
        atol=0,
    )


def test_attribution_patching_backward(pair):
    plain, offloaded = pair
    scene, other = toy.World(seed=78).sample(2)
    question = scene.questions[0].question
    clean = plain.prepare(images=[scene.image], prompts=[question])
    corrupted = plain.prepare(images=[other.image], prompts=[question])
    answer = int(plain.run_with_hooks(clean)[0, -1].argmax())
    kwargs = dict(hook="resid_pre", layers=[1, 2], metric=answer_logprob(answer), over="cell")
    a = attribution_patching(plain, clean, corrupted, **kwargs)
    b = attribution_patching(offloaded, clean, corrupted, **kwargs)
    assert a.values.abs().max() > 0
    torch.testing.assert_close(b.values, a.values, rtol=1e-6, atol=1e-7)
