"""Adapter fields have exact types, and the friendly __post_init__ errors still reach a user whose
constructor calls go through a run-time checker (the suite's jaxtyping + beartype, pytest addopts)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hooked_mllm.architectures.base import Adapter, InputLayout, ModuleLayout, TokenLayout
from hooked_mllm.architectures.llava import LLAVA


@pytest.mark.parametrize("cls", [Adapter, TokenLayout, InputLayout])
def test_fields_have_exact_types(cls):
    loose = [f.name for f in dataclasses.fields(cls) if "| Any" in str(f.type) or str(f.type) == "Any"]
    assert not loose, f"{cls.__name__} fields typed with Any: {loose}"


def test_a_rule_given_as_a_string_names_the_typed_rule():
    with pytest.raises(ValueError, match=r"use Tiles\(\)"):
        InputLayout(split={"pixel_values": "tiles"})


def test_config_classes_as_a_bare_string_says_what_to_write():
    with pytest.raises(TypeError, match=r"write \('TinyConfig',\)"):
        Adapter(name="tiny", config_classes="TinyConfig", modules=ModuleLayout())


def test_a_part_of_the_wrong_kind_names_the_class_to_use():
    with pytest.raises(TypeError, match=r"Adapter\.tokens takes TokenLayout\(\.\.\.\)"):
        Adapter(name="tiny", config_classes=("TinyConfig",), modules=ModuleLayout(), tokens="grid")


def test_a_grid_that_is_not_a_function_is_refused_by_name():
    with pytest.raises(TypeError, match=r"TokenLayout\.grid must be a function"):
        TokenLayout(grid=5)


def test_the_other_methods_stay_checked():
    """Only the generated ``__init__`` is exempt: a wrong argument to a method meets the checker first."""
    with pytest.raises(TypeError) as caught:
        LLAVA.module(torch.nn.Linear(1, 1), 5)
    assert "adapter expects a module" not in str(caught.value)
