"""Named defaults of torch modules, read for ``--help`` without importing torch.

A command's help shows the defaults that a paper fixes (e.g. DARIO's threshold 0.65), which
live as module-level constants of the searcher that uses them. Importing that module would
import torch and make ``--help`` and usage errors slow, so the constants are read from its
source instead: only ``NAME = <literal>`` assignments at the top level, evaluated with
``ast.literal_eval``. A test checks that they equal the imported module's values.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any


def module_source(module: str) -> Path:
    """The file of a module, found without importing it or its packages' ``__init__``."""
    root, _, rest = module.partition(".")
    spec = importlib.util.find_spec(root)  # top-level package only: its __init__ is not executed here
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"module {module!r}: package {root!r} is not installed")
    base = Path(next(iter(spec.submodule_search_locations)), *rest.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"


def literal_constants(module: str, *names: str) -> dict[str, Any]:
    """``{name: value}`` of the module's top-level literal assignments ``NAME = ...``; a name that is
    missing or not a literal raises ``LookupError`` (a renamed constant must not go unnoticed)."""
    tree = ast.parse(module_source(module).read_text(), filename=module)
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError:
                continue
    missing = [n for n in names if n not in found]
    if missing:
        raise LookupError(f"{module}: no literal top-level constant {', '.join(missing)}")
    return found
