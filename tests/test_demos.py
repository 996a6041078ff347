"""Every script in demos/ runs and says what it should; ``make demo``'s report tells the whole story."""

from __future__ import annotations

import importlib.util
import os
import re
import stat
from pathlib import Path

import pytest

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, DEMOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patching_sweep_demo(tmp_path):
    summary = load("patching_sweep").main(["--out", str(tmp_path)])
    assert Path(summary["plot"]).is_file()
    if summary["object_cell"] is not None:  # on the trained toy model the sweep finds the object
        assert summary["peak_cell"] == summary["object_cell"]
        assert summary["clean_metric"] > 0 > summary["corrupted_metric"]


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory):
    """``make demo``'s report, built once per session (the browser tier opens the same file)."""
    from hooked_mllm.demo import run_demo

    return run_demo(out=tmp_path_factory.mktemp("demo"), seed=0)


SECTIONS = [
    "1. Answers on unseen scenes",
    "2. Logit lens",
    "3. Where the model looks",
    "4. Attention view",
    "5. Patching sweep over the image",
    "6. Concept dictionary",
    "7. Shift from toy-llava-deep",
    "8. Steering dose response",
    "9. Sparse-autoencoder features",
]


def test_demo_report_tells_the_whole_story(demo_report):
    html = demo_report.read_text(encoding="utf-8")
    assert stat.S_IMODE(os.stat(demo_report).st_mode) == 0o644
    assert [p.name for p in demo_report.parent.iterdir()] == ["report.html"]
    headings = re.findall(r"<h2>(.*?)</h2><p class='what'>(.*?)</p>", html)
    assert len(headings) == len(SECTIONS)  # every section opens with its one-sentence statement
    for (title, statement), expected in zip(headings, SECTIONS):
        assert title.startswith(expected) and statement.endswith(".") and len(statement) > 40
    assert "World(seed=0)" in html
    assert html.count("var CircuitsVis") == 1 and html.count("CircuitsVis.render(") == 1
    assert not re.search(r"""(src|href)=["']https?:""", html)
    answers = re.search(r"(\d+) of (\d+) answers are right", html)
    assert int(answers.group(1)) >= 0.9 * int(answers.group(2))
    assert html.count("data:image/png;base64,") > 20
    words = re.search(r"Do image tokens read as words\?.*?</table>", html, re.S).group(0)
    colour_at_input = re.findall(r"<td>LM input</td><td>([\d.]+)</td>", words)
    assert float(colour_at_input[0]) >= 0.8  # toy-llava-deep: image tokens name their object's colour
    from hooked_mllm.demo import SAE_NOTE
    from hooked_mllm.viz._html import escape

    # without sae_lens (this environment) the SAE section is the note saying how to get it; with it
    # (.venv-sae) the section's numbers are checked by tests/sae/test_demo_section.py
    if importlib.util.find_spec("sae_lens") is None:
        assert escape(SAE_NOTE) in html and "hooked-mllm[sae]" in SAE_NOTE and "make test-sae" in SAE_NOTE
    else:
        assert escape(SAE_NOTE) not in html and "LM loss recovered" in html


def test_demo_sae_section_without_sae_lens_is_a_note(monkeypatch):
    import hooked_mllm.demo as demo
    from hooked_mllm.viz._html import escape
    from hooked_mllm.viz.report import Report

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sae_lens" else real(name, *a)
    )
    from hooked_mllm import HookedMLLM
    from hooked_mllm.testing import tiny_llava, tiny_processor

    report = Report("t")
    demo._sae_section(HookedMLLM.from_hf(tiny_llava(), tiny_processor()), 0, report)
    html = report.render()
    assert "<h2>9. Sparse-autoencoder features</h2>" in html
    assert f"<p>{escape(demo.SAE_NOTE)}</p>" in html and "pip install &#x27;hooked-mllm[sae]&#x27;" in html


def test_demo_shows_only_unseen_worlds(tmp_path):
    from hooked_mllm.demo import run_demo

    with pytest.raises(ValueError, match="unseen"):
        run_demo(out=tmp_path, seed=10_000)
    assert not any(tmp_path.iterdir())


def test_make_demo_runs_the_cli(monkeypatch, tmp_path):
    import hooked_mllm.demo as demo
    from hooked_mllm.cli import main

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda **kw: calls.append(kw) or tmp_path / "report.html")
    assert main(["demo", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert calls == [{"out": str(tmp_path), "seed": 3, "model_name": None}]
    makefile = (DEMOS.parent / "Makefile").read_text()
    assert "hooked-mllm demo --out reports/demo" in makefile


def test_demo_without_a_toy_checkpoint_runs_on_a_tiny_random_llava(monkeypatch, tmp_path):
    import hooked_mllm.demo as demo

    monkeypatch.setattr(demo, "_load_toy", lambda name: None)
    html = demo.run_demo(out=tmp_path).read_text(encoding="utf-8")
    assert "tiny RANDOM LLaVA" in html and html.count("<p class='what'>") == 4
    assert html.count("CircuitsVis.render(") == 1 and "data:image/png;base64," in html
