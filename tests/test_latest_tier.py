"""The newest-release tier's report (.ci/latest.py): each test is charged to the right family.

The tier itself runs in its own environment (`make test-latest`); this checks its bookkeeping on a
JUnit report written here, so a family whose tests fail is never reported as ok.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def latest():
    spec = importlib.util.spec_from_file_location("ci_latest", ROOT / ".ci" / "latest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _case(classname: str, name: str, outcome: str = "") -> str:
    body = {"failed": "<failure message='x'/>", "error": "<error message='x'/>", "skipped": "<skipped/>"}
    return f'<testcase classname="{classname}" name="{name}">{body.get(outcome, "")}</testcase>'


def test_each_failure_is_charged_to_its_family_and_files_stand_for_the_rest(latest, tmp_path):
    conformance = "tests.architectures.test_conformance"
    cases = [
        _case(conformance, "test_logits_equal_hf[llava]"),
        _case(conformance, "test_logits_equal_hf[llava_next]", "failed"),
        _case(conformance, "test_batched_rows_equal_single_rows[molmo2]", "error"),
        _case("tests.architectures.test_layouts", "test_molmo2_row_inputs_equal_the_processor_on_that_row"),
        _case("tests.architectures.test_layouts", "test_llava_next_tiles_on_the_grid"),
        _case("tests.test_compat", "test_private_names_exist[nnsight.Envoy-_module]"),
        _case("tests.test_compat", "test_minor_release"),
        _case(conformance, "test_logits_equal_hf[qwen2_vl]", "skipped"),
    ]
    xml = tmp_path / "report.xml"
    xml.write_text(f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>")
    names = latest.families()
    assert {"llava", "llava_next", "molmo2", "qwen2_vl"} <= set(names)
    assert names.index("llava_next") < names.index("llava")  # longest first: llava_next is not llava
    rows = latest.report(xml, names)
    assert rows == {
        "llava": (1, []),
        "llava_next": (1, ["test_logits_equal_hf[llava_next]"]),
        "molmo2": (1, ["test_batched_rows_equal_single_rows[molmo2]"]),
        "test_compat": (2, []),
    }
