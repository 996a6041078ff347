"""Every script in demos/ runs, and says what it should."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, DEMOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patching_sweep_demo(tmp_path):
    summary = load("patching_sweep").main(["--out", str(tmp_path)])
    assert Path(summary["plot"]).is_file()
    if summary["object_cell"] is not None:  # on the trained toy model the sweep finds the object
        assert summary["peak_cell"] == summary["object_cell"]
        assert summary["clean_metric"] > 0 > summary["corrupted_metric"]
