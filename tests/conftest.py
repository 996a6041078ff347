"""Fixtures: tiny random LLaVA models (two text backbones) wrapped in HookedMLLM."""

from __future__ import annotations

import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

from hooked_mllm.testing import random_image, tiny_llava, tiny_processor  # noqa: E402


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
