"""The command line: cheap to start, one-line user errors, every option documented, any model's hooks."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hooked_mllm.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, path: str = "hooked-mllm"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_building_the_parser_imports_no_model_code():
    code = (
        "import sys; from hooked_mllm.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'sklearn', 'nnsight') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"building the parser imported {out}"


def test_every_option_has_help_and_defaults_are_shown():
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{path} {action.option_strings or action.dest} has no help text"
        text = parser.format_help()
        assert "(default:" in text or path.endswith(("toy", "sae")) or path == "hooked-mllm", path


def test_closed_option_sets_are_choices_that_match_the_library():
    from hooked_mllm.concepts import cli as concepts_cli
    from hooked_mllm.concepts.decompose import DECOMPOSERS
    from hooked_mllm.concepts.extract import RULES
    from hooked_mllm.hooks.functions import SCHEDULES

    assert set(concepts_cli.METHODS) == set(DECOMPOSERS)
    assert set(concepts_cli.RULES) == set(RULES)
    parsers = dict(_parsers(build_parser()))
    schedule = next(a for a in parsers["hooked-mllm steer"]._actions if a.dest == "schedule")
    assert set(schedule.choices) <= set(SCHEDULES)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["concepts", "--features", "f", "--out", "o", "--method", "nope"])


def test_user_errors_are_one_line_and_debug_shows_the_traceback(capsys):
    assert main(["demo", "--seed", "20000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 20000 is not an unseen world" in err[0] and "--debug" in err[0]
    with pytest.raises(ValueError, match="not an unseen world"):
        main(["--debug", "demo", "--seed", "20000"])


def test_hooks_lists_any_models_hook_points(capsys):
    assert main(["hooks", "--model", "toy:toy-llava"]) == 0
    names = capsys.readouterr().out.split()
    assert "blocks.3.hook_resid_post" in names and "blocks.4.hook_resid_post" not in names
    assert main(["hooks", "--model", "/nonexistent/checkpoint"]) == 2
    assert "nonexistent" in capsys.readouterr().err


def test_toy_names_match_the_recipe_and_train_never_overwrites_the_shipped_checkpoint(tmp_path, monkeypatch):
    from hooked_mllm.toy import checkpoint_dir
    from hooked_mllm.toy.names import STAGE_NAMES
    from hooked_mllm.toy.recipe import STAGES

    assert STAGE_NAMES == tuple(STAGES)
    shipped = checkpoint_dir("toy-llava") / "model.safetensors"
    before = shipped.stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    assert main(["toy", "train", "--name", "toy-llava", "--steps", "1", "--batch-size", "2"]) == 0
    assert (tmp_path / "toy-checkpoints" / "toy-llava" / "model.safetensors").is_file()
    assert shipped.stat().st_mtime_ns == before
