# ruff: noqa: E501 (the page script and selectors read best on one line)
"""The explorer in a real browser: Playwright drives Debian's Chromium (nothing downloaded) through a question.

It loads a toy scene, asks its first question, checks the page shows the toy world's answer, that the maps
drew (pixels, not blank), clicks a head (its map and label change) and a cell of the logit-lens grid (its
top tokens appear), runs a patching sweep, and that the page logged no error. A screenshot of the final
page is written where `EXPLORER_SCREENSHOT` points (docs/images/explorer.png is made that way).
"""

from __future__ import annotations

import os
import threading

import chromium
import pytest

from hooked_mllm import toy
from hooked_mllm.explore import Explorer, serve

pytestmark = pytest.mark.browser

playwright_sync = pytest.importorskip("playwright.sync_api")

# the standard deviation of a drawn image's pixels: 0 for a blank or missing image
PIXEL_SPREAD = f"(id) => ({chromium.IMAGE_SPREAD})(document.getElementById(id))"


@pytest.fixture(scope="module")
def server():
    server = serve(Explorer(toy.load("toy-llava")), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    binary = chromium.binary()
    flags = [flag for flag in chromium.FLAGS if flag != "--headless"]  # Playwright adds its own headless mode
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, headless=True, args=flags)
        yield browser
        browser.close()


def test_a_question_clicked_through_in_chromium(server, browser):
    scene = toy.World(seed=7).scene(6)
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(server.url)
    page.wait_for_function("document.getElementById('question').value.length > 0", timeout=60_000)
    assert page.input_value("#question") == scene.questions[0].question
    page.click("#ask")
    page.wait_for_function("document.getElementById('answer').textContent.length > 0", timeout=180_000)
    page.wait_for_function("document.getElementById('head-label').textContent.length > 0", timeout=60_000)
    assert page.text_content("#answer").split()[0] == scene.questions[0].answer
    assert page.text_content("#status") == ""
    assert page.evaluate(PIXEL_SPREAD, "preview") > 1
    assert page.evaluate(PIXEL_SPREAD, "head-map") > 1
    assert page.locator("#baselines img").count() >= 3
    assert page.locator("#lens-grid td").count() == 36  # the toy's 6 x 6 grid
    page.click('#heads td[data-layer="2"][data-head="1"]')
    page.wait_for_function(
        "document.getElementById('head-label').textContent.startsWith('L2H1')", timeout=60_000
    )
    assert page.locator('#heads td.on[data-layer="2"][data-head="1"]').count() == 1
    page.hover('#lens-grid td[data-row="5"][data-col="1"]')
    assert page.get_attribute('#lens-grid td[data-row="5"][data-col="1"]', "title")
    page.click('#lens-grid td[data-row="5"][data-col="1"]')
    page.wait_for_function("document.getElementById('cell-info').textContent.startsWith('cell (5, 1)')")
    page.click("#patch")
    page.wait_for_function("document.getElementById('patch-label').textContent.length > 0", timeout=120_000)
    assert page.evaluate(PIXEL_SPREAD, "patch-map") > 1
    assert page.frame_locator("#attention").locator("body").inner_html(timeout=30_000)
    if os.environ.get("EXPLORER_SCREENSHOT"):
        page.screenshot(path=os.environ["EXPLORER_SCREENSHOT"], full_page=True)
    assert not problems, problems
    page.close()


def test_bad_input_shows_one_line_in_the_page(server, browser):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_function("document.getElementById('question').value.length > 0", timeout=60_000)
    page.fill("#question", "   ")
    page.click("#ask")
    page.wait_for_function("document.getElementById('status').className === 'error'", timeout=60_000)
    assert page.text_content("#status").startswith("Type a question")
    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}]
    )
    page.fill("#question", "what color is it ?")
    page.wait_for_timeout(300)
    page.click("#ask")
    page.wait_for_function(
        "document.getElementById('status').textContent.includes('not an image')", timeout=60_000
    )
    page.close()
