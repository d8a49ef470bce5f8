"""Discretizers: mixing weights of a cell -> a discrete :class:`CellGenotype`.

A discretizer has the signature ``fn(weights, edges, primitives, **options) -> CellGenotype``
where ``weights`` is ``[n_edges, n_ops]`` (after the activation), ``edges`` the (src, dst)
list of the search cell and ``primitives`` the candidate op names of every edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dartboard.spaces.genotype import CellGenotype, Edge

Discretizer = Callable[..., CellGenotype]
DISCRETIZERS: dict[str, Discretizer] = {}


def register_discretizer(name: str) -> Callable[[Discretizer], Discretizer]:
    def wrap(fn: Discretizer) -> Discretizer:
        if name in DISCRETIZERS:
            raise ValueError(f"discretizer {name!r} is already registered")
        DISCRETIZERS[name] = fn
        return fn

    return wrap


def get_discretizer(name: str) -> Discretizer:
    try:
        return DISCRETIZERS[name]
    except KeyError:
        raise ValueError(f"unknown discretizer {name!r}; known: {', '.join(sorted(DISCRETIZERS))}") from None


def best_op(row: torch.Tensor, primitives: Sequence[str]) -> tuple[int, float]:
    """Index and weight of the strongest op of an edge, `none` excluded."""
    best, best_w = -1, float("-inf")
    for k, name in enumerate(primitives):
        w = float(row[k])
        if name != "none" and w > best_w:
            best, best_w = k, w
    if best < 0:
        raise ValueError(f"edge has no op other than none: {list(primitives)}")
    return best, best_w


@register_discretizer("darts")
def darts_parse(weights: torch.Tensor, edges: Sequence[tuple[int, int]], primitives: Sequence[Sequence[str]],
                inputs_per_node: int = 2, **_: object) -> CellGenotype:
    """DARTS parsing: per node, keep the ``inputs_per_node`` incoming edges whose best
    non-none op is strongest; on each, the argmax op excluding none."""
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
