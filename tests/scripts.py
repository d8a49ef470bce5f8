"""The repository's scripts (``benchmarks/*.py``, ``clusters/submit.py``) loaded as modules for their tests: they are
files to run, not parts of the ``dartboard`` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """The script at ``relative`` (to the repository's root, e.g. ``benchmarks/sweep_overhead.py``), executed as a
    module named after its file."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
