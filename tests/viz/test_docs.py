"""docs/visualization.md stays true: its code blocks run, in order, as one script on the toy model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "visualization.md"


def test_visualization_doc_code_runs(tmp_path, monkeypatch):
    pytest.importorskip("hooked_mllm.toy.model")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports" / "viz").mkdir(parents=True)
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    for name in ("attention_l2.html", "heatmap.png", "report.html"):
        assert (tmp_path / "reports" / "viz" / name).stat().st_size > 1000
    assert oct(os.stat(tmp_path / "reports" / "viz" / "report.html").st_mode & 0o777) == "0o644"
    assert namespace["labels"][2] == "img0[r0c0]"
    assert namespace["grid"].tokens[-1][-1] == namespace["scene"].questions_of("color")[0].answer
