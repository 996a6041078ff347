"""Lazy public names for packages: importing a package stays cheap (no torch, no scikit-learn).

A package lists its public names and the submodule that defines each; :func:`lazy_exports`
returns the module-level ``__getattr__`` and ``__dir__`` that import a submodule on first use
(PEP 562) and keep the value in the package's namespace afterwards. ``import hooked_mllm`` and
``hooked-mllm --help`` therefore load neither torch nor transformers.

Examples:
    >>> import types
    >>> pkg = types.ModuleType("pkg")
    >>> pkg.__getattr__, pkg.__dir__ = lazy_exports("json", {"dumps": "json"}, {})
    >>> pkg.dumps([1])
    '[1]'
"""

from __future__ import annotations

import difflib
import sys
import types
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package whose public names win over its submodules of the same name.

    Importing ``pkg.extract`` makes Python set ``pkg.extract`` to the submodule; where
    ``extract`` is also a public name of the package (a function defined in that submodule),
    the public name is kept.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_lazy_names", ()):
            return
        super().__setattr__(name, value)


def lazy_exports(
    package: str, names: Mapping[str, str], modules: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: The package's ``__name__``.
        names: Public name -> module defining it (relative like ``".cache"`` or absolute).
        modules: Public name -> submodule exposed as that name (``{"positions": ".positions"}``).
    """
    public = sorted({*names, *modules})
    module = sys.modules.get(package)
    if module is not None:
        module._lazy_names = frozenset(names)  # type: ignore[attr-defined]  # read by _LazyPackage
        module.__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(import_module(names[name], package), name)
        elif name in modules:
            value = import_module(modules[name], package)
        else:
            close = difflib.get_close_matches(name, public, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; public names: {', '.join(public)}"
            raise AttributeError(f"module {package!r} has no attribute {name!r}{hint}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__
