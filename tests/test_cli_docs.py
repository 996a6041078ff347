"""The CLI and the generated docs stay true (the demo's tests are in test_demos.py)."""

from __future__ import annotations

from pathlib import Path

from hooked_mllm.cli import main
from hooked_mllm.model import HookedMLLM
from hooked_mllm.reference import hook_reference_markdown
from hooked_mllm.testing import tiny_llava, tiny_processor

ROOT = Path(__file__).resolve().parents[1]


def test_hook_reference_doc_is_generated_from_code():
    model = HookedMLLM.from_hf(tiny_llava(), tiny_processor())
    text = hook_reference_markdown(model)
    assert (ROOT / "docs" / "hook_points.md").read_text() == text, "run `make docs` to regenerate"
    for name in ("blocks.{l}.hook_resid_mid", "vision.blocks.{l}.attn.hook_pattern", "projector.hook_out"):
        assert f"`{name}`" in text


def test_hooks_command_lists_names(capsys):
    assert main(["hooks"]) == 0
    out = capsys.readouterr().out.split()
    assert "blocks.0.hook_resid_post" in out and "hook_logits" in out
