"""The tutorial notebooks (notebooks/*.py, jupytext percent format) run top to bottom in a fresh kernel.

Each is executed with nbclient in a new Python kernel of this environment, offline, as a reader would run
it; a cell that raises fails the test with the cell and its traceback. Their own asserts (answers and maps
checked against the toy world's ground truth) run with them. `make docs` executes them again into
docs/notebooks/ for the site.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))


def test_the_tutorials_are_there():
    names = [path.stem for path in NOTEBOOKS]
    assert names[:4] == [
        "01_main_demo",
        "02_where_does_the_model_look",
        "03_patching",
        "04_concepts_shift_steering",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar too
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on the first error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    warnings = [text for text in stderr if "Warning" in text]
    assert not warnings, warnings  # nothing a reader would take for a problem
    shown = [o.get("data", {}) for o in outputs]
    assert not [d for d in shown if "application/vnd.jupyter.widget-view+json" in d]  # no stale progress bars
    assert outputs  # it showed what it computed
