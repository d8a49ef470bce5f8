"""The architecture distance metric M (thesis 4.1.5; ALGORITHMS.md, DARTOpti).

Hierarchy: op weights (thesis Table 4.1 scores / 100) -> edge distance (weighted Hamming,
thesis Algorithm 3) -> cell distance (symmetric Hausdorff, thesis Eq 4.6-4.7) ->
architecture distance (mean over aligned cells, thesis Eq 4.8).

An edge is a connection (src, dst) of a cell, encoded as the binary vector over the 12 ops
of S_o saying which ops it carries (the ``edge`` parsing keeps up to two). A cell is the set
of its edges, as in the thesis: positions are not part of a point, so M is a pseudo-metric
(two cells carrying the same op sets on different connections are at distance 0); it is
symmetric and satisfies the triangle inequality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dartboard.spaces.genotype import CellGenotype, CellsGenotype, DartsGenotype, GenotypeError

#: Thesis Table 4.1: benchmark score (%) of each op of S_o; the edge-distance weights are score / 100.
TABLE_4_1_SCORES: dict[str, float] = {
    "conv_3x1_1x3": 82.76,
    "conv_7x1_1x7": 82.72,
    "max_pool_3x3": 82.96,
    "avg_pool_3x3": 82.51,
    "skip_connect": 82.15,
    "simple_conv_1x1": 82.27,
    "simple_conv_3x3": 83.12,
    "sep_conv_3x3": 83.19,
    "sep_conv_5x5": 84.87,
    "dil_conv_3x3": 82.96,
    "dil_conv_5x5": 82.99,
    "bottleneck_1x3x1": 83.06,
}
OP_WEIGHTS: dict[str, float] = {op: score / 100.0 for op, score in TABLE_4_1_SCORES.items()}


def _weights(weights: Mapping[str, float] | None) -> Mapping[str, float]:
    return OP_WEIGHTS if weights is None else weights


def edge_distance(u: Sequence[int | bool], v: Sequence[int | bool], w: Sequence[float]) -> float:
    """Thesis Algorithm 3 (weighted Hamming): mean over the indices of ``w[i]`` where
    ``u[i] != v[i]``, 0 where they agree."""
    if not len(u) == len(v) == len(w):
        raise ValueError(f"edge_distance: vectors and weights must have one length, got {len(u)}, {len(v)}, {len(w)}")
    if not w:
        raise ValueError("edge_distance: empty vectors")
    return sum(wi if bool(ui) != bool(vi) else 0.0 for ui, vi, wi in zip(u, v, w, strict=False)) / len(w)


def edge_vectors(cell: CellGenotype, weights: Mapping[str, float] | None = None) -> list[tuple[int, ...]]:
    """The binary op vector of every connection (src, dst) of ``cell``, in the op order of ``weights``."""
    weights = _weights(weights)
    ops = list(weights)
    index = {op: k for k, op in enumerate(ops)}
    by_connection: dict[tuple[int, int], set[str]] = {}
    for e in cell.edges:
        if e.op not in index:
            raise ValueError(f"edge {e.src}->{e.dst}: op {e.op!r} has no distance weight; ops with a weight: "
                             f"{', '.join(ops)}")
        by_connection.setdefault((e.src, e.dst), set()).add(e.op)
    return [tuple(int(op in present) for op in ops) for _, present in sorted(by_connection.items())]


def directed_hausdorff(xs: Sequence[Sequence[int]], ys: Sequence[Sequence[int]], w: Sequence[float]) -> float:
    """sup_{x in X} d(x, Y) with d(x, Y) = min_{y in Y} d(x, y) (one direction of thesis Eq 4.6)."""
    if not xs or not ys:
        raise ValueError("directed_hausdorff: both sets must be non-empty")
    return max(min(edge_distance(x, y, w) for y in ys) for x in xs)


def hausdorff(xs: Sequence[Sequence[int]], ys: Sequence[Sequence[int]], w: Sequence[float]) -> float:
    """Thesis Eq 4.6: d_H(X, Y) = max(sup_x d(x, Y), sup_y d(X, y))."""
    return max(directed_hausdorff(xs, ys, w), directed_hausdorff(ys, xs, w))


def cell_distance(a: CellGenotype, b: CellGenotype, weights: Mapping[str, float] | None = None) -> float:
    """Thesis Eq 4.7: M_H(X, Y) = max(d_H(X, Y), d_H(Y, X)) over the edge sets of two cells."""
    weights = _weights(weights)
    w = list(weights.values())
    xs, ys = edge_vectors(a, weights), edge_vectors(b, weights)
    return max(hausdorff(xs, ys, w), hausdorff(ys, xs, w))


def aligned_cells(a: DartsGenotype | CellsGenotype, b: DartsGenotype | CellsGenotype
                  ) -> tuple[list[CellGenotype], list[CellGenotype]]:
    """The cells of ``a`` and ``b`` position by position. Two DARTS genotypes compare their
    normal and reduction cells; a DARTS genotype against a per-cell one is laid out over the
    other's cells and reductions."""
    for name, g in (("a", a), ("b", b)):
        if not isinstance(g, (DartsGenotype, CellsGenotype)):
            raise ValueError(f"{name}: expected a cell genotype (darts or cells), got {type(g).__name__}")
    if isinstance(a, DartsGenotype) and isinstance(b, DartsGenotype):
        return [a.normal, a.reduce], [b.normal, b.reduce]
    if isinstance(a, DartsGenotype):
        return [a.reduce if i in b.reductions else a.normal for i in range(len(b.cells))], list(b.cells)
    if isinstance(b, DartsGenotype):
        return list(a.cells), [b.reduce if i in a.reductions else b.normal for i in range(len(a.cells))]
    if len(a.cells) != len(b.cells):
        raise ValueError(f"architectures have {len(a.cells)} and {len(b.cells)} cells: M compares cells at the "
                         "same positions, so both need the same number of cells")
    return list(a.cells), list(b.cells)


def architecture_distance(a: DartsGenotype | CellsGenotype, b: DartsGenotype | CellsGenotype,
                          weights: Mapping[str, float] | None = None) -> float:
    """Thesis Eq 4.8: M(A, B) = sum_i M_H(C_i^A, C_i^B) / n over the n aligned cells."""
    cells_a, cells_b = aligned_cells(a, b)
    return sum(cell_distance(x, y, weights) for x, y in zip(cells_a, cells_b, strict=False)) / len(cells_a)


def check_comparable(genotypes: Sequence[object], names: Sequence[str],
                     weights: Mapping[str, float] | None = None) -> None:
    """Refuse, naming the genotype (``names``: how the user gave each), what M cannot compare: a genotype that is
    not made of cells, an op with no distance weight (Table 4.1), per-cell genotypes of different lengths."""
    ops = _weights(weights)
    lengths: dict[int, str] = {}
    for name, g in zip(names, genotypes, strict=True):
        if not isinstance(g, (DartsGenotype, CellsGenotype)):
            kind = getattr(g, "kind", type(g).__name__)
            raise GenotypeError(f"genotype {name!r} is of kind {kind!r}; M (thesis Eq 4.8) compares cell "
                                f"genotypes (darts or cells)")
        cells = [g.normal, g.reduce] if isinstance(g, DartsGenotype) else g.cells
        unknown = sorted({e.op for c in cells for e in c.edges} - set(ops))
        if unknown:
            raise GenotypeError(f"genotype {name!r}: op {unknown[0]!r} has no distance weight (thesis Table 4.1); "
                                f"ops with one: {', '.join(ops)}")
        if isinstance(g, CellsGenotype):
            lengths.setdefault(len(g.cells), name)
    if len(lengths) > 1:
        (n1, a), (n2, b) = sorted(lengths.items())[:2]
        raise GenotypeError(f"genotypes {a!r} and {b!r} have {n1} and {n2} cells: M compares cells at the same "
                            f"positions, so per-cell genotypes need the same number of cells")


def distance_matrix(genotypes: Sequence[DartsGenotype | CellsGenotype],
                    weights: Mapping[str, float] | None = None, names: Sequence[str] | None = None
                    ) -> list[list[float]]:
    """M between every pair of ``genotypes`` (thesis Fig 4.8); what M cannot compare is refused first, each
    genotype named by ``names`` (default: its position)."""
    n = len(genotypes)
    check_comparable(genotypes, names or [f"#{i + 1}" for i in range(n)], weights)
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            out[i][j] = out[j][i] = architecture_distance(genotypes[i], genotypes[j], weights)
    return out
