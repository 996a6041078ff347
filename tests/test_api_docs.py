"""The API reference (docs/api/*.md) reaches every public name of every public module; no build needed.

A page documents a module with a ``::: hooked_mllm.module`` directive (mkdocstrings renders its public
members: ``__all__`` where the module has one, else the names it defines) or one object with
``::: hooked_mllm.module.Name``; ``members: false`` renders the docstring only, ``members: [a, b]`` only
those. A public name is reached when the object it names is rendered somewhere (a package's re-export is
reached through the module that defines it). ``make docs`` builds the site itself (mkdocs ``--strict``).
The docstrings keep to the Google dialect that mkdocstrings parses (checked here too).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path

import hooked_mllm

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
DIRECTIVE = re.compile(r"^::: ([\w.]+)[ \t]*\n((?:[ \t]+\S.*\n|[ \t]*\n)*)", re.M)
NOT_RENDERED = {"logger"}  # mkdocs.yml filters these out


def public_modules() -> list[str]:
    found = pkgutil.walk_packages(hooked_mllm.__path__, "hooked_mllm.")
    names = [info.name for info in found if not any(part.startswith("_") for part in info.name.split("."))]
    return ["hooked_mllm", *sorted(names)]


def _assigned_names(module: types.ModuleType) -> set[str]:
    tree = ast.parse(inspect.getsource(module))
    names: set[str] = set()
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def public_names(module: types.ModuleType) -> list[str]:
    """``__all__``, else the public names the module defines (not those it imports)."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    assigned = _assigned_names(module)
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or name in NOT_RENDERED or isinstance(value, types.ModuleType):
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            if value.__module__ == module.__name__:
                names.append(name)
        elif name in assigned:
            names.append(name)
    return names


def _resolve(path: str):
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        parent, _, name = path.rpartition(".")
        return getattr(importlib.import_module(parent), name)


def _member_option(options: str) -> bool | list[str] | None:
    match = re.search(r"^\s*members:\s*(.+)$", options, re.M)
    if match is None:
        return None
    value = match.group(1).strip()
    if value == "false":
        return False
    assert value.startswith("[") and value.endswith("]"), f"unsupported members option {value!r}"
    return [item.strip() for item in value[1:-1].split(",") if item.strip()]


def documented() -> tuple[set[int], set[str], list[str]]:
    """Ids of the objects the pages render, the modules with a section (docstring at least), directives."""
    objects: set[int] = set()
    modules: set[str] = set()
    paths = []
    for page in sorted(API.glob("*.md")):
        for path, options in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            paths.append(path)
            target = _resolve(path)
            objects.add(id(target))
            if not isinstance(target, types.ModuleType):
                continue
            modules.add(path)
            members = _member_option(options)
            if members is None:
                members = public_names(target)
            for name in members or []:
                objects.add(id(getattr(target, name)))
    return objects, modules, paths


def test_every_directive_names_something_real():
    _, _, paths = documented()  # raises on a directive naming a module or object that does not exist
    assert len(paths) == len(set(paths)), "a module or object is documented twice"
    for page in API.glob("*.md"):
        rest = DIRECTIVE.sub("", page.read_text(encoding="utf-8"))
        assert ":::" not in rest, f"malformed directive in {page}"


def test_every_public_name_of_every_public_module_is_in_the_api_reference():
    objects, modules, _ = documented()
    missing = []
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in public_names(module):
            value = getattr(module, name)
            if isinstance(value, types.ModuleType):
                reached = value.__name__ in modules
            else:
                reached = id(value) in objects
            if not reached:
                missing.append(f"{module_name}.{name}")
    assert not missing, (
        f"public names missing from the API reference: {missing}; add a `::: module` (or "
        "`::: module.Name`) directive for them to a page in docs/api/"
    )


def test_the_reference_covers_the_packages_listed_in_the_issue():
    _, modules, _ = documented()
    for package in (
        "concepts",
        "mechanism",
        "viz",
        "toy",
        "lens",
        "patching",
        "hooks",
        "positions",
        "testing",
    ):
        name = f"hooked_mllm.{package}"
        assert {m for m in modules if m == name or m.startswith(name + ".")}, f"{name} has no page section"
    assert set(hooked_mllm.__all__) <= set(dir(hooked_mllm))


def test_docstrings_keep_to_the_google_dialect_that_mkdocstrings_parses():
    """Sections end in ``:``; examples sit under ``Examples:`` (``Example:`` renders as a quote, not code)."""
    wrong = []
    for file in sorted((ROOT / "hooked_mllm").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = (ast.get_docstring(node) or "").split("\n")
            in_examples = False
            where = f"{file.name}:{getattr(node, 'name', '<module>')}"
            for line, following in zip(lines, [*lines[1:], ""]):
                deeper = following.strip() and len(following) - len(following.lstrip()) > len(line) - len(
                    line.lstrip()
                )
                if re.fullmatch(r"\s*Examples?:?\s*", line) and line.strip() != "Examples:":
                    wrong.append(f"{where}: {line.strip()!r} (write 'Examples:')")
                heading = re.fullmatch(r"\s*[A-Z][A-Za-z ()]*[A-Za-z)]\s*", line) and len(line.strip()) <= 30
                if heading and deeper:
                    wrong.append(f"{where}: heading {line.strip()!r} needs ':'")
                if line.strip().endswith(":") and deeper:
                    in_examples = line.strip() == "Examples:"
                elif line.strip().startswith(">>>") and not in_examples:
                    wrong.append(f"{where}: doctest outside 'Examples:'")
    assert not wrong, wrong
