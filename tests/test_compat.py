"""The private nnsight and transformers names hooked_mllm relies on (all listed in
``hooked_mllm._compat``) exist in the installed versions and behave as used, and the run
path leaves the wrapped model's own envoy unedited (it goes through nnsight's public ``edit``)."""

from __future__ import annotations

import importlib

import pytest
import torch

from hooked_mllm import HookedMLLM, _compat
from hooked_mllm.testing import tiny_llava


def _owner(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.fixture(scope="module")
def model():
    return HookedMLLM.from_hf(tiny_llava("llama", d_model=32, n_layers=2, vision_d_model=16, vision_layers=1))


@pytest.mark.parametrize(("owner", "name"), _compat.PRIVATE_NAMES)
def test_private_names_exist(model, owner, name):
    cls = _owner(owner)
    instance = model.hf_model.config if issubclass(model.hf_model.config.__class__, cls) else model.nnsight
    assert isinstance(instance, cls)
    assert hasattr(type(instance), name) or name in vars(instance), f"{owner}.{name} is gone: update hooked_mllm._compat"


def test_eager_attention_switches_and_restores(model):
    config = model.adapter.text_cfg(model.hf_model.config)
    before = config._attn_implementation
    with _compat.eager_attention([config]):
        assert config._attn_implementation == "eager"
    assert config._attn_implementation == before


def test_wrapped_module_is_the_hf_model(model):
    assert _compat.wrapped_module(model.nnsight) is model.hf_model


def test_runs_leave_the_envoy_unedited(model):
    ids = torch.tensor([[1, 2, 3, 4]])
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: seen.append(h.name))]):
        model.run_with_hooks(input_ids=ids, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, h: seen.append(h.name))])
    assert seen == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    # The public edit API stores on a copy: a plain trace of the wrapper runs none of those hooks.
    seen.clear()
    with model.nnsight.trace(input_ids=ids):
        out = model.nnsight.output.save()
    assert seen == []
    torch.testing.assert_close(out.logits, model.hf_model(input_ids=ids).logits)
