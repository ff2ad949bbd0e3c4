"""The import rules of docs/architecture.md, checked on the source: each folder imports only
folders of lower layers (never up, never sideways), and no modules import each other in a circle.

Every import counts, including those inside functions (a lazy import is still a dependency);
only `if __name__ == "__main__":` blocks are left out (entry points, not library code)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first: a unit may import itself and any unit of a LOWER layer
LAYERS = [
    {"version", "errors"},
    {"io", "dtypes", "alphabet"},
    {"models"},
    {"data"},
    {"pretrained"},
    {"runtime"},
    {"embed"},
    {"contacts", "function", "variants"},
    {"evaluate"},
    {"train"},
    {"serve"},
    {"cli"},
    {"protlm"},  # protlm/__init__.py: the public API, above everything
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """protlm.embed.engine -> embed; protlm.io -> io; protlm -> protlm."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "protlm"


def _is_main_block(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports(path: Path) -> set[str]:
    """protlm modules `path` imports (a `from pkg import name` counts pkg.name when that is a module)."""
    found: set[str] = set()
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if _is_main_block(node):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "protlm"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "protlm":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if _exists(sub) else node.module)
        todo.extend(ast.iter_child_nodes(node))
    return found


def _exists(module: str) -> bool:
    base = SRC.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


GRAPH = {module_name(p): imports(p) for p in sorted((SRC / "protlm").rglob("*.py"))}


def test_every_folder_has_a_layer():
    assert {unit(m) for m in GRAPH} == set(LAYER), "add new folders to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_layers(module):
    here = unit(module)
    bad = sorted(t for t in GRAPH[module] if unit(t) != here and LAYER[unit(t)] >= LAYER[here])
    assert not bad, f"{module} ({here}, layer {LAYER[here]}) imports up or sideways: {bad}"


def test_no_import_circles():
    # modules only (a package's __init__ re-exporting its own modules is not a circle)
    graph = {m: {t for t in ts if t in GRAPH and not m.startswith(t + ".")} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_every_module_imports_first():
    """Each module imported first, in a process with no protlm module loaded yet: a circle that
    only shows at run time (a module reached while its importer is half-initialised) fails here."""
    import subprocess
    import sys

    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for m in {sorted(GRAPH)!r}:\n"
        "    for k in [k for k in sys.modules if k == 'protlm' or k.startswith('protlm.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{m}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         check=True, cwd=SRC.parent)
    assert out.stdout.strip() == "", out.stdout


ALLOWED_OUTSIDE = {
    "protlm.cli.main.ReportedError",  # click's wrapper of a ProtlmError
    "protlm.serve.middleware.BodyTooLarge",  # an HTTP 413 raised inside Starlette's body reading
}


def test_every_error_is_a_protlm_error():
    """One error base class: what protlm raises on purpose derives from ProtlmError, so the CLI
    reports it as a message and an exit code."""
    import importlib
    import inspect

    from protlm.errors import ProtlmError

    outside = []
    for m in sorted(GRAPH):
        for name, cls in inspect.getmembers(importlib.import_module(m), inspect.isclass):
            if (cls.__module__ == m and issubclass(cls, Exception) and not issubclass(cls, (ProtlmError, Warning))
                    and f"{m}.{name}" not in ALLOWED_OUTSIDE):
                outside.append(f"{m}.{name}")
    assert not outside, outside


def test_names_the_docs_import_exist():
    """Every `from protlm... import ...` line in README.md and docs/ names something that exists
    (documentation kept in step with the layout)."""
    import importlib
    import re

    root = SRC.parent
    missing = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for line in doc.read_text().splitlines():
            m = re.match(r"\s*from (protlm[\w.]*) import ([\w, ]+)$", line)
            if m is None:
                continue
            module = importlib.import_module(m.group(1))
            for name in (n.strip() for n in m.group(2).split(",")):
                if name and not hasattr(module, name) and not _exists(f"{m.group(1)}.{name}"):
                    missing.append(f"{doc.name}: {m.group(1)}.{name}")
    assert not missing, missing
