"""The package's layout rules, read from the source (no imports run): what ``_runtime`` may import, no
import circle between modules, few private modules at the package root, no module over 600 lines.

The import graph counts every ``import`` statement, also inside functions (a lazy import is still a
dependency); a package's lazy public names (:mod:`hooked_mllm._lazy`) are not imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hooked_mllm"

# What hooked_mllm._runtime may import of hooked_mllm besides itself (see its docstring).
RUNTIME_MAY_IMPORT = ("hook_points", "hook_kinds", "tl_names", "inputs", "batch", "architectures")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The hooked_mllm modules ``name`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_the_runtime_imports_only_hook_points_batches_and_architectures(graph):
    allowed = tuple(f"hooked_mllm.{m}" for m in RUNTIME_MAY_IMPORT)
    bad = {
        (name, target)
        for name, targets in graph.items()
        if name.startswith("hooked_mllm._runtime")
        for target in targets
        if not target.startswith("hooked_mllm._runtime")
        and not any(target == a or target.startswith(a + ".") for a in allowed)
    }
    assert not bad, f"_runtime imports beyond its rule (hooked_mllm/_runtime/__init__.py): {sorted(bad)}"


def test_no_import_circle(graph):
    """No module reaches itself through imports (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_the_package_root_keeps_few_private_modules():
    private = sorted(p.name for p in ROOT.glob("_*.py") if p.name != "__init__.py")
    assert len(private) <= 5, f"{len(private)} private modules at the package root: {private}"


def test_no_module_over_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, f"modules over 600 lines: {long}"


def test_the_checks_see_a_circle_and_a_forbidden_import(tmp_path):
    """The graph reader finds relative, absolute and function-level imports (so the tests above can fail)."""
    known = {
        "hooked_mllm._runtime.runner": tmp_path / "runner.py",
        "hooked_mllm.model": tmp_path / "model.py",
    }
    known["hooked_mllm._runtime.runner"].write_text("def f():\n    from ..model import HookedMLLM\n")
    known["hooked_mllm.model"].write_text("from hooked_mllm._runtime import runner\n")
    assert _imports("hooked_mllm._runtime.runner", known["hooked_mllm._runtime.runner"], known) == {
        "hooked_mllm.model"
    }
    assert _imports("hooked_mllm.model", known["hooked_mllm.model"], known) == {"hooked_mllm._runtime.runner"}
