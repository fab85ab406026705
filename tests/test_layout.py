"""The house rules of the layout (README "Layout"), checked on the source:
endpoints only in blueprints/, no flask in components/, no module over
~800 lines, no import cycle between modules."""
from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "moonflask")
MAX_LINES = 850


def _modules() -> dict[str, str]:
    mods = {}
    for folder, _dirs, files in os.walk(PKG):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                mod = os.path.relpath(path[:-3], REPO).replace(os.sep, ".")
                mods[mod[:-9] if mod.endswith(".__init__") else mod] = path
    return mods


MODULES = _modules()


def _source(mod: str) -> str:
    with open(MODULES[mod], encoding="utf-8") as fh:
        return fh.read()


def test_modules_are_small():
    big = {m: n for m in MODULES if (n := _source(m).count("\n")) > MAX_LINES}
    assert big == {}


def test_endpoints_live_in_blueprints():
    stray = [m for m in MODULES if ".endpoint(" in _source(m)
             and not m.startswith("moonflask.blueprints.") and m != "moonflask.api"]
    assert stray == []


def test_components_know_nothing_of_flask():
    users = [m for m in MODULES if m.startswith("moonflask.components.")
             for node in ast.walk(ast.parse(_source(m)))
             if isinstance(node, (ast.Import, ast.ImportFrom))
             and any(n.startswith("flask") for n in
                     ([a.name for a in node.names] if isinstance(node, ast.Import)
                      else [node.module or ""]))]
    assert users == []


def _imports(mod: str) -> set[str]:
    """Modules of the package that ``mod`` imports at module level (not
    under ``if TYPE_CHECKING``, not inside functions)."""
    path = MODULES[mod]
    pkg = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.parse(_source(mod)).body:
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            # ``from pkg import submodule`` needs the submodule, not the package
            # body (a parent package is always set up first)
            names = subs if subs else [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out.update(n for n in names if n in MODULES and n != mod)
    return out


def test_no_import_cycle():
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        path.append(mod)
        for dep in graph[mod]:
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[mod] = 2

    for mod in graph:
        if mod not in state:
            visit(mod)
    assert cycles == []


@pytest.mark.parametrize("group", ["server", "printer", "machine", "files", "access",
                                   "database", "history", "job_queue", "announcements",
                                   "webcams", "notifiers", "extensions", "octoprint",
                                   "debug"])
def test_every_api_group_has_its_blueprint(group):
    from moonflask import app
    assert group in app.BLUEPRINTS
    assert f"moonflask.blueprints.{group}" in MODULES
