"""Fixtures for the views: one tiny eager LLaVA with its cached run, and a headless Chromium driver."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import chromium as chromium_binary
import numpy as np
import pytest
from PIL import Image

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor

CHROMIUM_FLAGS = chromium_binary.FLAGS


@pytest.fixture(scope="session")
def eager_model():
    return HookedMLLM.from_hf(tiny_llava("llama", attn_implementation="eager"), tiny_processor())


@pytest.fixture(scope="session")
def run(eager_model):
    """Two rows of different lengths (left padding), every pattern and residual cached."""
    images = [random_image(0), random_image(1)]
    batch = eager_model.prepare(images=images, prompts=["what color is the circle ?", "how many"])
    logits, cache = eager_model.run_with_cache(
        batch, names_filter=lambda n: n.startswith("blocks.") and ("resid" in n or n.endswith("hook_pattern"))
    )
    return eager_model, batch, cache, logits, images


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


class Chromium:
    """Headless Chromium: screenshots, the DOM after scripts ran, and what the page logged."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def _run(self, url: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        profile = tempfile.mkdtemp(prefix="hm-chromium-")
        try:
            return subprocess.run(
                [
                    self.binary,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    "--enable-logging=stderr",
                    "--v=0",
                    "--virtual-time-budget=10000",
                    *args,
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    def open(self, page: Path, width: int = 1280, height: int = 1400) -> tuple[np.ndarray, str, list[str]]:
        """``(screenshot [h, w, 3], DOM after scripts ran, console lines)`` of a local page."""
        url = page.resolve().as_uri()
        size = f"--window-size={width},{height}"
        shot = page.with_suffix(".png")
        result = self._run(url, size, f"--screenshot={shot}")
        assert shot.is_file(), f"chromium wrote no screenshot: {result.stderr[-2000:]}"
        dom = self._run(url, size, "--dump-dom")
        console = [line for line in (result.stderr + dom.stderr).splitlines() if ":CONSOLE" in line]
        return np.asarray(Image.open(shot).convert("RGB")), dom.stdout, console


@pytest.fixture(scope="session")
def chromium():
    return Chromium(chromium_binary.binary())
