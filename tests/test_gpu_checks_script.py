"""benchmarks/gpu_checks.py stays runnable: its CPU dry run at tiny sizes checks the cached residuals against
HF.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_on_cpu(capsys):
    results = _load().main(["--device", "cpu", "--tiny", "--repeats", "1"])
    assert results["overhead_float32"]["cache_ratio"] > 0
    assert results["sparse_dictionary"]["cpu_recovery"] > 0.98
    for attn in ("sdpa", "eager"):  # real_size.py's table, SDPA and eager
        row = results[f"tools_{attn}_16"]
        assert row["forward_s"] > 0 and row["image_tokens"] == 16
        assert (
            row["cache_all_ratio"] > 0 and row["locations_top_ratio"] > 0 and row["attention_map_ratio"] > 0
        )
        assert row["locations_all_ratio"] > 0 and row["extraction_ratio"] > 0
    # the 7B-shape check's code path runs too (a 2-layer stand-in built from the geometry preset)
    assert (
        results["llava_7b_shape_bf16"]["forward_s"] > 0 and results["llava_7b_shape_bf16"]["cache_ratio"] > 0
    )
    out = capsys.readouterr().out
    assert "overhead_float32" in out and "| d_model | image tokens |" in out


def test_asking_for_cuda_without_one_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SystemExit, match="No CUDA device here"):
        _load().main(["--device", "cuda"])
