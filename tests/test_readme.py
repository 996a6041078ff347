"""The code blocks of README and of docs/ pages run as written (on the shipped toy model, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "doc",
    [
        "README.md",
        "docs/scale.md",
        "docs/mechanism.md",
        "docs/toy.md",
        "docs/hooks_and_patching.md",
        "docs/getting_started.md",
        "docs/concepts.md",
        "docs/video.md",
    ],
)
def test_code_blocks_run(doc, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(encoding="utf-8"), re.S)
    assert blocks, f"{doc} has no python code block"
    monkeypatch.chdir(tmp_path)
    script = tmp_path / (Path(doc).stem + "_example.py")  # a real file: nnsight reads hook functions' source
    script.write_text("\n".join(blocks), encoding="utf-8")
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(script.read_text(encoding="utf-8"), str(script), "exec"), namespace)  # noqa: S102 - our own docs
    if doc == "README.md":
        assert tuple(namespace["h"].shape) == tuple(namespace["cache"]["resid_post", 3].shape)
        assert not namespace["ablated"].equal(namespace["logits"])
    if doc == "docs/video.md":  # one time step of 2x3 tokens per frame pair; frames gathered in order
        frames, swapped = namespace["frames"], namespace["swapped"]
        assert tuple(frames.shape[:4]) == (1, 2, 2, 3)
        assert swapped[0, 0].equal(frames[0, 1]) and swapped[0, 2].equal(frames[0, 0])
        assert [(v.time, v.grid) for v in namespace["batch"].videos] == [(2, (2, 3)), (3, (2, 2))]
        assert namespace["change"] > 0
        assert tuple(namespace["per_step"].shape) == (namespace["model"].cfg.n_layers, 2)
        assert namespace["sweep"].labels == ["vid0[t0]", "vid0[t1]"]
        cells, n_layers = namespace["cells"], namespace["model"].cfg.n_layers  # (1, 3) blocks of 2x3 steps
        assert tuple(cells.values.shape) == (n_layers, 2, 2, 1) and cells.labels[1] == "vid0[t0 r1c0]"
        assert namespace["step_map"].values.shape == (2, 3)
        image_call, video_call = namespace["calls"]  # the tower's embedding: the image call, then the video's
        assert image_call.shape[0] == 24 and video_call.shape[0] == 2 * 4 * 6
        step1 = tuple(namespace["alone"].videos[0].frame_positions(1))  # one map per time step, on its tokens
        assert len(namespace["maps"]) == 2 and namespace["maps"][1].positions == step1
        assert [ax.get_title() for ax in namespace["figure"].axes if ax.get_title()] == [
            "vid0[t0]",
            "vid0[t1]",
        ]
        toy_clip = namespace["toy_clip"]  # the toy video world: one token per cell, the mover named
        assert (namespace["toy_batch"].videos[0].time, namespace["toy_batch"].videos[0].grid) == (3, (3, 3))
        assert namespace["moved"] == toy_clip.tracks[toy_clip.mover].name
    if doc == "docs/scale.md":  # Qwen2-VL-7B residual stream at image positions: layers x tokens x d_model
        assert namespace["est"].nbytes == 28 * 1564 * 3584 * 2
    if doc == "docs/concepts.md":  # captions without "red" are skipped; the yes -> no vector flips answers
        assert namespace["feats"].manifest["skipped"] and len(namespace["Z"]) > 5
        report = namespace["report"]
        assert report.target_rate_before < 0.2 < report.target_rate, (
            report.target_rate_before,
            report.target_rate,
        )
    if doc == "docs/getting_started.md":  # gradients cached; invokes scoped to their rows; one read per step
        assert namespace["grad_cache"]["blocks.1.hook_resid_post_grad"].abs().sum() > 0
        assert namespace["resid_rows"].shape[0] == 2 and len(namespace["last_resid"]) == 3
        assert (
            namespace["pattern"].dim() == 4 and namespace["new_ids"].shape[1] == namespace["one"].shape[1] + 3
        )
    if (
        doc == "docs/hooks_and_patching.md"
    ):  # the sweep finds the asked object's cell (cells of 2 x 2 patches)
        assert namespace["sweep"].location_map().peak() == (namespace["row"], namespace["col"])
