"""``tiny81``: an exhaustively enumerable cell space (the Zela & Hutter 81-architecture idea).

A network of two cells, a normal cell then a reduction cell (``layers=2, reductions=(1,)``).
Each cell has ``steps=1`` intermediate node fed by both cell inputs: 2 edges per cell,
4 searched edges in all, 3 candidate ops per edge -> 3**4 = 81 architectures.

Why this shape: the DARTS parse (per node, the 2 strongest incoming edges, argmax op
excluding ``none``) keeps *both* edges of a 1-step cell, so every DARTS-family searcher
with normal/reduce alphas (a :class:`DartsGenotype`) or with per-cell alphas over these
2 cells (a :class:`CellsGenotype`) derives exactly one of the 81 members; no op is
``none``, so argmax never has to skip one. The ops give the space good and degenerate
members (Zela & Hutter: DARTS drifts to parameter-free ops): a separable convolution,
the identity, and a parameter-free max pooling.

Nothing here trains; the table lives in :mod:`dartboard.bench.table`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from dartboard.spaces.genotype import CellGenotype, CellsGenotype, DartsGenotype, Edge, Genotype

TINY81_NAME = "tiny81"
TINY81_OPS: tuple[str, ...] = ("sep_conv_3x3", "skip_connect", "max_pool_3x3")
TINY81_STEPS = 1
TINY81_LAYERS = 2
TINY81_REDUCTIONS: tuple[int, ...] = (1,)
#: The 4 searched edges, in key order: (cell, src, dst).
TINY81_EDGES: tuple[tuple[str, int, int], ...] = (("normal", 0, 2), ("normal", 1, 2), ("reduce", 0, 2),
                                                   ("reduce", 1, 2))

#: Searcher options that put any DARTS-family searcher on the tiny81 supernet.
TINY81_SEARCH_OPTIONS: dict[str, Any] = {
    "space": TINY81_NAME, "steps": TINY81_STEPS, "multiplier": 1, "layers": TINY81_LAYERS,
    "reductions": list(TINY81_REDUCTIONS), "C": 8,
}


def n_architectures() -> int:
    return len(TINY81_OPS) ** len(TINY81_EDGES)


# tiny625 (issue 19): the same two cells with 5 none-free ops, 5**4 = 625 members: a table large enough to
# separate searchers (with 81 members random search that trains 5 or 6 of them is within one std of DARTS).
TINY625_NAME = "tiny625"
TINY625_OPS: tuple[str, ...] = ("sep_conv_3x3", "dil_conv_3x3", "skip_connect", "max_pool_3x3", "avg_pool_3x3")


def _cell(op0: str, op1: str) -> CellGenotype:
    return CellGenotype((Edge(op0, 0, 2), Edge(op1, 1, 2)), (2,))


def genotype_of_ops(ops: tuple[str, str, str, str] | list[str], space_ops: tuple[str, ...] = TINY81_OPS
                    ) -> DartsGenotype:
    """The member with ops (normal 0->2, normal 1->2, reduce 0->2, reduce 1->2)."""
    if len(ops) != 4 or any(op not in space_ops for op in ops):
        raise ValueError(f"ops: expected 4 ops from {space_ops}, got {list(ops)}")
    return DartsGenotype(normal=_cell(ops[0], ops[1]), reduce=_cell(ops[2], ops[3]))


def enumerate_ops(space_ops: tuple[str, ...] = TINY81_OPS) -> list[tuple[str, ...]]:
    """All op assignments (81 for tiny81), in a fixed order (the table's index order)."""
    return list(itertools.product(space_ops, repeat=len(TINY81_EDGES)))


def ops_key(ops: tuple[str, ...] | list[str]) -> str:
    """Table key: ``normal_op0,normal_op1|reduce_op0,reduce_op1``."""
    return f"{ops[0]},{ops[1]}|{ops[2]},{ops[3]}"


def _cell_ops(cell: CellGenotype, space_ops: tuple[str, ...] = TINY81_OPS) -> tuple[str, str] | None:
    by_src = {e.src: e.op for e in cell.edges}
    if (cell.n_inputs != 2 or len(cell.edges) != 2 or set(by_src) != {0, 1}
            or any(e.dst != 2 for e in cell.edges) or tuple(cell.concat) != (2,)):
        return None
    if any(op not in space_ops for op in by_src.values()):
        return None
    return by_src[0], by_src[1]


def genotype_key(genotype: Genotype, space_ops: tuple[str, ...] = TINY81_OPS) -> str | None:
    """The table key of a derived genotype, or None when it is not one of the 81 members
    (e.g. a threshold parse dropped an edge, or a per-cell genotype of another depth)."""
    if isinstance(genotype, DartsGenotype):
        cells = (genotype.normal, genotype.reduce)
    elif isinstance(genotype, CellsGenotype):
        if len(genotype.cells) != TINY81_LAYERS or tuple(genotype.reductions) != TINY81_REDUCTIONS:
            return None
        cells = tuple(genotype.cells)
    else:
        return None
    normal, reduce = (_cell_ops(c, space_ops) for c in cells)
    if normal is None or reduce is None:
        return None
    return ops_key(normal + reduce)


@dataclass(frozen=True)
class TinySpace:
    """An exhaustively tabulated two-cell space (tiny81, tiny625): its name and ops."""

    name: str
    ops: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.ops) ** len(TINY81_EDGES)

    def enumerate_ops(self) -> list[tuple[str, ...]]:
        return enumerate_ops(self.ops)

    def genotype_of_ops(self, ops: tuple[str, ...] | list[str]) -> DartsGenotype:
        return genotype_of_ops(ops, self.ops)

    def genotype_key(self, genotype: Genotype) -> str | None:
        return genotype_key(genotype, self.ops)

    @property
    def search_options(self) -> dict[str, Any]:
        return {**TINY81_SEARCH_OPTIONS, "space": self.name}


TINY_SPACES = {TINY81_NAME: TinySpace(TINY81_NAME, TINY81_OPS), TINY625_NAME: TinySpace(TINY625_NAME, TINY625_OPS)}
