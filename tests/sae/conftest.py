"""The SAE tests run on the llama backbone only (splicing goes through the backbone-independent run path)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def backbone():
    return "llama"
