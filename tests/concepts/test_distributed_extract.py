"""Data-parallel extraction: ranks write parts into one store, merged so it equals a one-process run
exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hooked_mllm.concepts import Features, Sample, TokenRule, extract
from hooked_mllm.concepts._store import folder_lock
from hooked_mllm.testing import random_image

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["what color is the circle ?", "how many objects", "is there a red square ?"]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
# The word is found in one prompt of three: the others are skipped, so the merge must order those too.
RULE = TokenRule("token", token="circle", search="prompt")


@pytest.fixture(scope="module")
def samples():
    return [Sample(f"s{i}", random_image(200 + i), PROMPTS[i % 3]) for i in range(9)]


def run(model, samples, out, **kw):
    return extract(model, samples, HOOKS, RULE, batch_size=2, shard_size=2, out=out, progress=False, **kw)


def assert_same_store(a: Features, b: Features) -> None:
    assert a.ids == b.ids and a.predictions == b.predictions
    assert a.manifest["skipped"] == b.manifest["skipped"]
    for hook in HOOKS:
        # a sample batched with other neighbours differs by float rounding only (left padding)
        torch.testing.assert_close(a.tensor(hook), b.tensor(hook), atol=1e-6, rtol=1e-5)


def test_ranks_in_turn_with_an_interrupted_rank_equal_one_process(llama_model, samples, tmp_path):
    one = run(llama_model, samples, tmp_path / "one")
    assert len(one) == 3 and len(one.manifest["skipped"]) == 6
    out = tmp_path / "two"
    first = run(llama_model, samples, out, rank=0, world_size=2)
    assert len(first) == 0 and not (out / "manifest.json").exists()  # rank 1 has not run: nothing merged yet
    assert sorted(p.name for p in out.glob("part-*.json")) == ["part-n2-r0.json"]

    calls = {"n": 0}

    def interrupt(act, hook):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("stopped")

    with pytest.raises(KeyboardInterrupt):
        with llama_model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", interrupt)]):
            run(llama_model, samples, out, rank=1, world_size=2)
    part = json.loads((out / "part-n2-r1.json").read_text())
    assert part["complete"] is False and sum(s["rows"] for s in part["shards"]) + len(part["skipped"]) == 2
    assert not (out / "manifest.json").exists()

    two = run(llama_model, samples, out, rank=1, world_size=2)  # resumes rank 1, then merges both ranks
    assert_same_store(one, two)
    assert_same_store(one, Features.load(out))
    assert not list(out.glob("part-*")) and not list(out.glob(".lock-part-*"))
    assert [s["file"] for s in two.manifest["shards"]] == [
        "shard_00000.safetensors",
        "shard_00001.safetensors",
    ]
    assert "index" not in json.dumps(two.manifest)


def test_one_process_resumes_what_a_rank_left(llama_model, samples, tmp_path):
    one = run(llama_model, samples, tmp_path / "one")
    run(llama_model, samples[:7], tmp_path / "mixed", rank=0, world_size=2)
    mixed = run(llama_model, samples, tmp_path / "mixed")  # merges rank 0's part with the rest, in order
    assert_same_store(one, mixed)
    assert not list((tmp_path / "mixed").glob("part-*"))


def test_refusals(llama_model, samples, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="needs out="):
        extract(llama_model, samples, HOOKS[0], rank=0, world_size=2, progress=False)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        run(llama_model, samples, tmp_path / "a", rank=2, world_size=2)
    with pytest.raises(ValueError, match="both rank= and world_size="):
        run(llama_model, samples, tmp_path / "a", rank=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="no torch.distributed process group"):
        run(llama_model, samples, tmp_path / "a")
    monkeypatch.delenv("WORLD_SIZE")
    (tmp_path / "b").mkdir()
    with folder_lock(tmp_path / "b", shared=True):  # a data-parallel run is writing
        with pytest.raises(RuntimeError, match="being written by another extraction"):
            run(llama_model, samples, tmp_path / "b")
    with folder_lock(tmp_path / "b"):  # a one-process run is writing
        with pytest.raises(RuntimeError, match="being written by another extraction"):
            run(llama_model, samples, tmp_path / "b", rank=0, world_size=2)


def test_torchrun_two_processes_equal_one_process(tmp_path):
    """``torchrun --nproc_per_node 2 -m hooked_mllm.cli -- extract`` (gloo) against an in-process run."""
    from hooked_mllm import toy
    from hooked_mllm.concepts import toy_dataset

    hooks = "blocks.2.hook_resid_post,blocks.3.hook_resid_post"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "hooked_mllm.cli",
        "--",
        "extract",
        "--model",
        "toy:toy-llava",
        "--hook",
        hooks,
        "--n",
        "10",
        "--batch-size",
        "3",
        "--shard-size",
        "4",
        "--out",
        str(tmp_path / "two"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("10 samples ->") == 1  # rank 0 reports
    one = extract(
        toy.load("toy-llava"),
        toy_dataset(10),
        hooks.split(","),
        batch_size=3,
        shard_size=4,
        out=tmp_path / "one",
        progress=False,
    )
    two = Features.load(tmp_path / "two")
    assert one.ids == two.ids and len(two) == 10
    for hook in hooks.split(","):
        torch.testing.assert_close(one.tensor(hook), two.tensor(hook), atol=1e-6, rtol=1e-5)


def test_cli_needs_rank_and_ranks_together(tmp_path, capsys):
    from hooked_mllm.cli import main

    assert main(["--", "extract", "--hook", HOOKS[0], "--rank", "0", "--out", str(tmp_path)]) == 2
    assert "Give --rank and --ranks together" in capsys.readouterr().err
