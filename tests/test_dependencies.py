"""Every import is provided by a declared dependency, so a fresh machine passes what CI passes.

A test once imported a package (biotite) that no install step provided: CI stayed green only
because the machine had it installed by hand. This reads the imports of the package, the scripts
the README runs and the tests, and checks each against pyproject.toml.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str], set[str]]:
    """(runtime, test extra, other optional extras) distribution names."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {_norm(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in reqs}
    extras = project["optional-dependencies"]
    optional = set().union(*(names(v) for k, v in extras.items() if k != "test"))
    return names(project["dependencies"]), names(extras["test"]), optional


def _optional(node: ast.Try) -> bool:
    """A try block whose handler catches ImportError guards an optional (or version-specific) import."""
    caught = {getattr(h.type, "id", None) for h in node.handlers}
    caught |= {getattr(e, "id", None) for h in node.handlers if isinstance(h.type, ast.Tuple) for e in h.type.elts}
    return bool(caught & {"ImportError", "ModuleNotFoundError"})


def _imports(path: Path) -> set[str]:
    """Top-level modules imported by `path`, except those inside an ImportError guard."""
    tree, out = ast.parse(path.read_text()), set()

    def visit(node, guarded):
        if isinstance(node, ast.Import) and not guarded:
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not guarded and node.level == 0:
            out.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            # both the guarded import and its fallback in the handler are optional by construction
            visit(child, guarded or (isinstance(node, ast.Try) and child not in node.orelse + node.finalbody
                                     and _optional(node)))

    visit(tree, False)
    return out


def _undeclared(files: list[Path], allowed: set[str], local: set[str], optional: set[str] = frozenset()) -> list[str]:
    dists = md.packages_distributions()
    bad = []
    for f in files:
        for mod in sorted(_imports(f) - set(sys.stdlib_module_names) - local):
            provided = {_norm(d) for d in dists.get(mod, [])}
            if not provided and _norm(mod) in optional:
                continue  # an optional extra that is not installed here (e.g. flash-attn)
            if not provided & allowed:
                bad.append(f"{f.relative_to(REPO)} imports {mod!r}, provided by "
                           f"{sorted(provided) or 'nothing installed'}: not a declared dependency")
    return bad


def test_package_and_main_job_import_only_runtime_dependencies():
    runtime, _, optional = _declared()
    files = sorted((REPO / "src" / "protlm").rglob("*.py")) + sorted((REPO / "scripts").glob("*.py"))
    assert not _undeclared(files, runtime | optional, {"protlm"}, optional)


def test_package_never_imports_benchmark_only_extras():
    """The bench extra (esm.cpp, a peer to measure against) stays out of the library."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bench = {_norm(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in project["optional-dependencies"]["bench"]}
    modules = {n.replace("-", "_") for n in bench}  # esm-cpp installs esm_cpp
    for f in sorted((REPO / "src" / "protlm").rglob("*.py")):
        nodes = list(ast.walk(ast.parse(f.read_text())))  # guarded imports too
        names = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        assert not names & modules, f"{f.relative_to(REPO)} imports a benchmark-only extra"


def test_tests_import_only_declared_test_dependencies():
    runtime, test, _ = _declared()
    files = sorted((REPO / "tests").rglob("*.py"))
    local = {"protlm", "conftest", "_writers", "tests"} | {f.stem for f in files}
    assert not _undeclared(files, runtime | test, local)


@pytest.mark.parametrize("source, expected", [
    ("import biotite.structure\n", {"biotite"}),
    ("try:\n    import flash_attn\nexcept ImportError:\n    flash_attn = None\n", set()),
    ("from .x import y\nfrom a.b import c\n", {"a"}),
])
def test_import_reader(tmp_path, source, expected):
    f = tmp_path / "m.py"
    f.write_text(source)
    assert _imports(f) == expected
