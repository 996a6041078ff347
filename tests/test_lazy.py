"""Lazy package exports: cheap imports, public names that submodules never shadow, helpful errors."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_importing_the_package_loads_no_torch():
    code = "import sys, hooked_mllm, hooked_mllm.concepts, hooked_mllm.toy; print('torch' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )


def test_a_submodule_import_does_not_shadow_the_public_function_of_the_same_name():
    code = (
        "import hooked_mllm.concepts.extract, hooked_mllm.concepts as c, inspect; "
        "print(inspect.isfunction(c.extract), inspect.ismodule(sys.modules['hooked_mllm.concepts.extract']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys; " + code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True"]


def test_public_names_resolve_and_unknown_names_list_close_matches():
    import hooked_mllm

    assert hooked_mllm.HookedMLLM.__name__ == "HookedMLLM"
    assert hooked_mllm.positions.__name__ == "hooked_mllm.positions"
    assert set(hooked_mllm.__all__) <= set(dir(hooked_mllm))
    with pytest.raises(AttributeError, match="did you mean HookedMLLM"):
        hooked_mllm.HookedMLM  # noqa: B018
