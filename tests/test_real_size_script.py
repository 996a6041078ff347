"""benchmarks/real_size.py stays runnable: its tiny check measures every tool and checks model.estimate
against the bytes of the cache it measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_size.py"


def _load():
    spec = importlib.util.spec_from_file_location("real_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_measures_every_tool(tmp_path, capsys):
    out = tmp_path / "result.json"
    result = _load().main(["--tiny", "--json", str(out), "--plot", str(tmp_path / "grid.png")])
    (row,) = result["rows"]
    assert (row["d_model"], row["image_tokens"], row["lm_layers"]) == (128, 16, 2)
    tools = (
        "forward",
        "cache_resid",
        "cache_all",
        "locations_top",
        "locations_all",
        "attention_map",
        "extraction",
    )
    for tool in tools:
        assert row[f"{tool}_s"] > 0 and row[f"{tool}_peak_mib"] >= 0
    assert row["cache_resid_estimate_mib"] * 2**20 == 2 * row["seq"] * 128 * 2  # layers x seq x d x bf16
    assert result["slope_row"]["lm_layers"] == 3 and "forward_s" in result["extrapolated_32_layers"]
    assert json.loads(out.read_text())["rows"][0]["d_model"] == 128
    assert "| 128 | 16 | 2 / 1 |" in capsys.readouterr().out
    assert (tmp_path / "grid.png").stat().st_size > 0
    # every head of the last layer at every image position: estimate_tool's count of vectors
    assert row["locations_all_vectors"] == 16 * (128 // 128) and row["locations_all_chunks"] == 1
    assert _load().main(["--from-json", str(out)])["rows"] == result["rows"]
