"""The private nnsight and transformers names hooked_mllm relies on (all listed in
``hooked_mllm._runtime.nnsight_private``) exist in the installed versions and behave as used, and the run
path leaves the wrapped model's own envoy unedited (it goes through nnsight's public ``edit``)."""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from pathlib import Path

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm._runtime import nnsight_private, runner
from hooked_mllm._runtime.invokes import MLLMEnvoy
from hooked_mllm.testing import tiny_llava


def _owner(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.fixture(scope="module")
def model():
    return HookedMLLM.from_hf(tiny_llava("llama", d_model=32, n_layers=2, vision_d_model=16, vision_layers=1))


@pytest.mark.parametrize(("owner", "name"), nnsight_private.PRIVATE_NAMES)
def test_private_names_exist(model, owner, name):
    cls = _owner(owner)
    instance = model.hf_model.config if issubclass(model.hf_model.config.__class__, cls) else model.nnsight
    assert isinstance(instance, cls)
    assert hasattr(cls, name) or name in vars(instance), (
        f"{owner}.{name} is gone: update hooked_mllm._runtime.nnsight_private"
    )


def test_eager_attention_switches_and_restores(model):
    config = model.adapter.text_cfg(model.hf_model.config)
    before = config._attn_implementation
    with nnsight_private.eager_attention([config]):
        assert config._attn_implementation == "eager"
    assert config._attn_implementation == before


def test_wrapped_module_is_the_hf_model(model):
    assert nnsight_private.wrapped_module(model.nnsight) is model.hf_model


def test_runs_leave_the_envoy_unedited(model):
    ids = torch.tensor([[1, 2, 3, 4]])
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: seen.append(h.name))]):
        model.run_with_hooks(
            input_ids=ids, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, h: seen.append(h.name))]
        )
    assert seen == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    # The public edit API stores on a copy: a plain trace of the wrapper runs none of those hooks.
    seen.clear()
    with model.nnsight.trace(input_ids=ids):
        out = model.nnsight.output.save()
    assert seen == []
    torch.testing.assert_close(out.logits, model.hf_model(input_ids=ids).logits)


def test_backward_hooks_leave_the_envoy_unedited(model):
    """Backward hooks are edits of a copy as forward hooks are: they fire on the run's graph (the
    gradient a plain autograd.grad gives) and never on a later plain trace of the wrapper."""
    ids = torch.tensor([[1, 2, 3, 4]])
    name = "blocks.0.hook_resid_post"
    seen = []
    loss = model.run_with_hooks(
        input_ids=ids, return_type="loss", bwd_hooks=[(name, lambda g, h: seen.append(g.clone()))]
    )
    loss.backward()
    assert len(seen) == 1
    layer = model.hf_model.model.language_model.layers[0]
    kept = []
    handle = layer.register_forward_hook(
        lambda module, args, out: kept.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        loss = model(input_ids=ids, return_type="loss", grad=True)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], torch.autograd.grad(loss, kept[0])[0])
    model.hf_model.zero_grad(set_to_none=True)
    seen.clear()
    with model.nnsight.trace(input_ids=ids):
        out = model.nnsight.output.save()
    out.logits.sum().backward()
    model.hf_model.zero_grad(set_to_none=True)
    assert seen == []


def test_edited_copy_keeps_invoke_batching(model):
    """The copy a run goes through is still an MLLMEnvoy, and a model.hooks() block applies to the one
    forward that several invokes are batched into."""
    assert isinstance(runner.edited(model.nnsight, [lambda tracer: None]), MLLMEnvoy)
    a, b = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6, 7]])
    rows = []
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda act, hook: rows.append(act.shape[0]))]):
        with model.trace() as tracer:
            with tracer.invoke(input_ids=a, attention_mask=torch.ones_like(a)):
                first = model.hook_point("hook_logits").output.save()
            with tracer.invoke(input_ids=b, attention_mask=torch.ones_like(b)):
                second = model.hook_point("hook_logits").output.save()
    assert rows == [2]
    with torch.no_grad():
        torch.testing.assert_close(first, model.hf_model(input_ids=a).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(second[:, -3:], model.hf_model(input_ids=b).logits, atol=1e-5, rtol=1e-4)


def _lock_pins() -> dict[str, str]:
    lock = Path(__file__).parents[1] / "requirements" / "lock.txt"
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.split(";")[0].strip().partition("==")
            pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("package", sorted(nnsight_private.TESTED))
def test_the_lock_pins_a_tested_release(package):
    oldest, newest = nnsight_private.TESTED[package]
    pinned = _lock_pins()[package]
    assert oldest <= nnsight_private._minor(pinned) <= newest, (
        f"lock pins {package} {pinned}: update nnsight_private.TESTED"
    )


def test_an_untested_release_warns_once_naming_the_tested_range(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "5.99.0" if name == "transformers" else real(name)
    )
    try:
        with pytest.warns(
            nnsight_private.UntestedVersionWarning, match=r"transformers 5\.24 to 5\.25, and 5\.99\.0"
        ):
            assert nnsight_private.check_tested_versions(recheck=True) == ("transformers",)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert nnsight_private.check_tested_versions() == (
                "transformers",
            )  # once per process: no second warning
    finally:
        monkeypatch.undo()
    with warnings.catch_warnings():  # the installed releases are tested ones: wrapping warns nothing
        warnings.simplefilter("error")
        assert nnsight_private.check_tested_versions(recheck=True) == ()
        HookedMLLM.from_hf(tiny_llava("llama", d_model=32, n_layers=1, vision_d_model=16, vision_layers=1))


@pytest.mark.parametrize(
    ("version", "minor"), [("5.25.0", (5, 25)), ("5.26.0.dev0", (5, 26)), ("6.0", (6, 0)), ("0.8.1", (0, 8))]
)
def test_minor_release_of_a_version_string(version, minor):
    assert nnsight_private._minor(version) == minor
