"""Remote execution through nnsight's remote backend, simulated with ``remote="local"``:
nnsight serializes each request as it would for NDIF, deserializes it with local modules
hidden, and runs it. Every entry point (run_with_cache, run_with_hooks, generate with hooks,
model.hooks(), model.trace) must give exactly what the same checkpoint gives loaded
locally, and what cannot run remotely is refused with an error naming what works.

nnsight's simulation hides local modules, but an editable install would still import
``hooked_mllm`` while a request is deserialized; :func:`no_package_on_server` blocks that
import too, as on a server without the package, so every request must carry it by value."""

from __future__ import annotations

import importlib.abc
import sys
import time

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.hooks import Ablate
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


class _Absent(importlib.abc.MetaPathFinder):
    """Refuses to import hooked_mllm (and this test package), as on an NDIF server."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("hooked_mllm", "tests"):
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the server)")
        return None


@pytest.fixture(scope="module", autouse=True)
def no_package_on_server():
    from nnsight.intervention.backends.local import LocalSimulationBackend

    hide, restore = LocalSimulationBackend._hide_local_modules, LocalSimulationBackend._restore
    absent = _Absent()

    def hiding(self):
        hidden = hide(self)
        sys.meta_path.insert(0, absent)
        return hidden

    def restoring(self, hidden):
        sys.meta_path.remove(absent)
        restore(self, hidden)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalSimulationBackend, "_hide_local_modules", hiding)
        patch.setattr(LocalSimulationBackend, "_restore", restoring)
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava")
    tiny_llava("llama").save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def pair(checkpoint):
    local = HookedMLLM.from_pretrained(checkpoint)
    remote = HookedMLLM.from_pretrained(checkpoint, remote="local")
    batch = local.prepare(images=[random_image(0, 32)], prompts=["what color is the circle ?"])
    return local, remote, batch


def test_remote_wrap_builds_on_meta_without_weights(checkpoint):
    start = time.perf_counter()
    model = HookedMLLM.from_pretrained(checkpoint, remote="local")
    elapsed = time.perf_counter() - start
    assert {p.device.type for p in model.hf_model.parameters()} == {"meta"}
    assert model.hook_names() == HookedMLLM.from_pretrained(checkpoint).hook_names()
    assert elapsed < 3.0  # about 0.5 s on an idle CPU; the target is one second


def test_run_with_cache_matches_local(pair):
    local, remote, batch = pair
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "vision.blocks.0.hook_resid_post"]
    for positions in (None, "image"):
        logits, cache = local.run_with_cache(batch, names_filter=names, positions=positions)
        r_logits, r_cache = remote.run_with_cache(batch, names_filter=names, positions=positions)
        assert torch.equal(r_logits, logits)
        assert sorted(r_cache.keys()) == sorted(cache.keys())
        for name in names:
            assert torch.equal(r_cache[name], cache[name]), name


def test_run_with_hooks_writes_match_local(pair):
    local, remote, batch = pair
    clean = local(batch)
    hooks = [
        ("blocks.0.hook_mlp_out", Ablate("zero", positions="image")),
        ("blocks.1.hook_resid_post", lambda act, hook: act * 1.5),
    ]
    expected = local.run_with_hooks(batch, fwd_hooks=hooks)
    assert not torch.equal(expected, clean)
    assert torch.equal(remote.run_with_hooks(batch, fwd_hooks=hooks), expected)
    assert torch.equal(remote(batch), clean)


def test_generate_and_hooks_block_match_local(pair):
    local, remote, batch = pair

    def steer(act, hook):
        return act + 0.5 * hook.step

    hooks = [("blocks.0.hook_resid_post", steer)]
    expected = local.generate(batch, max_new_tokens=4, fwd_hooks=hooks)
    out = remote.generate(batch, max_new_tokens=4, fwd_hooks=hooks)
    assert torch.equal(out.sequences, expected.sequences) and out.text == expected.text
    assert not torch.equal(out.sequences, local.generate(batch, max_new_tokens=4).sequences)
    with local.hooks(fwd_hooks=hooks):
        expected_block = local(batch)
    with remote.hooks(fwd_hooks=hooks):
        assert torch.equal(remote(batch), expected_block)
    with local.hooks(fwd_hooks=hooks):
        expected_block = local.generate(batch, max_new_tokens=3).sequences
    with remote.hooks(fwd_hooks=hooks):
        assert torch.equal(remote.generate(batch, max_new_tokens=3).sequences, expected_block)


def test_trace_matches_local(pair):
    local, remote, batch = pair
    results = []
    for model in (local, remote):
        with model.trace(batch):
            resid = model.hook_point("blocks.0.hook_resid_post").output.save()
            model.hook_point("blocks.1.hook_mlp_out").output = torch.zeros_like(
                model.hook_point("blocks.1.hook_mlp_out").output
            )
            logits = model.nnsight.output.logits.save()
        results.append((resid, logits))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_what_cannot_run_remotely_is_refused(pair, checkpoint):
    _, remote, batch = pair
    with pytest.raises(ValueError, match=r"grad=True\) cannot run remotely.*run_with_hooks, run_with_cache"):
        remote.run_with_hooks(batch, grad=True)
    with pytest.raises(ValueError, match=r"hook_pattern cannot run remotely.*attn_implementation='eager'"):
        remote.run_with_cache(batch, names_filter="blocks.0.attn.hook_pattern")
    remote.remote = True  # NDIF itself (nothing is sent: the refusal comes first)
    try:
        with pytest.raises(ValueError, match=r"hook_pattern cannot run remotely.*NDIF deployment chooses"):
            remote.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, h: None)])
    finally:
        remote.remote = "local"
    with pytest.raises(ValueError, match=r"model.trace inside model.hooks\(\) cannot run remotely"):
        with remote.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: None)]):
            remote.trace(batch)
    with pytest.raises(ValueError, match=r"device_map=\) cannot run remotely: the server places the model"):
        HookedMLLM.from_pretrained(checkpoint, remote="local", device="cpu")


def test_gradients_invokes_and_traced_generation_are_refused_remotely(pair):
    _, remote, batch = pair
    keep = [("blocks.0.hook_resid_post", lambda grad, hook: None)]
    with pytest.raises(
        ValueError, match=r"backward hooks .* cannot run remotely: gradients stay on the server"
    ):
        remote.run_with_hooks(batch, bwd_hooks=keep, return_type="loss")
    with pytest.raises(
        ValueError, match=r"incl_bwd=True\) cannot run remotely: gradients stay on the server"
    ):
        remote.run_with_cache(
            batch, names_filter="blocks.0.hook_resid_post", incl_bwd=True, return_type="loss"
        )
    with pytest.raises(
        ValueError, match=r"tracer.invoke\(...\) inputs cannot run remotely.*model.trace\(batch\)"
    ):
        with remote.trace() as tracer:
            with tracer.invoke(batch):
                pass
    with pytest.raises(ValueError, match=r"eager_attention=True\) cannot run remotely"):
        with remote.trace(batch, eager_attention=True):
            pass
    with pytest.raises(ValueError, match=r"as tracer cannot run remotely.*fwd_hooks to model.generate"):
        with remote.generate(batch, max_new_tokens=2):
            pass


def test_patterns_with_eager_attention_match_local(checkpoint, pair):
    _, _, batch = pair
    local = HookedMLLM.from_pretrained(checkpoint, attn_implementation="eager")
    remote = HookedMLLM.from_pretrained(checkpoint, remote="local", attn_implementation="eager")
    name = "blocks.1.attn.hook_pattern"
    _, cache = local.run_with_cache(batch, names_filter=name)
    _, r_cache = remote.run_with_cache(batch, names_filter=name)
    assert torch.equal(r_cache[name], cache[name])
