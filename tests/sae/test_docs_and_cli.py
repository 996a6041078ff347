"""docs/sae.md runs as written, and `hooked-mllm sae train` trains, saves (SAELens' format) and reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("sae_lens")

from hooked_mllm.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_guide_code_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "sae.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "sae_example.py"  # a real file: nnsight reads hook functions' source
    script.write_text("\n".join(blocks), encoding="utf-8")
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(script.read_text(encoding="utf-8"), str(script), "exec"), namespace)  # noqa: S102 - our docs
    assert namespace["acts"].shape[-1] == namespace["sae"].cfg.d_sae
    assert not torch.allclose(namespace["logits"], namespace["clean"])
    assert namespace["again"].cfg.metadata.hook_name == namespace["hook"]
    metrics = namespace["metrics"]
    assert namespace["page"].is_file() and "<h2>Top activations</h2>" in namespace["page"].read_text()
    assert metrics.explained_variance > 0.2 and metrics.l0 <= 8 + 1e-6  # (the mean alone explains 0)


def test_sae_train_command(tmp_path, capsys):
    from sae_lens import SAE

    out = tmp_path / "sae"
    code = main(
        [
            "sae",
            "train",
            "--model",
            "tiny:llava",
            "--hook",
            "blocks.1.hook_resid_post",
            "--positions",
            "text",
            "--architecture",
            "topk",
            "--k",
            "4",
            "--d-sae",
            "32",
            "--tokens",
            "256",
            "--train-batch-size",
            "32",
            "--n",
            "6",
            "--eval-n",
            "3",
            "--batch-size",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    sae = SAE.load_from_disk(out)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post" and sae.cfg.d_sae == 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["l0"] <= 4 + 1e-6 and "loss_recovered" in metrics
    assert "explained_variance" in capsys.readouterr().out


def test_cli_architectures_are_the_trainers():
    from hooked_mllm.sae import cli, train

    assert cli._ARCHITECTURES == train.ARCHITECTURES


def test_sae_study_command(tmp_path, capsys):
    out = tmp_path / "study.md"
    args = "--model toy:toy-llava --hook blocks.0.hook_resid_post --d-sae 32 --k 4 --tokens 256 --n-train 4 "
    args += "--n-select 8 --n-test 8 --dictionaries kmeans --components 4 --steer-scenes 12 --strengths 2 "
    args += f"--batch-size 8 --out {out}"
    assert main(["sae", "study", *args.split()]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.rstrip() == capsys.readouterr().out.rstrip()
    assert "| attribute | value | sae | kmeans |" in text and "| shape | triangle |" in text
    assert "| strength | removed |" in text and "without an SAE feature of AUROC >= 0.95" in text
