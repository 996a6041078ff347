"""The built wheel carries the package, its toy checkpoints and its console script.

Builds the wheel, installs it (without dependencies: they come from this environment) into a fresh
virtual environment that sees this environment's packages but not the source tree, and runs it from
there: the package must import from the install, load a toy checkpoint and answer ``--help``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    pytest.importorskip("setuptools")
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(dist.glob("hooked_mllm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "hooked_mllm/__init__.py",
        "hooked_mllm/py.typed",
        "hooked_mllm/toy/checkpoints/toy-llava/model.safetensors",
        "hooked_mllm/toy/checkpoints/toy-llava-ft/tokenizer.json",
    ):
        assert needed in names, needed
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # dependencies, not our source
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    code = (
        "import hooked_mllm, hooked_mllm.toy as toy; m = toy.load('toy-llava'); "
        "print(hooked_mllm.__file__); print(m.cfg.n_layers)"
    )
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True, env=env, cwd=tmp_path
    ).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == "4"
    help_text = subprocess.run(
        [str(python), "-m", "hooked_mllm.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    ).stdout
    assert "demo" in help_text and "extract" in help_text
