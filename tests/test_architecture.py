"""The structure reads one way: the floors of DESIGN.md, held by parsing every import.

    errors, io  ->  nn, data, diffusion  ->  models, finetune  ->  train, eval  ->  recipes  ->  cli

A module may import its own floor and the floors below it, never one above; `train/` (the
trainer that knows no model by name) imports nothing from `models/` or `finetune/`; and no
import circle runs through `src/tinygen`, counting the imports inside functions too. The
one exception is a *shim*: a module left at an old import path that holds nothing but a
docstring and re-exports of names that moved up a floor, so older code keeps working.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tinygen"
FLOORS = {
    "errors": 0,
    "io": 0,
    "threads": 0,
    "fields": 0,
    "nn": 1,
    "data": 1,
    "diffusion": 1,
    "models": 2,
    "finetune": 2,
    "train": 3,
    "eval": 3,
    "recipes": 4,
    "cli": 5,
}
NEVER = {"train": {"models", "finetune"}}  # beyond the floors
MAX_LINES, MAX_CLI_LINES = 450, 300


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """Every tinygen module `path` imports, at module level or inside functions."""
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py", known)


def imports_in(source: str, this: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    package = this if is_package else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            if not name.startswith("tinygen"):
                continue
            while name and name not in known:  # a name inside a module -> the module
                name = name.rpartition(".")[0]
            if name and name != this and known[name].name != "__init__.py":
                found.add(name)
    return found


def is_shim(path: Path) -> bool:
    """Only a docstring, `from tinygen... import ...` re-exports and `__all__`."""
    body = ast.parse(path.read_text()).body
    if not body:
        return False
    for node in body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("tinygen", "__")):
            continue
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
            "__all__"
        ]:
            continue
        return False
    return any(isinstance(n, ast.ImportFrom) and n.module != "__future__" for n in body)


def floor_of(name: str) -> str:
    return name.split(".")[1] if name.count(".") else ""


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(path, known) for name, path in known.items()}


def test_every_import_goes_down_the_floors():
    known = modules()
    wrong = []
    for name, targets in import_graph().items():
        if is_shim(known[name]) or floor_of(name) not in FLOORS:
            continue
        mine = floor_of(name)
        for target in targets:
            theirs = floor_of(target)
            if theirs not in FLOORS:
                continue
            if FLOORS[theirs] > FLOORS[mine] or theirs in NEVER.get(mine, ()):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports that run up a floor:\n" + "\n".join(sorted(wrong))


def test_no_import_circle():
    known = modules()
    graph = {n: {t for t in ts if not is_shim(known[t])} for n, ts in import_graph().items()}
    graph = {n: ts for n, ts in graph.items() if not is_shim(known[n])}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    circles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                circles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_shims_only_re_export():
    """Each shim re-exports from a module that exists; nothing else lives in it."""
    known = modules()
    for name, path in known.items():
        if not is_shim(path):
            continue
        for target in imported_modules(path, known):
            assert target in known, f"shim {name} re-exports from missing {target}"


def test_files_stay_small():
    long = []
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        limit = MAX_CLI_LINES if path.parent.name == "cli" else MAX_LINES
        if lines > limit:
            long.append(f"{path.relative_to(SRC)}: {lines} lines (limit {limit})")
    assert not long, "\n".join(long)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from tinygen.train.trainer import Trainer\n", {"tinygen.train.trainer"}),
        ("def f():\n    from tinygen.models import gpt\n", {"tinygen.models.gpt"}),
        ("import tinygen.nn.attention as a\n", {"tinygen.nn.attention"}),
        ("from ..train import config\n", {"tinygen.train.config"}),
        ("from tinygen.errors import TinygenError\n", {"tinygen.errors"}),
    ],
)
def test_the_import_parser_sees_every_form(source, expected):
    """The checks above can fail: the parser finds lazy, aliased and relative imports."""
    assert imports_in(source, "tinygen.models.probe", False, modules()) == expected


def test_a_shim_is_only_re_exports():
    assert is_shim(PACKAGE / "train" / "checkpoint.py") is False  # it defines functions
    assert not is_shim(PACKAGE / "errors.py")
