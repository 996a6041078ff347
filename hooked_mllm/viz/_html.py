"""HTML plumbing shared by the views: inline PNGs, escaping, atomic world-readable writes.

Every page this package writes is self-contained (images as ``data:`` URIs, scripts inline)
and lands on disk through :func:`write_atomic`: a temporary file in the target folder, mode
0644, then a rename, so a reader never sees half a file and other users can read it.

Examples:
    >>> from PIL import Image
    >>> png_data_uri(Image.new("RGB", (2, 2))).startswith("data:image/png;base64,")
    True
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

FILE_MODE = 0o644

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}"
    "p.what{color:#333;font-style:italic;margin:.3em 0 .8em}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
    "figure{display:inline-block;margin:8px;vertical-align:top;max-width:100%}figure "
    "img{max-width:100%;height:auto}figcaption{font-size:90%;color:#555}"
    ".hm-scroll{overflow-x:auto;max-width:100%}"
    "table.hm-lens "
    "td{font-family:monospace;font-size:12px;text-align:center;padding:2px 4px;white-space:nowrap}"
    "table.hm-lens th{font-size:11px;font-weight:normal;padding:2px 4px;white-space:nowrap}"
    ".hm-strip{display:flex;flex-wrap:wrap;gap:2px;margin:4px 0}"
    ".hm-strip div{text-align:center;font-size:9px;font-family:monospace}"
    ".hm-strip img{display:block;image-rendering:pixelated;border:1px solid #888}"
)


def escape(value: Any) -> str:
    """HTML-escape ``str(value)``."""
    return html.escape(str(value))


def png_data_uri(image: Any, dpi: int = 110) -> str:
    """A ``data:image/png`` URI of a PIL image or a matplotlib figure (the figure is closed)."""
    buffer = io.BytesIO()
    if isinstance(image, Image.Image):
        image.save(buffer, format="PNG")
    else:
        import matplotlib.pyplot as plt

        image.savefig(buffer, format="PNG", dpi=dpi, bbox_inches="tight")
        plt.close(image)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def img_tag(image: Any, alt: str = "", dpi: int = 110, width: int | None = None) -> str:
    """An ``<img>`` tag holding ``image`` (PIL image or matplotlib figure) inline."""
    size = f' width="{width}"' if width else ""
    return f'<img src="{png_data_uri(image, dpi)}" alt="{escape(alt)}"{size}/>'


def page(title: str, body: str, head: str = "") -> str:
    """A complete self-contained HTML document."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style>{head}</head><body>{body}</body></html>"
    )


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically with mode 0644 and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
