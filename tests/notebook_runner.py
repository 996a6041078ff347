"""Executes a tutorial notebook (notebooks/*.py, jupytext percent format) top to bottom in a fresh kernel.

Shared by tests/test_notebooks.py (the main environment) and tests/sae/test_notebooks.py (the SAE
environment, .venv-sae: the notebooks that need sae-lens, which requires transformer-lens<4). Each is
executed with nbclient in a new Python kernel of the running environment, offline, as a reader would run
it; a cell that raises fails the test with the cell and its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))

SAE_NOTEBOOKS = ("06_sparse_autoencoders",)
"""The notebooks that import sae_lens. SAELens 6.x requires transformer-lens<4 and the main environment's
parity tests transformer-lens>=4.3, so these run in .venv-sae only: tests/sae/test_notebooks.py, and
`make notebooks` with .venv-sae's kernel (the Makefile's SAE_NOTEBOOKS names the same files)."""


def execute_notebook(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``path`` in a fresh kernel of this environment and check what a reader would see: no error, no
    warning on stderr, no widget (a stale progress bar), and some output.

    Args:
        path: A notebooks/*.py file.
        monkeypatch: The test's fixture (the kernel's environment: offline, no progress bars, this checkout
            first on its path).
    """
    nbclient = pytest.importorskip("nbclient")
    jupytext = pytest.importorskip("jupytext")
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
