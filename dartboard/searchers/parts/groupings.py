"""Groupings: which cells share a group of alphas (thesis 4.1.1, 4.1.4).

``assign(layout) -> (cell_group, group_names)``: ``cell_group[i]`` is the group of cell ``i``."""

from __future__ import annotations

from typing import Any

from dartboard.searchers.parts import PartRegistry
from dartboard.searchers.parts.base import Part

GROUPINGS = PartRegistry("grouping")


@GROUPINGS.register("normal_reduce")
class NormalReduce(Part):
    """DARTS: two groups, the normal cells (0) and the reduction cells (1)."""

    def check(self, config: Any, layout: Any) -> None:
        if layout.start is not None:
            raise ValueError("grouping 'normal_reduce' needs the plain DARTS layout; a search from a start "
                             "(option 'start') groups its cells with 'per_cell_type' or 'per_cell'")

    def assign(self, layout: Any) -> tuple[list[int], list[str]]:
        return list(layout.types), ["normal", "reduce"]


@GROUPINGS.register("per_cell_type")
class PerCellType(Part):
    """DARTOpti (thesis 4.1.4 (ii)): cells of one type share alphas (on the plain layout the
    types are normal and reduce, as in DARTS)."""

    def assign(self, layout: Any) -> tuple[list[int], list[str]]:
        return list(layout.types), list(layout.type_names)


@GROUPINGS.register("per_cell")
class PerCell(Part):
    """D-DARTS (thesis 4.1.1): one group per cell; cells keep their normal/reduction ops."""

    def assign(self, layout: Any) -> tuple[list[int], list[str]]:
        return list(range(layout.layers)), [f"cell_{i}" for i in range(layout.layers)]
