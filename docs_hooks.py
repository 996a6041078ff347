"""MkDocs hook of the documentation site (mkdocs.yml ``hooks:``): Sphinx roles in docstrings render as code.

The docstrings name other objects with Sphinx roles (``:func:`logit_lens```, ``:class:`~hooked_mllm.cache.
ActivationCache```); Markdown keeps the role's prefix as text. This drops the prefix and, for ``~path``, keeps
the last component, as Sphinx shows it.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj|const):<code>(~)?([^<]*)</code>")


def _code(match: re.Match) -> str:
    name = match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"


def on_page_content(html: str, **kwargs) -> str:
    """Replace ``:role:<code>name</code>`` with ``<code>name</code>``."""
    return ROLE.sub(_code, html)
