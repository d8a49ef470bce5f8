"""Alpha initialisations: ``init(group, cells, layout) -> Tensor[rows, ops]`` per group
(``cells``: the layout's cells in that group)."""

from __future__ import annotations

from typing import Any

import torch

from dartboard.searchers.parts import PartRegistry
from dartboard.searchers.parts.base import Part

ALPHA_INITS = PartRegistry("alpha_init")

ALPHA_SCALE_DARTS = 1e-3  # DARTS: alpha = 1e-3 * randn
ALPHA_ENCODED = 10.0  # thesis 4.1.4 / ALGORITHMS.md: 10 on the encoded ops (sigmoid ~ 1), 0 elsewhere


def _shape(group: Any) -> tuple[int, int]:
    return len(group.rows), max(len(p) for p in group.primitives)


@ALPHA_INITS.register("randn")
class Randn(Part):
    """DARTS: alpha = scale * N(0, 1)."""

    def __init__(self, scale: float = ALPHA_SCALE_DARTS):
        self.scale = float(scale)

    def init(self, group: Any, cells: list[int], layout: Any) -> torch.Tensor:
        return self.scale * torch.randn(_shape(group))


@ALPHA_INITS.register("constant")
class Constant(Part):
    """FairDARTS / D-DARTS: every alpha = value (0: sigmoid 0.5)."""

    def __init__(self, value: float = 0.0):
        self.value = float(value)

    def init(self, group: Any, cells: list[int], layout: Any) -> torch.Tensor:
        return torch.full(_shape(group), self.value)


@ALPHA_INITS.register("uniform")
class Uniform(Part):
    """Maile et al. 4.1 (CRB), sparse DARTS: alpha = 1/|O| + scale * N(0, 1)."""

    def __init__(self, scale: float = ALPHA_SCALE_DARTS):
        self.scale = float(scale)

    def init(self, group: Any, cells: list[int], layout: Any) -> torch.Tensor:
        shape = _shape(group)
        return 1.0 / shape[1] + self.scale * torch.randn(shape)


@ALPHA_INITS.register("encoded")
class Encoded(Part):
    """DARTOpti (thesis 4.1.4): ``value`` on the ops of the start genotype's cell, ``elsewhere``
    on the others, so that the search starts from (and derives, before any step) the start."""

    def __init__(self, value: float = ALPHA_ENCODED, elsewhere: float = 0.0):
        self.value, self.elsewhere = float(value), float(elsewhere)

    def check(self, config: Any, layout: Any) -> None:
        if layout.start is None:
            raise ValueError("alpha_init 'encoded' encodes a start genotype: give the option 'start' "
                             "(e.g. start=resnet18)")

    def init(self, group: Any, cells: list[int], layout: Any) -> torch.Tensor:
        alpha = torch.full(_shape(group), self.elsewhere)
        if not cells:
            return alpha
        rows = list(group.rows)
        for e in layout.start.cells[cells[0]].edges:
            ops = list(group.primitives[rows.index((e.src, e.dst))])
            if e.op not in ops:
                raise ValueError(f"start: op {e.op!r} is not among the candidate ops {ops}")
            alpha[rows.index((e.src, e.dst)), ops.index(e.op)] = self.value
        return alpha
