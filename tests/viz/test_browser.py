"""Browser tier: headless Chromium opens the demo report and a saved attention view and we look at the pixels.

Run by ``.ci/run`` (``pytest -m browser``), kept out of the default run (the ``browser`` marker is
deselected in pyproject's addopts). A small script appended to a copy of each page records, after the
page's own scripts ran, the box of every image and every circuitsvis view; the screenshot (a window as
tall as the page) is cropped to those boxes and each must hold a drawing, not a blank, and the page must
log nothing to the console (an exception, a failed load: network is mapped to nowhere).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hooked_mllm.viz import attention_heads

pytestmark = pytest.mark.browser

MEASURE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const boxes = [];
  document.querySelectorAll("img, [id^=hm-cv-]").forEach((el) => {
    const r = el.getBoundingClientRect();
    boxes.push({kind: el.tagName === "IMG" ? "img" : "attention", alt: el.alt || "",
                children: el.childElementCount, x: r.left + window.scrollX, y: r.top + window.scrollY,
                w: r.width, h: r.height});
  });
  document.body.setAttribute("data-boxes", JSON.stringify(boxes));
  document.body.setAttribute("data-height", String(document.documentElement.scrollHeight));
}, 1500));
</script>"""


def measured(chromium, page: Path, out: Path) -> tuple[np.ndarray, list[dict], str, list[str]]:
    """Screenshot of the whole page, the element boxes, the DOM text and the console lines."""
    copy = out / page.name
    copy.write_text(
        page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8"
    )
    _, dom, console = chromium.open(copy, height=900)
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))
    shot, dom, more = chromium.open(copy, height=min(height + 40, 16000))
    boxes = json.loads(re.search(r"data-boxes=\"([^\"]*)\"", dom).group(1).replace("&quot;", '"'))
    return shot, boxes, dom, console + more


def crop(shot: np.ndarray, box: dict) -> np.ndarray:
    x, y, w, h = (int(round(box[k])) for k in ("x", "y", "w", "h"))
    return shot[y : y + h, x : x + w]


def drawn(region: np.ndarray, min_colours: int) -> bool:
    """Not blank: some non-white pixels and more than ``min_colours`` distinct colours."""
    if region.size == 0:
        return False
    white = (region > 245).all(-1).mean()
    colours = len(np.unique(region.reshape(-1, 3), axis=0))
    return white < 0.97 and colours > min_colours


def test_saved_attention_view_draws(chromium, run, tmp_path):
    _, _, cache, _, images = run
    page = attention_heads(cache, 1, image=images[0]).save(tmp_path / "view" / "attention.html")
    shot, boxes, dom, console = measured(chromium, page, tmp_path)
    assert console == [], console
    (view,) = [b for b in boxes if b["kind"] == "attention"]
    assert view["children"] > 0 and view["h"] > 300, view  # React rendered into the container
    region = crop(shot, view)
    assert drawn(region, 50)
    attention = (region[..., 2].astype(int) - region[..., 1] > 60).mean()  # circuitsvis' blue/purple cells
    assert attention > 0.002, attention
    assert "Head Selector" in dom and "img0[r0c0]" in dom
    tiles = [b for b in boxes if b["kind"] == "img"]
    assert len(tiles) == 16 and all(drawn(crop(shot, t), 3) for t in tiles)


def test_demo_report_draws_every_figure_and_view(chromium, tmp_path):
    from hooked_mllm.demo import run_demo

    page = run_demo(out=tmp_path / "demo", seed=0)
    shot, boxes, dom, console = measured(chromium, page, tmp_path)
    assert console == [], console
    (view,) = [b for b in boxes if b["kind"] == "attention"]
    assert view["children"] > 0 and view["h"] > 300 and drawn(crop(shot, view), 50)
    figures = [b for b in boxes if b["kind"] == "img" and b["w"] > 250]
    assert len(figures) >= 4  # lens per cell, where it looks, patching sweep, steering
    blank = [b for b in figures if not drawn(crop(shot, b), 40)]
    assert blank == [], blank
    small = [b for b in boxes if b["kind"] == "img" and b["w"] <= 250]
    assert small and all(b["w"] > 10 and b["h"] > 10 for b in small)  # no broken-image icons
    assert shot.shape[0] > 4000


def test_hostile_tokens_and_texts_draw_and_run_nothing(chromium, tmp_path):
    import torch

    from hooked_mllm.viz import Report

    hostile = [
        "<!--<script>",
        "</script><script>document.body.setAttribute('data-pwned','script')</script>",
        "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">",
        "]]>\u2028\u2029&amp;'\"",
        "red",
    ]
    pattern = torch.softmax(
        torch.randn(2, len(hostile), len(hostile), generator=torch.Generator().manual_seed(0)), -1
    )
    view = attention_heads(pattern, tokens=hostile)
    page = (
        Report(hostile[1])
        .section(hostile[0], hostile[2])
        .text(hostile[3])
        .attention(view)
        .table(["token"], [[t] for t in hostile])
        .save(tmp_path / "hostile")
    )
    shot, boxes, dom, console = measured(chromium, page, tmp_path)
    assert console == [], console
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]  # no injected code ran
    (drawn_view,) = [b for b in boxes if b["kind"] == "attention"]
    assert drawn_view["children"] > 0 and drawn_view["h"] > 100 and drawn(crop(shot, drawn_view), 20)
    assert "Head Selector" in dom  # circuitsvis rendered the view
    after = dom[dom.index('id="' + view.element_id) :]  # the page after the view was parsed, not swallowed:
    assert "<td>&lt;!--&lt;script&gt;</td>" in after and "<td>red</td>" in after
