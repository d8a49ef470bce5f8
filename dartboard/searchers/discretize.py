"""Discretizers: mixing weights of a cell -> a discrete :class:`CellGenotype`.

A discretizer has the signature ``fn(weights, edges, primitives, <options>) -> CellGenotype``
where ``weights`` is ``[n_edges, n_ops]`` (after the activation), ``edges`` the (src, dst)
list of the search cell and ``primitives`` the candidate op names of every edge. Its options
are named keyword parameters: a misspelt option is refused when the search is built.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from dartboard.searchers.parts import PartRegistry, PartSpec
from dartboard.spaces.genotype import CellGenotype, Edge

Discretizer = Callable[..., CellGenotype]
DISCRETIZERS = PartRegistry("discretizer", skip=3)
register_discretizer = DISCRETIZERS.register
get_discretizer = DISCRETIZERS.lookup


def check_option(name: str, value: object) -> None:
    """The discretizers' options, checked when a search is built, not when it derives after its epochs:
    ``sigma_threshold`` a number in [0, 1]; ``inputs_per_node`` an integer >= 1; the caps ``max_*`` None or an
    integer >= 1 (0 would derive a cell without edges, which no genotype file can hold)."""
    if name == "sigma_threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"sigma_threshold: expected a value in [0, 1], got {value!r}")
    elif name == "inputs_per_node" or name.startswith("max_"):
        if value is None and name.startswith("max_"):
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            expected = "None or an integer >= 1" if name.startswith("max_") else "an integer >= 1"
            raise ValueError(f"{name}: expected {expected}, got {value!r}")


def build_discretizer(spec: PartSpec) -> Discretizer:
    """The discretizer of ``spec`` with its options bound (validated by name and value)."""
    name, options = DISCRETIZERS.check(spec)
    for option, value in options.items():
        try:
            check_option(option, value)
        except ValueError as err:
            raise ValueError(f"discretizer {name!r}: {err}") from None
    bound = functools.partial(DISCRETIZERS[name], **options)
    bound.name = name  # for errors that name the part
    return bound


def best_op(row: torch.Tensor, primitives: Sequence[str]) -> tuple[int, float]:
    """Index and weight of the strongest op of an edge, `none` excluded."""
    best, best_w = -1, float("-inf")
    for k, name in enumerate(primitives):
        w = float(row[k])
        if name != "none" and not math.isfinite(w):
            raise FloatingPointError(f"architecture weight of {name!r} is {w}: the search diverged (NaN or inf)")
        if name != "none" and w > best_w:
            best, best_w = k, w
    if best < 0:
        raise ValueError(f"edge has no op other than none: {list(primitives)}")
    return best, best_w


@register_discretizer("darts")
def darts_parse(weights: torch.Tensor, edges: Sequence[tuple[int, int]], primitives: Sequence[Sequence[str]],
                inputs_per_node: int = 2) -> CellGenotype:
    """DARTS parsing: per node, keep the ``inputs_per_node`` incoming edges whose best
    non-none op is strongest; on each, the argmax op excluding none."""
    check_option("inputs_per_node", inputs_per_node)
    weights = weights.detach().float().cpu()
    nodes = sorted({dst for _, dst in edges})
    chosen: list[Edge] = []
    for node in nodes:
        candidates = []
        for e, (src, dst) in enumerate(edges):
            if dst == node:
                k, w = best_op(weights[e], primitives[e])
                candidates.append((w, -src, Edge(primitives[e][k], src, dst)))
        candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
        chosen.extend(sorted((c[2] for c in candidates[:inputs_per_node]), key=lambda ed: ed.src))
    return CellGenotype(tuple(chosen), tuple(nodes))


#: FairDARTS / D-DARTS sigmoid threshold for parsing (thesis 4.2.1: sigma_t = 0.85).
SIGMA_THRESHOLD = 0.85


def threshold_parse(weights: torch.Tensor, edges: Sequence[tuple[int, int]], primitives: Sequence[Sequence[str]],
                    sigma_threshold: float = SIGMA_THRESHOLD, max_ops_per_edge: int | None = None,
                    max_inputs_per_node: int | None = None) -> CellGenotype:
    """Threshold parsing (thesis Algorithm 1, derivation; ALGORITHMS.md D-DARTS): keep every
    non-none op whose weight is >= ``sigma_threshold``, at most ``max_ops_per_edge`` per edge
    (strongest first) and at most ``max_inputs_per_node`` per node (strongest first).
    A node left with no input keeps its single strongest op, so the cell stays valid."""
    for name, value in (("sigma_threshold", sigma_threshold), ("max_ops_per_edge", max_ops_per_edge),
                        ("max_inputs_per_node", max_inputs_per_node)):
        check_option(name, value)
    weights = weights.detach().float().cpu()
    nodes = sorted({dst for _, dst in edges})
    chosen: list[Edge] = []
    for node in nodes:
        chosen.extend(_node_threshold_parse(node, weights, edges, primitives, sigma_threshold, max_ops_per_edge,
                                            max_inputs_per_node))
    return CellGenotype(tuple(chosen), tuple(nodes))


def _node_threshold_parse(node: int, weights: torch.Tensor, edges: Sequence[tuple[int, int]],
                          primitives: Sequence[Sequence[str]], sigma_threshold: float, max_ops_per_edge: int | None,
                          max_inputs_per_node: int | None) -> list[Edge]:
    kept: list[tuple[float, int, Edge]] = []
    fallback: tuple[float, int, Edge] | None = None
    for e, (src, dst) in enumerate(edges):
        if dst != node:
            continue
        ranked = sorted(((float(weights[e, k]), k) for k, name in enumerate(primitives[e]) if name != "none"),
                        reverse=True)
        diverged = [(primitives[e][k], w) for w, k in ranked if not math.isfinite(w)]
        if diverged:  # as best_op: a NaN compares False with the threshold and would drop the op unseen
            op, w = diverged[0]
            raise FloatingPointError(f"architecture weight of {op!r} is {w}: the search diverged (NaN or inf)")
        if ranked and (fallback is None or ranked[0][0] > fallback[0]):
            fallback = (ranked[0][0], -src, Edge(primitives[e][ranked[0][1]], src, dst))
        passing = [(w, k) for w, k in ranked if w >= sigma_threshold]
        kept.extend((w, -src, Edge(primitives[e][k], src, dst)) for w, k in passing[:max_ops_per_edge])
    kept.sort(key=lambda c: (c[0], c[1]), reverse=True)
    if max_inputs_per_node is not None:
        kept = kept[:max_inputs_per_node]
    if not kept:
        if fallback is None:
            raise ValueError(f"node {node}: no incoming edge has an op other than none")
        kept = [fallback]
    return sorted((c[2] for c in kept), key=lambda ed: (ed.src, ed.op))


@register_discretizer("sparse")
def sparse_parse(weights: torch.Tensor, edges: Sequence[tuple[int, int]], primitives: Sequence[Sequence[str]],
                 sigma_threshold: float = SIGMA_THRESHOLD, max_inputs_per_node: int | None = None) -> CellGenotype:
    """FairDARTS/D-DARTS `sparse`: at most 1 op per edge, weight >= sigma_t (thesis 4.2.4)."""
    return threshold_parse(weights, edges, primitives, sigma_threshold, max_ops_per_edge=1,
                           max_inputs_per_node=max_inputs_per_node)


@register_discretizer("edge")
def edge_parse(weights: torch.Tensor, edges: Sequence[tuple[int, int]], primitives: Sequence[Sequence[str]],
               sigma_threshold: float = SIGMA_THRESHOLD, max_inputs_per_node: int | None = None) -> CellGenotype:
    """FairDARTS/D-DARTS `edge`: at most 2 ops per edge, weight >= sigma_t (thesis 4.2.4)."""
    return threshold_parse(weights, edges, primitives, sigma_threshold, max_ops_per_edge=2,
                           max_inputs_per_node=max_inputs_per_node)


@register_discretizer("threshold")
def sigmoid_threshold_parse(weights: torch.Tensor, edges: Sequence[tuple[int, int]],
                            primitives: Sequence[Sequence[str]], sigma_threshold: float = SIGMA_THRESHOLD,
                            max_ops_per_edge: int | None = None, max_inputs_per_node: int | None = None
                            ) -> CellGenotype:
    """Sigmoid-threshold parsing: every op with weight >= sigma_t (optionally capped per
    edge / per node, e.g. ColorNAS: top-2 per node at 0.7)."""
    return threshold_parse(weights, edges, primitives, sigma_threshold, max_ops_per_edge=max_ops_per_edge,
                           max_inputs_per_node=max_inputs_per_node)


def genotype_mask(cell: CellGenotype, edges: Sequence[tuple[int, int]], primitives: Sequence[Sequence[str]]
                  ) -> torch.Tensor:
    """The one-hot encoding [n_edges, n_ops] of a discrete cell (Maile et al. Eq 1-4: a point of S)."""
    index = {edge: e for e, edge in enumerate(edges)}
    mask = torch.zeros(len(edges), max(len(p) for p in primitives))
    for ed in cell.edges:
        e = index.get((ed.src, ed.dst))
        if e is None or ed.op not in primitives[e]:
            raise ValueError(f"edge ({ed.op}, {ed.src}, {ed.dst}) is not in the search cell")
        mask[e, list(primitives[e]).index(ed.op)] = 1.0
    return mask
