"""The tutorial notebooks (notebooks/*.py, jupytext percent format) run top to bottom in a fresh kernel.

Each is executed with nbclient in a new Python kernel of this environment, offline, as a reader would run
it (tests/notebook_runner.py); a cell that raises fails the test with the cell and its traceback. Their own
asserts (answers and maps checked against the toy world's ground truth) run with them. `make docs` executes
them again into docs/notebooks/ for the site.

The SAE tutorial (notebook_runner.SAE_NOTEBOOKS) imports sae_lens, whose 6.x releases require
transformer-lens<4 while this environment's parity tests need transformer-lens>=4.3: it runs in .venv-sae,
in tests/sae/test_notebooks.py (`make test-sae`), not here.
"""

from __future__ import annotations

import re

import pytest
from notebook_runner import NOTEBOOKS, ROOT, SAE_NOTEBOOKS, execute_notebook

MAIN_NOTEBOOKS = [path for path in NOTEBOOKS if path.stem not in SAE_NOTEBOOKS]


def test_the_tutorials_are_there():
    assert [path.stem for path in NOTEBOOKS] == [
        "01_main_demo",
        "02_where_does_the_model_look",
        "03_patching",
        "04_concepts_shift_steering",
        "05_beyond_one_machine",
        "06_sparse_autoencoders",
    ]
    assert [path.stem for path in MAIN_NOTEBOOKS] == [
        "01_main_demo",
        "02_where_does_the_model_look",
        "03_patching",
        "04_concepts_shift_steering",
        "05_beyond_one_machine",
    ]


def test_make_notebooks_runs_the_sae_tutorials_in_the_sae_environment():
    """`make notebooks` executes SAE_NOTEBOOKS with .venv-sae's kernel: the Makefile names the same files."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    named = re.search(r"^SAE_NOTEBOOKS := (.*)$", makefile, re.M)
    assert named, "the Makefile defines no SAE_NOTEBOOKS"
    assert named.group(1).split() == [f"notebooks/{stem}.py" for stem in SAE_NOTEBOOKS]


@pytest.mark.parametrize("path", MAIN_NOTEBOOKS, ids=[path.stem for path in MAIN_NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    execute_notebook(path, monkeypatch)
