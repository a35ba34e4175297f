"""The package's shape: the import rules of `.importlinter` (no cycles, pure stages free of Ray
and Feast), no private name imported from another module, and no module over 400 lines or
function over 60 lines except the few named below with their reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llmrec_ray"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# path (relative to llmrec_ray/) -> why it stays longer than MAX_MODULE_LINES
LONG_MODULES: dict[str, str] = {}

# "path:function" -> why it stays longer than MAX_FUNCTION_LINES
LONG_FUNCTIONS: dict[str, str] = {}


def sources() -> dict[str, ast.Module]:
    return {str(f.relative_to(PACKAGE)): ast.parse(f.read_text()) for f in sorted(PACKAGE.rglob("*.py"))}


def functions(tree: ast.Module):
    """(qualified name, lines) of every function and method, nested ones included."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield name, child.end_lineno - child.lineno + 1
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
    yield from walk(tree, "")


def test_the_import_contracts_hold():
    """`lint-imports` over `.importlinter`: fails on a cycle between the package's modules
    (subpackages count as one) or on Ray / Feast reached from a pure stage."""
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / ".importlinter")) == 0, \
        "import contracts broken: run `.venv/bin/lint-imports` for the chains"


def test_no_module_imports_another_modules_private_names():
    """Neither the package nor the jobs and benchmarks built on it."""
    leaks = []
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "jobs").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    for f in files:
        path, tree = f.relative_to(ROOT), ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmrec_ray"):
                leaks += [f"{path}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not leaks, f"private names imported across modules: {leaks}"


def test_modules_stay_short():
    long = {p: len((PACKAGE / p).read_text().splitlines()) for p in sources()}
    over = sorted(f"{p} ({n} lines)" for p, n in long.items() if n > MAX_MODULE_LINES and p not in LONG_MODULES)
    assert not over, f"over {MAX_MODULE_LINES} lines: split them, or name them in LONG_MODULES with the reason"


def test_functions_stay_short():
    over = sorted(f"{p}:{name} ({n} lines)" for p, tree in sources().items() for name, n in functions(tree)
                  if n > MAX_FUNCTION_LINES and f"{p}:{name}" not in LONG_FUNCTIONS)
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: {over}"


def test_the_named_exceptions_are_still_long():
    """An exception whose module or function got short (or is gone) leaves the list."""
    trees = sources()
    lengths = {f"{p}:{name}": n for p, tree in trees.items() for name, n in functions(tree)}
    stale = [p for p in LONG_MODULES if p not in trees
             or len((PACKAGE / p).read_text().splitlines()) <= MAX_MODULE_LINES]
    stale += [f for f in LONG_FUNCTIONS if lengths.get(f, 0) <= MAX_FUNCTION_LINES]
    assert not stale, f"no longer long: remove from the exceptions: {stale}"


@pytest.mark.parametrize("source, want", [
    ("def f():\n    pass\n", [("f", 2)]),
    ("class A:\n    def m(self):\n        def inner():\n            return 1\n        return inner\n",
     [("A.m", 4), ("A.m.inner", 2)]),
])
def test_function_lengths_are_counted_from_def_to_last_line(source, want):
    assert list(functions(ast.parse(source))) == want
