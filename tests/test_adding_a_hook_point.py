"""docs/adding_a_hook_point.md runs as written: a hook kind added to the table gives a hook point that
reads what a torch forward hook on its module reads, and a write there reaches the logits."""

from __future__ import annotations

import re
from pathlib import Path

from hooked_mllm import hook_kinds

ROOT = Path(__file__).resolve().parents[1]


def test_adding_a_hook_point_guide_runs_as_written(tmp_path, monkeypatch):
    guide = (ROOT / "docs" / "adding_a_hook_point.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    assert blocks
    before = hook_kinds.BLOCK_KINDS
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "adding_a_hook_point.py"  # a real file: nnsight reads hook functions' source
    script.write_text("\n".join(blocks), encoding="utf-8")
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(script.read_text(encoding="utf-8"), str(script), "exec"), namespace)  # noqa: S102 - our own docs
    assert hook_kinds.BLOCK_KINDS is before  # the example puts the table back
    model = namespace["model"]
    names = model.hook_names()
    assert (
        names.index("blocks.0.mlp.hook_pre")
        < names.index("blocks.0.mlp.hook_up")
        < names.index("blocks.0.mlp.hook_post")
    )
    assert namespace["cache"]["blocks.1.mlp.hook_up"].shape[-1] == model.cfg.d_mlp
