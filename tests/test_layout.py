"""The layout rules of DESIGN.md: no import cycles anywhere in the package (lazy imports inside functions
count; imports for type checkers only do not, as they fix no import order), no module over 400 lines, one
module called `registry`, ray/mlflow/optuna imported only inside dartboard.platform, bench never importing the
platform's Ray/tracking side. Static checks of the source (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "dartboard"


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of the import nodes under ``if TYPE_CHECKING:`` (read by type checkers, never run)."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body for n in ast.walk(stmt)}


def _imports(path: Path) -> set[str]:
    """Every dartboard module ``path`` imports when it runs, at any depth of the file (lazy imports count)."""
    tree = ast.parse(path.read_text())
    typing_only = _type_checking_only(tree)
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("dartboard")}


def test_no_import_cycles():
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for m in sorted(files):
        if m not in done:
            visit(m, [m])
    assert not cycles, cycles


def test_import_cycles_are_found_lazy_or_not_but_not_for_type_checkers(tmp_path):
    """The reader of the test above, on files it can be sure of."""
    (tmp_path / "a.py").write_text("def f():\n    from dartboard.b import g\n")
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from dartboard.a import f\nimport dartboard.c\n")
    assert _imports(tmp_path / "a.py") == {"dartboard.b", "dartboard.b.g"}
    assert _imports(tmp_path / "b.py") == {"dartboard.c"}


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_one_module_called_registry():
    assert sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("registry.py")) == ["searchers/registry.py"]


def test_ray_mlflow_optuna_only_inside_the_platform():
    offenders = []
    for p in ROOT.rglob("*.py"):
        if p.is_relative_to(ROOT / "platform"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            bad = ("ray", "mlflow", "optuna")
            offenders += [f"{p.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in bad]
    assert not offenders, offenders


def test_bench_never_imports_the_platform():
    """bench/ keeps pure torch pieces (data from dartboard.data, never dartboard.platform)."""
    bad = {str(p.relative_to(ROOT)): sorted(i for i in _imports(p) if i.startswith("dartboard.platform"))
           for p in (ROOT / "bench").glob("*.py")}
    assert not {k: v for k, v in bad.items() if v}, bad
