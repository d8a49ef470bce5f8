"""The platform's layout rules (DESIGN.md): no import cycles, no module over 400 lines, one module
called `registry`, ray/mlflow/optuna imported only inside dartboard.platform, bench never importing
the platform's Ray/tracking side. Static checks of the source (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "dartboard"
OWNED = ("platform/ray", "platform/tracking", "platform/reports", "platform/sweep.py", "platform/ablation.py",
         "platform/quality.py", "platform/config.py", "bench")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every dartboard module ``path`` imports, at any depth of the file (lazy imports count)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("dartboard")}


def _owned(path: Path) -> bool:
    rel = str(path.relative_to(ROOT))
    return any(rel == o or rel.startswith(o + "/") for o in OWNED)


def test_no_import_cycles_through_the_study_side():
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}
    owned = {m for m, p in files.items() if _owned(p)}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in stack:
                cycle = stack[stack.index(nxt):] + [nxt]
                if set(cycle) & owned:
                    cycles.append(" -> ".join(cycle))
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for m in sorted(owned):
        if m not in done:
            visit(m, [m])
    assert not cycles, cycles


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (_owned(p) or p.parent == ROOT / "platform") and (n := len(p.read_text().splitlines())) > 400}
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
