"""Imports run one way: cli -> train/launch -> train/trainer -> train/modes -> step, optim, server -> model, data
-> config; inference never imports training. Read from the source, every import included (also those inside
functions), so a cycle cannot hide in a late import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "async_nmt"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The async_nmt modules that `path` imports (a `from package import name` counts name as a module when
    it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("async_nmt") and name in MODULES}


MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}
GRAPH = {module_name(path): imports(path) - {module_name(path)} for path in PACKAGE.rglob("*.py")}

# (modules, what they must not import): the layers, from the top
RULES = [
    ({"async_nmt.train.trainer"}, {"async_nmt.train.launch", "async_nmt.train.options"}),
    ({m for m in MODULES if m.startswith("async_nmt.train.modes")},
     {"async_nmt.train.trainer", "async_nmt.train.launch", "async_nmt.train.options", "async_nmt.train.validate"}),
    ({"async_nmt.train.step", "async_nmt.train.optim", "async_nmt.train.modes.paramserver"},
     {m for m in MODULES if m.startswith("async_nmt.train.modes") and m != "async_nmt.train.modes.paramserver"}),
    ({m for m in MODULES if m.startswith(("async_nmt.model", "async_nmt.data"))} | {"async_nmt.translate"},
     {m for m in MODULES if m.startswith("async_nmt.train")}),
    ({"async_nmt.config", "async_nmt.errors"}, MODULES - {"async_nmt.errors"}),
    # `nmt report` reads events: it loaded the modes, and torch, to re-price a link
    ({"async_nmt.report", "async_nmt.train.links"}, {m for m in MODULES if m.startswith("async_nmt.train.modes")}),
]  # fmt: skip


@pytest.mark.parametrize("layer, forbidden", RULES)
def test_imports_run_one_way(layer: set[str], forbidden: set[str]):
    wrong = {(m, target) for m in layer for target in GRAPH[m] & forbidden}
    assert not wrong, sorted(wrong)


def test_the_package_has_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for target in GRAPH[module]:
            if not (module.startswith(target + ".") or target == module):  # a module's own package: its __init__
                visit(target, (*path, module))
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, ())
