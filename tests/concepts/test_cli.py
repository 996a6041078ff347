"""The concept commands end to end on a folder of images and a tiny saved model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hooked_mllm.cli import main
from hooked_mllm.concepts import Features
from hooked_mllm.concepts.steering import normalize_answer
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


def test_extract_concepts_shift_steer(tmp_path):
    for name, seed in (("a", 0), ("b", 1)):
        tiny_llava(seed=seed).save_pretrained(tmp_path / name)
        tiny_processor().save_pretrained(tmp_path / name)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        random_image(i).save(images / f"{i:02d}.png")
    common = [
        "--hook",
        "blocks.1.hook_resid_post",
        "--images",
        str(images),
        "--prompt",
        "is there a red square ?",
        "--batch-size",
        "6",
        "--predict",
        "--max-new-tokens",
        "3",
        "--dtype",
        "float32",
        "--device",
        "cpu",
    ]
    assert main(["extract", "--model", str(tmp_path / "a"), *common, "--out", str(tmp_path / "fa")]) == 0
    assert main(["extract", "--model", str(tmp_path / "b"), *common, "--out", str(tmp_path / "fb")]) == 0
    feats = Features.load(tmp_path / "fa")
    assert feats.features.shape == (12, 64)
    assert (
        main(
            [
                "concepts",
                "--features",
                str(tmp_path / "fa"),
                "--method",
                "pca",
                "--k",
                "3",
                "--out",
                str(tmp_path / "c.npz"),
                "--model",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    saved = np.load(tmp_path / "c.npz")
    assert saved["components"].shape == (3, 64) and saved["activations"].shape == (12, 3)
    two = [
        "--hook",
        "blocks.0.hook_resid_post,blocks.1.hook_resid_post",
        "--images",
        str(images),
        "--prompt",
        "is there a red square ?",
        "--rule",
        "predicting",
        "--token",
        "square",
        "--search",
        "prompt",
    ]
    assert main(["extract", "--model", str(tmp_path / "a"), *two, "--out", str(tmp_path / "f2")]) == 0
    assert Features.load(tmp_path / "f2").hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    with pytest.raises(SystemExit, match="pick one with --hook"):
        main(["concepts", "--features", str(tmp_path / "f2"), "--out", str(tmp_path / "x.npz")])
    assert (
        main(
            [
                "concepts",
                "--features",
                str(tmp_path / "f2"),
                "--hook",
                "blocks.0.hook_resid_post",
                "--method",
                "sparse",
                "--alpha",
                "0.1",
                "--k",
                "2",
                "--out",
                str(tmp_path / "s.npz"),
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit, match="alpha does not apply to --method kmeans"):
        main(
            [
                "concepts",
                "--features",
                str(tmp_path / "fa"),
                "--method",
                "kmeans",
                "--alpha",
                "1",
                "--out",
                str(tmp_path / "x.npz"),
            ]
        )
    assert (
        main(
            [
                "concepts",
                "--features",
                str(tmp_path / "fa"),
                "--method",
                "topnorm",
                "--k",
                "3",
                "--out",
                str(tmp_path / "t.npz"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "t.npz")["components"].shape == (3, 64)
    assert (
        main(
            [
                "shift",
                "--original",
                str(tmp_path / "fa"),
                "--finetuned",
                str(tmp_path / "fb"),
                "--k",
                "2",
                "--out",
                str(tmp_path / "shift.npz"),
            ]
        )
        == 0
    )  # arrays and report do not overwrite each other
    report = json.loads((tmp_path / "shift.json").read_text())
    assert report["samples"] == 12 and len(report["counts"]) == 2
    assert set(report["baselines"]) == {"global_mean_shift", "random_assignment"}
    assert np.load(tmp_path / "shift.npz")["shift_vectors"].shape == (2, 64)
    answers = sorted({normalize_answer(p) for p in feats.predictions} - {""})
    assert len(answers) >= 2, "the seeded tiny model gives two different answers over these images"
    assert (
        main(
            [
                "steer",
                "--features",
                str(tmp_path / "fa"),
                "--source",
                answers[0],
                "--target",
                answers[1],
                "--out",
                str(tmp_path / "v.pt"),
            ]
        )
        == 0
    )
    assert torch.load(tmp_path / "v.pt").shape == (64,)
    rows = [
        {
            "image": f"images/{i:02d}.png",
            "prompt": "is there a red square ?",
            "answer": answers[i % 2],
            "answer_type": "yes/no",
        }
        for i in range(4)
    ]
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert (
        main(
            [
                "steer",
                "--vector",
                str(tmp_path / "v.pt"),
                "--source",
                answers[0],
                "--target",
                answers[1],
                "--evaluate",
                str(tmp_path / "eval.jsonl"),
                "--model",
                str(tmp_path / "a"),
                "--layer",
                "1",
                "--alpha",
                "0",
                "2",
                "--report",
                str(tmp_path / "steer.json"),
            ]
        )
        == 0
    )
    steer = json.loads((tmp_path / "steer.json").read_text())
    assert set(steer) == {"0.0", "2.0"} and steer["0.0"]["changed_targeted"] == 0  # alpha 0 changes nothing
    assert len(steer["2.0"]["answers"]) == 2 and "yes/no" in steer["2.0"]["other_by_type"]
