"""Headless Chromium for the browser tier: Debian's binary and the flags every test starts it with.

The flags keep it off the network (no background requests, every host name unresolved) and quiet on a machine
without a screen. :func:`binary` finds it, skipping the test where it is missing, except under CI, which
installs it (``.ci/run``) and so must fail instead.
"""

from __future__ import annotations

import os
import shutil

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # nothing resolves but the loopback
]


# the standard deviation of a drawn <img>'s pixels (0 for a blank or missing image), a JavaScript function of
# the element: ``page.evaluate(f"() => Array.from(document.images, {IMAGE_SPREAD})")``
IMAGE_SPREAD = """(img) => {
  if (!img.complete || !img.naturalWidth) return 0;
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d"); context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0, squares = 0, n = data.length / 4;
  for (let i = 0; i < data.length; i += 4) { const v = data[i] + data[i + 1] + data[i + 2]; sum += v; squares += v * v; }
  return Math.sqrt(Math.max(0, squares / n - (sum / n) ** 2));
}"""  # noqa: E501


def binary() -> str:
    """The path of Debian's ``chromium``; skips the test where it is missing (fails under CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it with apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found
