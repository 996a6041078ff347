"""A self-contained HTML report: sections with a one-sentence statement, tables, figures, attention views.

Used by the demo and by experiments that want a page to show. Images and matplotlib figures
are inlined as PNG ``data:`` URIs; circuitsvis views are inlined with the package's local
JavaScript bundle, included once in the page head when the report has any view. Nothing is
fetched from the network when the page opens. Written atomically with mode 0644
(:func:`hooked_mllm.viz._html.write_atomic`).

Examples:
    >>> report = Report("Demo")
    >>> report.section("Answers", "What the model answers.").table(
    ...     ["question", "answer"], [["what color ?", "red"]]
    ... )  # doctest: +ELLIPSIS
    <...Report...>
    >>> path = report.save("reports/demo")            # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from . import _html


class Report:
    """An HTML page built section by section."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []
        self._needs_circuitsvis = False

    def section(self, title: str, statement: str) -> Report:
        """A new section: its heading and the one sentence that says what it shows."""
        self._parts.append(f"<h2>{_html.escape(title)}</h2><p class='what'>{_html.escape(statement)}</p>")
        return self

    def heading(self, text: str) -> Report:
        self._parts.append(f"<h2>{_html.escape(text)}</h2>")
        return self

    def text(self, text: str) -> Report:
        self._parts.append(f"<p>{_html.escape(text)}</p>")
        return self

    def image(self, image: Image.Image, caption: str = "", scale: int = 4) -> Report:
        """An inline PNG, enlarged ``scale`` times with nearest-neighbour sampling."""
        big = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        self._parts.append(
            f"<figure>{_html.img_tag(big, caption)}<figcaption>{_html.escape(caption)}</figcaption></figure>"
        )
        return self

    def figure(self, figure: Any, caption: str = "", dpi: int = 110) -> Report:
        """An inline matplotlib figure (closed once rendered)."""
        cap = f"<figcaption>{_html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f"<figure>{_html.img_tag(figure, caption, dpi=dpi)}{cap}</figure>")
        return self

    def attention(self, view: Any) -> Report:
        """A circuitsvis :class:`~hooked_mllm.viz.attention.AttentionView` (bundle added once to the page)."""
        self._needs_circuitsvis = True
        self._parts.append(view.fragment())
        return self

    def html(self, fragment: str) -> Report:
        """Raw HTML (e.g. a result's ``_repr_html_()`` or ``LensGrid.to_html()``); must not load remote
        content.
        """
        self._parts.append(fragment)
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Report:
        head = "".join(f"<th>{_html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{_html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
        )
        self._parts.append(f"<table><tr>{head}</tr>{body}</table>")
        return self

    def render(self) -> str:
        head = ""
        if self._needs_circuitsvis:
            from .attention import bundle_script

            head = bundle_script()
        return _html.page(self.title, f"<h1>{_html.escape(self.title)}</h1>" + "\n".join(self._parts), head)

    def save(self, out_dir: str | os.PathLike[str], name: str = "report.html") -> Path:
        """Write ``out_dir/name`` atomically (mode 0644) and return its path."""
        return _html.write_atomic(Path(out_dir) / name, self.render())


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
