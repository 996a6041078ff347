"""``trust_remote_code`` reaches transformers exactly as the user gave it, on every loading path.

A checkpoint whose config names custom code (``auto_map``) must never run that code unless the user
passed ``trust_remote_code=True``. Left out (``None``), transformers asks ``[y/N]`` on stdin; these
tests answer ``y`` to any such question, so a path that drops a ``False`` runs the checkpoint's code
and writes the marker file the tests look for.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from hooked_mllm import HookedMLLM
from hooked_mllm.cli import main
from hooked_mllm.testing import tiny_llava, tiny_processor


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plain")
    tiny_llava("llama").save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return path


@pytest.fixture
def hostile(plain, tmp_path) -> tuple[Path, Path]:
    """A copy of ``plain`` whose config and processor name custom code that writes a marker file."""
    path = tmp_path / "hostile"
    path.mkdir()
    for file in plain.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    marker = tmp_path / "code-ran"
    (path / "custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlavaConfig as Cfg, LlavaForConditionalGeneration as Model\n"
        "from transformers import LlavaProcessor as Proc\n"
    )
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "custom-vlm"
    config["auto_map"] = {
        "AutoConfig": "custom.Cfg",
        "AutoModelForImageTextToText": "custom.Model",
        "AutoModelForCausalLM": "custom.Model",
    }
    (path / "config.json").write_text(json.dumps(config))
    processor = json.loads((path / "processor_config.json").read_text())
    processor["processor_class"] = "CustomProc"
    processor["auto_map"] = {"AutoProcessor": "custom.Proc"}
    (path / "processor_config.json").write_text(json.dumps(processor))
    return path, marker


@pytest.fixture
def asked(monkeypatch) -> list[str]:
    """Every question asked on stdin, each answered ``y`` (what a hurried user types)."""
    questions: list[str] = []

    def answer(prompt: str = "") -> str:
        questions.append(prompt)
        return "y"

    monkeypatch.setattr(builtins, "input", answer)
    return questions


@pytest.mark.parametrize("remote", [False, "local"])
def test_from_pretrained_never_runs_remote_code_it_was_not_allowed(hostile, asked, remote):
    path, marker = hostile
    with pytest.raises(ValueError, match="trust_remote_code"):
        HookedMLLM.from_pretrained(str(path), remote=remote, trust_remote_code=False)
    assert asked == []
    assert not marker.exists()


@pytest.mark.parametrize(
    "argv",
    [["toy", "eval", "--n", "1", "--path"], ["toy", "science", "--n", "1", "--path"], ["hooks", "--model"]],
)
def test_cli_loaders_never_run_remote_code(hostile, asked, argv, capsys):
    path, marker = hostile
    assert main([*argv, str(path)]) == 2
    err = capsys.readouterr().err
    assert "trust_remote_code" in err and len(err.strip().splitlines()) == 1, err
    assert asked == []
    assert not marker.exists()


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("remote", [False, "local"])
def test_trust_remote_code_reaches_the_processor_as_given(plain, monkeypatch, trust, remote):
    from transformers import AutoProcessor

    seen: list[object] = []
    original = AutoProcessor.from_pretrained.__func__

    def recording(cls, name, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code", "left out"))
        return original(cls, name, *args, **kwargs)

    monkeypatch.setattr(AutoProcessor, "from_pretrained", classmethod(recording))
    HookedMLLM.from_pretrained(str(plain), remote=remote, trust_remote_code=trust)
    assert seen and all(value is trust for value in seen), seen
