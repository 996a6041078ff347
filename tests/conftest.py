"""Fixtures: tiny random LLaVA models (two text backbones) wrapped in HookedMLLM."""

from __future__ import annotations

import os
import sys
import types

import jaxtyping
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

from hooked_mllm.testing import random_image, tiny_llava, tiny_processor  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def remote_requests_carry_unchecked_functions(request):
    """With the run-time type checks on (pyproject's ``--jaxtyping-packages``), hooked_mllm's functions are
    jaxtyping's checking wrappers, whose closures hold weak references that cannot be pickled. A remote
    request (``remote="local"``: tests/test_remote.py, docs/scale.md) carries hooked_mllm by value, so its
    pickler is given the function each wrapper wraps instead: the server runs it unchecked."""
    if not request.config.getoption("jaxtyping_packages", None):
        yield
        return
    from nnsight.intervention.serialization import CustomCloudPickler

    package = os.path.dirname(jaxtyping.__file__)
    reduce = CustomCloudPickler.reducer_override

    def reducer_override(self, obj):
        while (
            isinstance(obj, types.FunctionType)
            and obj.__code__.co_filename.startswith(package)
            and hasattr(obj, "__wrapped__")
        ):
            obj = obj.__wrapped__
        return reduce(self, obj)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CustomCloudPickler, "reducer_override", reducer_override)
        yield


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def backbone(request):
    return request.param


@pytest.fixture(scope="session")
def hooked(backbone):
    from hooked_mllm import HookedMLLM

    return HookedMLLM.from_hf(tiny_llava(backbone), tiny_processor())


@pytest.fixture(scope="session")
def llama_model():
    from hooked_mllm import HookedMLLM

    return HookedMLLM.from_hf(tiny_llava("llama"), tiny_processor())


@pytest.fixture
def batch(hooked):
    return hooked.prepare(
        images=[random_image(0), random_image(1)], prompts=["what color is the circle ?", "how many objects"]
    )


@pytest.fixture
def single(hooked):
    return hooked.prepare(images=[random_image(2)], prompts=["where is the red square ?"])
