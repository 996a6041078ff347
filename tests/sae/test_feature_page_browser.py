"""A feature page in a real browser: Playwright drives Debian's Chromium (nothing downloaded) over a page
written by ``write_feature_page``; its patch images are drawn (pixels, not blank), its histogram has one bar
per bin with the heights of the feature's own activations, and the page logs no error.

Run by ``.ci/run`` (``make test-sae PYTEST_ARGS="-m browser"``), kept out of the default run (the ``browser``
marker is deselected in pyproject's addopts).
"""

from __future__ import annotations

import chromium
import pytest
import torch

pytestmark = pytest.mark.browser

pytest.importorskip("sae_lens")
playwright_sync = pytest.importorskip("playwright.sync_api")

from hooked_mllm.sae.features import top_examples, write_feature_page  # noqa: E402
from hooked_mllm.testing import random_image  # noqa: E402

from .helpers import random_sae  # noqa: E402

HOOK = "blocks.1.hook_resid_post"

# the standard deviation of each <img>'s pixels (0 for a blank or missing image), in page order
PIXEL_SPREADS = f"() => Array.from(document.images, {chromium.IMAGE_SPREAD})"

BARS = """() => Array.from(document.querySelectorAll('svg[aria-label="activation histogram"] rect'),
  (r) => r.getBoundingClientRect().height)"""


@pytest.fixture(scope="module")
def browser():
    binary = chromium.binary()
    flags = [flag for flag in chromium.FLAGS if flag != "--headless"]  # Playwright adds its own headless mode
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, headless=True, args=flags)
        yield browser
        browser.close()


def test_feature_page_draws_in_chromium(hooked, browser, tmp_path):
    data = [
        (random_image(i), p) for i, p in enumerate(["what color is it ?", "how many <b>objects", "where"])
    ]
    sae = random_sae(hooked.cfg.d_model, HOOK, d_sae=32, seed=7)
    _, values = top_examples(hooked, sae, data, list(range(32)), k=4)
    feature = max(range(32), key=lambda f: values[f].numel())  # the busiest: image and text examples
    examples, _ = top_examples(hooked, sae, data, [feature], k=6)
    n_images = sum(e.cell is not None for e in examples[feature])
    assert n_images > 0
    path = write_feature_page(hooked, sae, data, feature, tmp_path / "feature.html", k=6)

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    spreads = page.evaluate(PIXEL_SPREADS)
    assert len(spreads) == n_images and all(s > 1 for s in spreads), spreads
    assert page.locator("h1").text_content() == f"Feature {feature} of the SAE at {HOOK}"
    assert "how many <b>objects" in page.locator("body").text_content()  # escaped: shown as text
    heights = page.evaluate(BARS)
    counts = torch.histc(values[feature], bins=20, min=0.0, max=float(values[feature].max()))
    assert len(heights) == 20
    assert heights == pytest.approx((100 * counts / counts.max()).tolist(), abs=0.11)  # drawn to scale
    assert f"{values[feature].numel()} active tokens" in page.locator("body").text_content()
    assert problems == [], problems
    page.close()
