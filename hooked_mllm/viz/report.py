"""A small self-contained HTML report: headings, text, tables and inline PNG images.

Used by the demo and by experiments that want a page to show. Written atomically
(temporary file, then rename), so a crash never leaves a half-written report.

Example:
    >>> report = Report("Demo")
    >>> report.heading("Answers").table(["question", "answer"], [["what color ?", "red"]])  # doctest: +ELLIPSIS
    <...Report...>
    >>> path = report.save("reports/demo")            # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from PIL import Image


class Report:
    """An HTML page built section by section."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []

    def heading(self, text: str) -> Report:
        self._parts.append(f"<h2>{html.escape(text)}</h2>")
        return self

    def text(self, text: str) -> Report:
        self._parts.append(f"<p>{html.escape(text)}</p>")
        return self

    def image(self, image: Image.Image, caption: str = "", scale: int = 4) -> Report:
        """An inline PNG, enlarged ``scale`` times with nearest-neighbour sampling."""
        big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        buffer = io.BytesIO()
        big.save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode()
        self._parts.append(f'<figure><img src="data:image/png;base64,{data}"/>'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Report:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
        self._parts.append(f"<table><tr>{head}</tr>{body}</table>")
        return self

    def render(self) -> str:
        style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:3px 8px}figure{display:inline-block;margin:8px}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self._parts) + "</body></html>")

    def save(self, out_dir: str | os.PathLike[str], name: str = "report.html") -> Path:
        """Write ``out_dir/name`` atomically and return its path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.render())
            os.replace(tmp, out / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out / name


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
