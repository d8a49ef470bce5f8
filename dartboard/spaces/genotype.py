"""Genotypes: the only on-disk architecture format (JSON with a schema and a version).

Kinds of genotype, told apart by the ``kind`` field:

- ``darts``: the two-cell DARTS genotype (a normal cell and a reduction cell, repeated);
- ``cells``: an ordered list of individual cells with the positions of the reductions
  (D-DARTS searches one cell per position; DARTOpti encodes handcrafted networks);
- ``mlp``: named chains of layer ops (NASiam projector/predictor, PMSM);
- ``gates``: which blocks / attention heads of a pre-trained model are kept (DARIO);
- kinds registered by an application with :func:`register_kind`: ``flux_mlp`` (a PMSM flux
  model, :mod:`dartboard.spaces.pmsm_genotype`) and ``colornas`` (one cell network per channel of
  a colour model and the meta-learner's widths, :mod:`dartboard.spaces.colour_genotype`).

Cells are lists of edges ``(op, src, dst)``: nodes ``0 .. n_inputs-1`` are the cell
inputs, the others are intermediate nodes; ``concat`` lists the nodes whose outputs are
concatenated. Nothing here evals or unpickles; every load is validated and every error
names the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from dartboard.errors import check_file
from dartboard.model_files import GENOTYPE_FILE  # noqa: F401  (spaces.genotype.GENOTYPE_FILE)
from dartboard.spaces.limits import MAX_CELLS, MAX_EDGES_PER_CELL, MAX_NODES_PER_CELL

SCHEMA = "dartboard.genotype"
VERSION = 1
#: The kinds whose genotype is a network of cells (``training.final.network_of`` builds them; ``colornas``: one
#: cell network per colour channel); ``mlp`` (NASiam heads), ``flux_mlp`` (PMSM) and ``gates`` (DARIO) are not.
CELL_NETWORK_KINDS = ("darts", "cells", "colornas")


class GenotypeError(ValueError):
    """A genotype that cannot be used; the message names the field and the problem."""


@dataclass(frozen=True)
class Edge:
    op: str
    src: int
    dst: int


@dataclass(frozen=True)
class CellGenotype:
    edges: tuple[Edge, ...]
    concat: tuple[int, ...]
    n_inputs: int = 2

    @property
    def n_nodes(self) -> int:
        """Number of intermediate nodes (steps)."""
        return max(max(e.dst for e in self.edges), max(self.concat)) - self.n_inputs + 1

    def inputs_of(self, node: int) -> list[Edge]:
        return [e for e in self.edges if e.dst == node]

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, int]], concat: Iterable[int] = (2, 3, 4, 5),
                   inputs_per_node: int = 2) -> CellGenotype:
        """Build from the DARTS list form: entries 2k and 2k+1 are the inputs of step k."""
        pairs = list(pairs)
        edges = tuple(Edge(op, src, 2 + i // inputs_per_node) for i, (op, src) in enumerate(pairs))
        return cls(edges, tuple(concat))


@dataclass(frozen=True)
class DartsGenotype:
    """Two cell types: ``normal`` everywhere except at the reduction positions."""

    normal: CellGenotype
    reduce: CellGenotype
    kind: str = field(default="darts", init=False)

    def cell_for(self, index: int, reduction: bool) -> CellGenotype:
        return self.reduce if reduction else self.normal


@dataclass(frozen=True)
class CellsGenotype:
    """One cell per position; ``reductions`` are the positions of the reduction cells.

    ``types`` optionally names the cell type of each position (DARTOpti: cells of one
    type share their architecture parameters during search).
    """

    cells: tuple[CellGenotype, ...]
    reductions: tuple[int, ...]
    types: tuple[int, ...] | None = None
    kind: str = field(default="cells", init=False)

    def cell_for(self, index: int, reduction: bool) -> CellGenotype:
        return self.cells[index]


@dataclass(frozen=True)
class MlpGenotype:
    """Named chains of layer ops, e.g. {"projector": [...], "predictor": [...]}."""

    chains: Mapping[str, tuple[str, ...]]
    meta: Mapping[str, Any] = field(default_factory=dict)
    kind: str = field(default="mlp", init=False)


@dataclass(frozen=True)
class GateGenotype:
    """Which parts of a pre-trained model survive pruning (DARIO)."""

    model: str
    blocks_kept: tuple[int, ...]
    heads_kept: Mapping[int, tuple[int, ...]]
    n_blocks: int
    n_heads: int
    meta: Mapping[str, Any] = field(default_factory=dict)
    kind: str = field(default="gates", init=False)


Genotype = Union[DartsGenotype, CellsGenotype, MlpGenotype, GateGenotype, Any]  # Any: registered kinds


@dataclass(frozen=True)
class GenotypeKind:
    """A kind registered by an application: its class (with a ``kind`` field), its encoder
    (genotype -> the JSON fields besides schema, version and kind) and its validating decoder
    (JSON mapping -> genotype, raising :class:`GenotypeError` that names the field)."""

    kind: str
    cls: type
    encode: Callable[[Any], dict[str, Any]]
    decode: Callable[[Mapping[str, Any]], Any]


EXTRA_KINDS: dict[str, GenotypeKind] = {}


def register_kind(kind: str, cls: type, encode: Callable[[Any], dict[str, Any]],
                  decode: Callable[[Mapping[str, Any]], Any]) -> GenotypeKind:
    if kind in ("darts", "cells", "mlp", "gates") or kind in EXTRA_KINDS:
        raise ValueError(f"genotype kind {kind!r} is already registered")
    EXTRA_KINDS[kind] = GenotypeKind(kind, cls, encode, decode)
    return EXTRA_KINDS[kind]


# ----------------------------------------------------------------------------- encoding


def _cell_to_dict(cell: CellGenotype) -> dict[str, Any]:
    return {
        "edges": [[e.op, e.src, e.dst] for e in cell.edges],
        "concat": list(cell.concat),
        "n_inputs": cell.n_inputs,
    }


def to_dict(genotype: Genotype) -> dict[str, Any]:
    """The JSON-ready form of ``genotype`` (with schema and version)."""
    if not isinstance(getattr(genotype, "kind", None), str) or isinstance(genotype, Mapping):
        raise GenotypeError(f"not a genotype: {type(genotype).__name__} (a genotype's dict is read with from_dict, "
                            f"a catalog name with catalog.resolve)")
    out: dict[str, Any] = {"schema": SCHEMA, "version": VERSION, "kind": genotype.kind}
    if isinstance(genotype, DartsGenotype):
        out["normal"] = _cell_to_dict(genotype.normal)
        out["reduce"] = _cell_to_dict(genotype.reduce)
    elif isinstance(genotype, CellsGenotype):
        out["cells"] = [_cell_to_dict(c) for c in genotype.cells]
        out["reductions"] = list(genotype.reductions)
        if genotype.types is not None:
            out["types"] = list(genotype.types)
    elif isinstance(genotype, MlpGenotype):
        out["chains"] = {k: list(v) for k, v in genotype.chains.items()}
        out["meta"] = dict(genotype.meta)
    elif isinstance(genotype, GateGenotype):
        out.update(
            model=genotype.model,
            blocks_kept=list(genotype.blocks_kept),
            heads_kept={str(k): list(v) for k, v in genotype.heads_kept.items()},
            n_blocks=genotype.n_blocks,
            n_heads=genotype.n_heads,
            meta=dict(genotype.meta),
        )
    elif getattr(genotype, "kind", None) in EXTRA_KINDS and isinstance(genotype, EXTRA_KINDS[genotype.kind].cls):
        out.update(EXTRA_KINDS[genotype.kind].encode(genotype))
    else:
        raise GenotypeError(f"not a genotype: {type(genotype).__name__}")
    return out


def dumps(genotype: Genotype) -> str:
    return json.dumps(to_dict(genotype), indent=2)


def save(genotype: Genotype, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(genotype) + "\n")
    return path


def holds(path: str | Path, genotype: Genotype) -> bool:
    """Whether the file ``path`` holds ``genotype`` (as JSON: however it is laid out); False for a missing or
    unreadable file."""
    try:
        return to_dict(load(path)) == to_dict(genotype)
    except (GenotypeError, OSError):
        return False


# ----------------------------------------------------------------------------- decoding


def _require(data: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise GenotypeError(f"{where or 'genotype'}: expected an object, got {type(data).__name__}")
    if key not in data:
        raise GenotypeError(f"{where + '.' if where else ''}{key}: missing field")
    return data[key]


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GenotypeError(f"{where}: expected an integer, got {value!r}")
    return value


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise GenotypeError(f"{where}: expected a list of integers, got {value!r}")
    return tuple(_int(v, f"{where}[{i}]") for i, v in enumerate(value))


def _edge_from_raw(raw: Any, at: str, ops: set[str] | None, n_inputs: int) -> Edge:
    if not isinstance(raw, list) or len(raw) != 3:
        raise GenotypeError(f"{at}: expected [op, src, dst], got {raw!r}")
    op, src, dst = raw
    if not isinstance(op, str):
        raise GenotypeError(f"{at}.op: expected an op name, got {op!r}")
    if ops is not None and op not in ops:
        raise GenotypeError(f"{at}.op: unknown op {op!r}; known ops: {', '.join(sorted(ops))}")
    src, dst = _int(src, f"{at}.src"), _int(dst, f"{at}.dst")
    if src < 0:
        raise GenotypeError(f"{at}.src: node {src} is negative")
    if dst < n_inputs:
        raise GenotypeError(f"{at}.dst: node {dst} is a cell input (inputs are 0..{n_inputs - 1})")
    if src >= dst:
        raise GenotypeError(f"{at}: edge {src}->{dst} goes into an earlier node (src must be < dst)")
    return Edge(op, src, dst)


def _check_nodes(edges: list[Edge], concat: tuple[int, ...], n_inputs: int, where: str) -> None:
    if not concat:
        raise GenotypeError(f"{where}.concat: expected a non-empty list of the nodes whose outputs form the "
                            "cell's output, got []")
    targets = {e.dst for e in edges}
    if max(targets) - n_inputs + 1 > MAX_NODES_PER_CELL:
        raise GenotypeError(f"{where}.edges: node {max(targets)} makes {max(targets) - n_inputs + 1} intermediate "
                            f"nodes; at most {MAX_NODES_PER_CELL} are supported")
    for i, node in enumerate(concat):
        if node >= n_inputs and node not in targets:
            raise GenotypeError(f"{where}.concat[{i}]: node {node} has no incoming edge")
        if node < 0:
            raise GenotypeError(f"{where}.concat[{i}]: node {node} is negative")
    for e in edges:
        if e.src >= n_inputs and e.src not in targets:
            raise GenotypeError(f"{where}.edges: node {e.src} is used as an input but has no incoming edge")


def _cell_from_dict(data: Any, where: str, known_ops: Iterable[str] | None) -> CellGenotype:
    edges_raw = _require(data, "edges", where)
    concat = _int_list(_require(data, "concat", where), f"{where}.concat")
    n_inputs = _int(data.get("n_inputs", 2), f"{where}.n_inputs")
    if n_inputs != 2:  # a cell reads the outputs of the two cells before it (DiscreteCell, SearchCell)
        raise GenotypeError(f"{where}.n_inputs: expected 2 (the outputs of the two previous cells), got {n_inputs}")
    if not isinstance(edges_raw, list) or not edges_raw:
        raise GenotypeError(f"{where}.edges: expected a non-empty list of [op, src, dst]")
    if len(edges_raw) > MAX_EDGES_PER_CELL:
        raise GenotypeError(f"{where}.edges: {len(edges_raw)} edges; at most {MAX_EDGES_PER_CELL} per cell are "
                            "supported")
    ops = set(known_ops) if known_ops is not None else None
    edges = [_edge_from_raw(raw, f"{where}.edges[{i}]", ops, n_inputs) for i, raw in enumerate(edges_raw)]
    _check_nodes(edges, concat, n_inputs, where)
    return CellGenotype(tuple(edges), concat, n_inputs)


def _darts_from_dict(data: Mapping[str, Any], known_ops: Iterable[str] | None) -> Genotype:
    return DartsGenotype(
        _cell_from_dict(_require(data, "normal", ""), "normal", known_ops),
        _cell_from_dict(_require(data, "reduce", ""), "reduce", known_ops),
    )


def _cells_from_dict(data: Mapping[str, Any], known_ops: Iterable[str] | None) -> Genotype:
    cells_raw = _require(data, "cells", "")
    if not isinstance(cells_raw, list) or not cells_raw:
        raise GenotypeError("cells: expected a non-empty list of cells")
    if len(cells_raw) > MAX_CELLS:
        raise GenotypeError(f"cells: {len(cells_raw)} cells; at most {MAX_CELLS} are supported")
    cells = tuple(_cell_from_dict(c, f"cells[{i}]", known_ops) for i, c in enumerate(cells_raw))
    reductions = _int_list(_require(data, "reductions", ""), "reductions")
    for i, r in enumerate(reductions):
        if not 0 <= r < len(cells):
            raise GenotypeError(f"reductions[{i}]: position {r} is outside 0..{len(cells) - 1}")
    types = data.get("types")
    if types is not None:
        types = _int_list(types, "types")
        if len(types) != len(cells):
            raise GenotypeError(f"types: expected {len(cells)} entries (one per cell), got {len(types)}")
    return CellsGenotype(cells, reductions, types)


def _mlp_from_dict(data: Mapping[str, Any], known_ops: Iterable[str] | None) -> Genotype:
    chains_raw = _require(data, "chains", "")
    if not isinstance(chains_raw, Mapping) or not chains_raw:
        raise GenotypeError("chains: expected an object of name -> list of ops")
    chains = {}
    for name, ops_list in chains_raw.items():
        if not isinstance(ops_list, list) or not all(isinstance(o, str) for o in ops_list):
            raise GenotypeError(f"chains.{name}: expected a list of op names")
        if known_ops is not None:
            for i, o in enumerate(ops_list):
                if o not in set(known_ops):
                    raise GenotypeError(f"chains.{name}[{i}]: unknown op {o!r}")
        chains[name] = tuple(ops_list)
    return MlpGenotype(chains, dict(data.get("meta", {})))


def _gates_from_dict(data: Mapping[str, Any], known_ops: Iterable[str] | None) -> Genotype:
    n_blocks = _int(_require(data, "n_blocks", ""), "n_blocks")
    n_heads = _int(_require(data, "n_heads", ""), "n_heads")
    blocks = _int_list(_require(data, "blocks_kept", ""), "blocks_kept")
    for i, b in enumerate(blocks):
        if not 0 <= b < n_blocks:
            raise GenotypeError(f"blocks_kept[{i}]: block {b} is outside 0..{n_blocks - 1}")
    heads_raw = _require(data, "heads_kept", "")
    if not isinstance(heads_raw, Mapping):
        raise GenotypeError("heads_kept: expected an object of block -> list of heads")
    heads = {}
    for key, value in heads_raw.items():
        try:
            block = int(key)
        except ValueError:
            raise GenotypeError(f"heads_kept.{key}: block index must be an integer") from None
        kept = _int_list(value, f"heads_kept.{key}")
        for i, h in enumerate(kept):
            if not 0 <= h < n_heads:
                raise GenotypeError(f"heads_kept.{key}[{i}]: head {h} is outside 0..{n_heads - 1}")
        heads[block] = kept
    model = _require(data, "model", "")
    if not isinstance(model, str):
        raise GenotypeError(f"model: expected a model name, got {model!r}")
    return GateGenotype(model, blocks, heads, n_blocks, n_heads, dict(data.get("meta", {})))


def from_dict(data: Any, known_ops: Iterable[str] | None = None) -> Genotype:
    """Validate and decode; ``known_ops`` defaults to the cell op registry for cell genotypes."""
    if not isinstance(data, Mapping):
        raise GenotypeError(f"genotype: expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise GenotypeError(f"schema: expected {SCHEMA!r}, got {schema!r}")
    version = _require(data, "version", "")
    if version != VERSION:
        raise GenotypeError(f"version: unknown version {version!r} (this dartboard reads version {VERSION})")
    kind = _require(data, "kind", "")
    if kind in ("darts", "cells") and known_ops is None:
        from dartboard.spaces.ops import OPS

        known_ops = OPS.keys()
    decoders = {"darts": _darts_from_dict, "cells": _cells_from_dict, "mlp": _mlp_from_dict,
                "gates": _gates_from_dict}
    if kind in decoders:
        return decoders[kind](data, known_ops)
    if isinstance(kind, str) and kind in EXTRA_KINDS:
        return EXTRA_KINDS[kind].decode(data)
    known = ", ".join([*decoders, *EXTRA_KINDS])
    raise GenotypeError(f"kind: unknown genotype kind {kind!r}; expected one of {known}")


def loads(text: str, known_ops: Iterable[str] | None = None) -> Genotype:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise GenotypeError(f"not valid JSON: {err}") from None
    return from_dict(data, known_ops)


def load(path: str | Path, known_ops: Iterable[str] | None = None) -> Genotype:
    """The genotype in the JSON file ``path``; what is wrong with the file is named with the file."""
    path = check_file(path, "genotype file", GenotypeError)
    try:
        return loads(path.read_text(), known_ops)
    except GenotypeError as err:
        raise GenotypeError(f"genotype file {str(path)!r}: {err}") from None

