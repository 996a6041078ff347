"""The SAE tutorial (notebooks/06_sparse_autoencoders.py) runs top to bottom in a fresh kernel of the SAE
environment (.venv-sae: sae-lens requires transformer-lens<4, so tests/test_notebooks.py in the main
environment leaves it out). Same executor and checks as the other tutorials (tests/notebook_runner.py):
no error, no warning on stderr, no stale progress bar; the notebook's own asserts check its SAE's features
and steering against the toy world's ground truth."""

from __future__ import annotations

import pytest

pytest.importorskip("sae_lens")

from notebook_runner import NOTEBOOKS, SAE_NOTEBOOKS, execute_notebook  # noqa: E402

CHOSEN = [path for path in NOTEBOOKS if path.stem in SAE_NOTEBOOKS]


def test_the_sae_tutorials_are_there():
    assert [path.stem for path in CHOSEN] == list(SAE_NOTEBOOKS)


@pytest.mark.parametrize("path", CHOSEN, ids=[path.stem for path in CHOSEN])
def test_sae_notebook_runs_top_to_bottom(path, monkeypatch):
    execute_notebook(path, monkeypatch)
