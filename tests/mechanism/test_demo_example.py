"""The worked example of docs/mechanism.md runs and finds the asked object."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "demos" / "mechanism_example.py"


def test_mechanism_example(tmp_path):
    spec = importlib.util.spec_from_file_location("mechanism_example", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--out", str(tmp_path)])
    assert Path(summary["plot"]).is_file() and Path(summary["plot"]).stat().st_mode & 0o044
    assert summary["hits"]["all heads summed"] and summary["hits"]["mean attention"]
    assert "-> T" in summary["explanation"]
