"""Option paths: how a study names a searcher option it samples, nested ones included.

Grammar (one path, segments separated by dots)::

    path     := segment ("." segment)*
    segment  := NAME | NAME "[" selector "]"
    selector := INDEX | PART_NAME

``arch_lr`` is a top-level option; ``discretizer_options.sigma_threshold`` a key inside a mapping
option; ``regularizers[proximity].rho`` the option ``rho`` of the list element whose ``name`` is
``proximity`` (an element given as a bare name, ``proximity``, counts, and becomes
``{name: proximity, rho: ...}``); ``regularizers[0].rho`` selects by position. A missing list or
mapping is taken from the searcher's preset defaults, so a study can sweep ``regularizers[admm].rho``
of ``darts+admm`` without restating the preset's list. Every error names the path.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from dartboard.errors import UserInputError

_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[([A-Za-z0-9_+.-]+)\])?$")
Segment = tuple[str, str | int | None]


def parse_path(path: str) -> list[Segment]:
    """``"regularizers[admm].rho"`` -> ``[("regularizers", "admm"), ("rho", None)]``."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"params.{path}: expected an option path such as 'arch_lr' or 'regularizers[admm].rho'")
    segments: list[Segment] = []
    for part in _split(path):
        m = _SEGMENT.match(part)
        if m is None:
            raise ValueError(f"params.{path}: {part!r} is not NAME or NAME[selector] (an option path looks like "
                             "'arch_lr', 'discretizer_options.sigma_threshold' or 'regularizers[proximity].rho')")
        name, sel = m.group(1), m.group(2)
        segments.append((name, int(sel) if sel is not None and sel.isdigit() else sel))
    return segments


def _split(path: str) -> list[str]:
    # dots inside a selector (a part named "a.b") do not split
    parts, depth, cur = [], 0, ""
    for ch in path:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "." and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def set_option(options: dict[str, Any], path: str, value: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` with ``path`` set to ``value``; containers missing from ``options`` are
    copied from ``defaults`` (the searcher's preset) first. Raises ValueError naming the path."""
    out = copy.deepcopy(dict(options))
    segments = parse_path(path)
    root = segments[0][0]
    if root not in out and root in defaults:
        out[root] = copy.deepcopy(defaults[root])
    node: Any = out
    for i, (name, selector) in enumerate(segments):
        last = i == len(segments) - 1
        if not isinstance(node, dict):
            raise ValueError(f"params.{path}: {'.'.join(_fmt(s) for s in segments[:i])!r} is "
                             f"{type(node).__name__} {node!r}, not a mapping of options")
        if selector is None:
            if last:
                node[name] = value
                return out
            if node.get(name) is None:
                node[name] = {}
            node = node[name]
            continue
        items = node.get(name)
        if not isinstance(items, list):
            raise ValueError(f"params.{path}: {name!r} is {items!r}, not a list to select [{selector}] from")
        index = _find(items, selector, path, name)
        if isinstance(items[index], str):
            items[index] = {"name": items[index]}
        if last:
            raise ValueError(f"params.{path}: a path must end in an option name, e.g. {path}.rho")
        node = items[index]
    return out


def _find(items: list[Any], selector: str | int, path: str, name: str) -> int:
    if isinstance(selector, int):
        if not 0 <= selector < len(items):
            raise ValueError(f"params.{path}: {name} has {len(items)} element(s), no index {selector}")
        return selector
    names = [it if isinstance(it, str) else (it.get("name") if isinstance(it, dict) else None) for it in items]
    hits = [i for i, n in enumerate(names) if n == selector]
    if len(hits) != 1:
        have = ", ".join(str(n) for n in names) or "none"
        why = "no element" if not hits else f"{len(hits)} elements"
        raise ValueError(f"params.{path}: {name} has {why} named {selector!r} (its elements: {have}); "
                         f"select by position, e.g. {name}[0], when names repeat")
    return hits[0]


def _fmt(segment: Segment) -> str:
    return segment[0] if segment[1] is None else f"{segment[0]}[{segment[1]}]"


def root_option(path: str) -> str:
    return parse_path(path)[0][0]


def set_study_key(study: dict[str, Any], key: str, value: Any) -> None:
    """``--set KEY=VALUE`` on a study's mapping: ``epochs=2``; a dotted key reaches into a mapping the study has
    (``options.C=4``, the study's other options kept) or makes it (``scheduler.type=fifo``); it cannot reach into
    a list or a value."""
    parts = key.split(".")
    if not all(p.strip() for p in parts):
        raise UserInputError(f"--set {key!r}: expected a study key, or a dotted path such as options.C")
    node = study
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise UserInputError(f"--set {key}: {'.'.join(parts[:i + 1])} is a {type(child).__name__} in the study, "
                                 f"not a mapping; set it whole ({'.'.join(parts[:i + 1])}=...)")
        node = child
    node[parts[-1]] = value
