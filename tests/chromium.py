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


def binary() -> str:
    """The path of Debian's ``chromium``; skips the test where it is missing (fails under CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it with apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found
