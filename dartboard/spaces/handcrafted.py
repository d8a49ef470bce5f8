"""Handcrafted networks encoded as per-cell genotypes in S_o (DARTOpti, thesis 4.1.4).

Each network is a list of distinct cell types, the type of every position and the
reduction positions (ALGORITHMS.md, DARTOpti; the facts of the public D-DARTS encodings).
Nodes 0 and 1 are the cell inputs (outputs of the two previous cells); a cell concatenates
all its intermediate nodes. Two ops on one connection (ResNet50's bottleneck + skip pair)
are two edges with the same (src, dst).

Registered in the genotype catalog (by :mod:`dartboard.spaces.catalog`) as ``resnet18``, ``resnet50`` and ``xception``.
"""

from __future__ import annotations

from collections.abc import Sequence

from dartboard.spaces.genotype import CellGenotype, CellsGenotype, Edge
from dartboard.spaces.ops import DARTOPTI_PRIMITIVES

_OP_ORDER = {op: k for k, op in enumerate(DARTOPTI_PRIMITIVES)}


def canonical_cell(cell: CellGenotype) -> CellGenotype:
    """The cell with its edges sorted by (dst, src, op position in S_o) and concat sorted:
    two encodings of one cell compare equal."""
    edges = sorted(cell.edges, key=lambda e: (e.dst, e.src, _OP_ORDER.get(e.op, len(_OP_ORDER)), e.op))
    return CellGenotype(tuple(edges), tuple(sorted(cell.concat)), cell.n_inputs)


def cell_from_edges(edges: Sequence[tuple[str, int, int]]) -> CellGenotype:
    """A canonical cell from (op, src, dst) triples; it concatenates all its intermediate nodes."""
    cell_edges = tuple(Edge(op, src, dst) for op, src, dst in edges)
    nodes = tuple(sorted({e.dst for e in cell_edges}))
    return canonical_cell(CellGenotype(cell_edges, nodes))


def typed_genotype(types: Sequence[CellGenotype], sequence: Sequence[int], reductions: Sequence[int]
                   ) -> CellsGenotype:
    """A per-cell genotype whose position ``i`` is cell type ``sequence[i]``."""
    for i, t in enumerate(sequence):
        if not 0 <= t < len(types):
            raise ValueError(f"sequence[{i}]: cell type {t} is outside 0..{len(types) - 1}")
    return CellsGenotype(tuple(types[t] for t in sequence), tuple(reductions), tuple(sequence))


def _residual_pairs(n_blocks: int) -> list[tuple[str, int, int]]:
    """ResNet50 bottleneck blocks: bottleneck_1x3x1 + skip_connect on 0->2, 2->3, 3->4, ..."""
    nodes = [0] + list(range(2, 2 + n_blocks))
    edges = []
    for src, dst in zip(nodes, nodes[1:], strict=False):
        edges += [("bottleneck_1x3x1", src, dst), ("skip_connect", src, dst)]
    return edges


def resnet18() -> CellsGenotype:
    """ResNet18 (He et al.): one cell type of two basic residual blocks (two 3x3 convs and a
    skip each), 4 cells, reductions at cells 1, 2, 3."""
    block = cell_from_edges([
        ("simple_conv_3x3", 0, 2), ("simple_conv_3x3", 2, 3), ("skip_connect", 0, 3),
        ("simple_conv_3x3", 3, 4), ("simple_conv_3x3", 4, 5), ("skip_connect", 3, 5),
    ])
    return typed_genotype([block], [0, 0, 0, 0], (1, 2, 3))


def resnet50() -> CellsGenotype:
    """ResNet50 (He et al.): bottleneck + skip pairs; types of 3, 4 and 6 blocks, in the order
    0, 1, 2, 0 (4 cells), reductions at cells 1, 2, 3."""
    types = [cell_from_edges(_residual_pairs(n)) for n in (3, 4, 6)]
    return typed_genotype(types, [0, 1, 2, 0], (1, 2, 3))


def xception() -> CellsGenotype:
    """Xception (Chollet): entry/exit type 0 (two separable convs, a max-pool and a 1x1 shortcut),
    middle type 1 (three separable convs and a skip), final type 2 (two separable convs);
    13 cells [0]*3 + [1]*8 + [0] + [2], reductions at cells 1, 2, 11, 12."""
    entry = cell_from_edges([
        ("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 2, 3), ("max_pool_3x3", 3, 4), ("simple_conv_1x1", 0, 4),
    ])
    middle = cell_from_edges([
        ("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 2, 3), ("sep_conv_3x3", 3, 4), ("skip_connect", 0, 4),
    ])
    final = cell_from_edges([("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 2, 3)])
    return typed_genotype([entry, middle, final], [0] * 3 + [1] * 8 + [0] + [2], (1, 2, 11, 12))


HANDCRAFTED = ("resnet18", "resnet50", "xception")
