"""A cell space's supernet as the search engine sees it.

The engine knows alphas only as *groups*: one ``[rows, ops]`` tensor per group, and a
supernet that takes one mixing-weight tensor per group. For cell spaces a row is an edge
``(src, dst)`` of a search cell and a group is a set of cells that share alphas (the
grouping: normal/reduce, per cell, per cell type). Another space (an MLP chain, an
activation-function space) is another :class:`Supernet` with other rows.

- :class:`CellLayout`: which cells the supernet has (per cell its candidate ops per edge and
  its intermediate nodes, the reductions, the type of every cell), either the plain DARTS
  layout of a :class:`CellSpace` or the layout of a handcrafted
  start genotype (DARTOpti, thesis 4.1.4);
- :class:`CellSupernet`: the supernet of a layout with a grouping of its cells; forward with
  group weights, op masks per group (CRB), and the genotype of per-group discrete cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from dartboard.spaces.cells import edge_list
from dartboard.spaces.genotype import CellGenotype, CellsGenotype, DartsGenotype, Genotype
from dartboard.spaces.networks import SearchNetwork, TypedSearchNetwork, default_reductions
from dartboard.spaces.published import resolve

Primitives = tuple[tuple[str, ...], ...]  # the candidate ops of every row (edge) of a group


@dataclass(frozen=True)
class AlphaGroup:
    """How to read one group of alphas: its name, the label of each row (an edge
    ``(src, dst)``, a layer index, ...) and the candidate op names of each row."""

    name: str
    rows: tuple
    primitives: Primitives


@runtime_checkable
class Supernet(Protocol):
    """What the engine needs of a supernet (an ``nn.Module``): its alpha groups, the units
    (cells, layers, channels) of each group, a forward with one mixing-weight tensor per group,
    op masks per group (CRB; a supernet without masks keeps every op active) and the genotype
    of one discrete choice per group (what the discretizer returned for it)."""

    layout: Any
    groups: list[AlphaGroup]

    def cells_of(self, group: int) -> list[int]: ...
    def __call__(self, x: Any, group_weights: Sequence[torch.Tensor]) -> torch.Tensor: ...
    def active_ops(self) -> Any: ...
    def set_active_ops(self, masks: Any) -> None: ...
    def mask_group(self, group: int, keep: torch.Tensor) -> None: ...
    def group_active(self, group: int) -> torch.Tensor: ...
    def genotype(self, choices: Sequence[Any]) -> Genotype: ...


@runtime_checkable
class SearchSpace(Protocol):
    """A registered space (``spaces.catalog.SPACES``): a layout from the engine's config (units
    with ``layers``, ``types``, ``type_names``, ``reductions`` and ``start`` (None outside
    DARTOpti), so that the groupings apply), then the supernet of a layout whose units are
    grouped by ``cell_group``. ``network_defaults``: options the space implies (under the
    user's)."""

    name: str
    description: str
    network_defaults: Any

    def layout(self, config: Any) -> Any: ...
    def supernet(self, layout: Any, cell_group: Sequence[int], group_names: Sequence[str], config: Any
                 ) -> Supernet: ...


@dataclass(frozen=True)
class CellLayout:
    """The cells of a supernet: per cell its candidate ops (one tuple per edge) and its number
    of intermediate nodes; the reduction positions; the type of every cell (cells of one type
    have the same ops and nodes); ``start``: the handcrafted genotype it was made from."""

    primitives: tuple[Primitives, ...]
    steps: tuple[int, ...]
    reductions: tuple[int, ...]
    types: tuple[int, ...]
    type_names: tuple[str, ...]
    start: CellsGenotype | None = None

    @property
    def layers(self) -> int:
        return len(self.primitives)


@dataclass(frozen=True)
class CellSpace:
    """Candidate ops per edge for normal and reduction cells (``steps`` intermediate nodes)."""

    name: str
    normal: tuple[tuple[str, ...], ...]
    reduce: tuple[tuple[str, ...], ...]
    steps: int = 4
    description: str = ""
    # Supernet settings the space implies (e.g. tiny81: 1 step, 2 cells), applied under the user's options.
    network_defaults: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def uniform(cls, name: str, primitives: Sequence[str], steps: int = 4, description: str = "",
                network_defaults: Mapping[str, Any] | None = None) -> CellSpace:
        per_edge = tuple(tuple(primitives) for _ in edge_list(steps))
        return cls(name, per_edge, per_edge, steps, description, dict(network_defaults or {"steps": steps}))

    def primitives(self, reduction: bool) -> tuple[tuple[str, ...], ...]:
        return self.reduce if reduction else self.normal

    @property
    def n_ops(self) -> int:
        return len(self.normal[0])

    # ------------------------------------------------------------------ the SearchSpace protocol
    def layout(self, config: Any) -> Any:
        """The cells of the supernet: the plain DARTS layout, or the layout of ``config.start``."""
        if getattr(config, "space_options", None):
            raise ValueError(f"space_options: the cell space {self.name!r} takes no options, "
                             f"got {config.space_options}")
        if config.start is None:
            if self.steps != config.steps:
                raise ValueError(f"steps: space {self.name!r} has {self.steps} steps, config says {config.steps}")
            if not 1 <= config.multiplier <= self.steps:  # a cell's output: its last `multiplier` nodes
                raise ValueError(f"multiplier: a cell concatenates its last 1 to {self.steps} nodes (space "
                                 f"{self.name!r} has {self.steps} steps), got {config.multiplier}")
            return plain_layout(self, config.layers, config.reductions)
        return start_layout(self, config.start)

    def supernet(self, layout: Any, cell_group: Sequence[int], group_names: Sequence[str], config: Any) -> Any:
        return CellSupernet(layout, cell_group, group_names, C=config.C, num_classes=config.num_classes,
                            in_channels=config.in_channels, input_size=config.input_size,
                            stem_multiplier=config.stem_multiplier, multiplier=config.multiplier,
                            node_bn=config.node_bn)


def plain_layout(space: CellSpace, layers: int, reductions: Sequence[int] | None) -> CellLayout:
    """DARTS: every cell has the space's normal or reduction ops; type 0 normal, 1 reduce."""
    reds = default_reductions(layers) if reductions is None else tuple(int(r) for r in reductions)
    bad = [r for r in reds if not 0 <= r < layers]
    if bad:
        raise ValueError(f"reductions: positions {bad} are outside the {layers} cells")
    types = tuple(1 if i in reds else 0 for i in range(layers))
    return CellLayout(tuple(space.primitives(t == 1) for t in types), (space.steps,) * layers, reds, types,
                      ("normal", "reduce"))


def start_genotype(start: str) -> CellsGenotype:
    """A handcrafted start (DARTOpti): a per-cell genotype with cell types (catalog name or file)."""
    from dartboard.spaces.handcrafted import HANDCRAFTED, canonical_cell

    genotype = resolve(start)
    if not isinstance(genotype, CellsGenotype):
        raise ValueError(f"start: {start!r} is a {genotype.kind!r} genotype; a search starts from a per-cell "
                         f"genotype such as {', '.join(HANDCRAFTED)}")
    types = genotype.types if genotype.types is not None else tuple(range(len(genotype.cells)))
    for i, t in enumerate(types):
        first = types.index(t)
        if canonical_cell(genotype.cells[i]) != canonical_cell(genotype.cells[first]):
            raise ValueError(f"start: cells {first} and {i} have type {t} but differ")
    return CellsGenotype(genotype.cells, genotype.reductions, tuple(types))


def start_layout(space: CellSpace, start: str) -> CellLayout:
    """The layout of a handcrafted network: its cells, types and reductions; every edge of a
    type's search cell offers all the ops of ``space``; a type keeps its number of nodes."""
    genotype = start_genotype(start)
    ops = space.normal[0]
    steps = tuple(cell.n_nodes for cell in genotype.cells)
    primitives = tuple(tuple(ops for _ in edge_list(s)) for s in steps)
    n_types = max(genotype.types) + 1
    return CellLayout(primitives, steps, tuple(genotype.reductions), tuple(genotype.types),
                      tuple(f"type_{t}" for t in range(n_types)), genotype)


class CellSupernet(nn.Module):
    """The supernet of a :class:`CellLayout` whose cells share alphas by ``cell_group``.

    ``forward(x, group_weights)``: one ``[n_edges, n_ops]`` tensor per group."""

    def __init__(self, layout: CellLayout, cell_group: Sequence[int], group_names: Sequence[str], *, C: int,
                 num_classes: int, in_channels: int, input_size: int, stem_multiplier: int, multiplier: int,
                 node_bn: bool = False):
        super().__init__()
        self.layout, self.cell_group, self.multiplier = layout, tuple(cell_group), multiplier
        if len(self.cell_group) != layout.layers:
            raise ValueError(f"grouping: expected a group for each of the {layout.layers} cells")
        if layout.start is None:
            self.network: SearchNetwork = SearchNetwork(
                list(layout.primitives), C=C, num_classes=num_classes, layers=layout.layers, steps=layout.steps[0],
                multiplier=multiplier, stem_multiplier=stem_multiplier, in_channels=in_channels,
                input_size=input_size, reductions=layout.reductions, node_bn=node_bn)
        else:
            if node_bn:
                raise ValueError("node_bn: not available for a supernet started from a handcrafted network")
            self.network = TypedSearchNetwork(list(layout.primitives), list(layout.steps), C=C,
                                              num_classes=num_classes, in_channels=in_channels,
                                              input_size=input_size, stem_multiplier=stem_multiplier,
                                              reductions=layout.reductions)
        self.groups = [self._group(g, name) for g, name in enumerate(group_names)]

    def _group(self, g: int, name: str) -> AlphaGroup:
        cells = self.cells_of(g)
        # a group no cell uses (a supernet of reduction cells only) keeps the type's own layout
        first = cells[0] if cells else self.layout.types.index(g) if g in self.layout.types else 0
        for i in cells[1:]:
            if (self.layout.primitives[i], self.layout.steps[i]) != (self.layout.primitives[first],
                                                                      self.layout.steps[first]):
                raise ValueError(f"grouping: cells {first} and {i} share alphas but have different ops or nodes")
        return AlphaGroup(name, tuple(edge_list(self.layout.steps[first])), self.layout.primitives[first])

    def cells_of(self, group: int) -> list[int]:
        return [i for i, g in enumerate(self.cell_group) if g == group]

    def forward(self, x: torch.Tensor, group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.network(x, [group_weights[g] for g in self.cell_group])

    # ------------------------------------------------------------------ op masks (CRB)
    def active_ops(self) -> list[list[list[int]]]:
        """Indices of the ops each mixed edge evaluates, per cell."""
        return [[list(m.active) for m in cell.mixed] for cell in self.network.cells]

    def set_active_ops(self, masks: Sequence[Sequence[Sequence[int]]]) -> None:
        for cell, cell_masks in zip(self.network.cells, masks, strict=True):
            for mixed, active in zip(cell.mixed, cell_masks, strict=True):
                mixed.active = tuple(active)

    def mask_group(self, group: int, keep: torch.Tensor) -> None:
        """Remove, in every cell of ``group``, the ops where ``keep[row, op]`` is False (for good)."""
        keep = keep.cpu()
        for i in self.cells_of(group):
            for e, mixed in enumerate(self.network.cells[i].mixed):
                mixed.active = tuple(k for k in mixed.active if bool(keep[e, k]))

    def group_active(self, group: int) -> torch.Tensor:
        """``[rows, ops]`` bool: the ops still evaluated in the cells of ``group``."""
        shape = (len(self.groups[group].rows), max(len(p) for p in self.groups[group].primitives))
        out = torch.zeros(shape, dtype=torch.bool)
        cells = self.cells_of(group)
        if cells:
            for e, mixed in enumerate(self.network.cells[cells[0]].mixed):
                out[e, list(mixed.active)] = True
        return out

    def set_skip_zero_weights(self, skip: bool) -> None:
        """Skip, in every mixed op, the ops whose weight is exactly 0 in a forward (GDAS)."""
        from dartboard.spaces.cells import MixedOp

        for m in self.modules():
            if isinstance(m, MixedOp):
                m.skip_zero_weights = bool(skip)

    # ------------------------------------------------------------------ genotypes
    def genotype(self, cells: Sequence[CellGenotype]) -> Genotype:
        """The genotype of one discrete cell per group."""
        from dartboard.spaces.handcrafted import canonical_cell

        layout = self.layout
        if layout.start is not None:
            cells = [canonical_cell(CellGenotype(c.edges, tuple(range(2, 2 + self.layout.steps[self.cells_of(g)[0]]))))
                     if self.cells_of(g) else c for g, c in enumerate(cells)]
            return CellsGenotype(tuple(cells[g] for g in self.cell_group), layout.reductions, layout.types)
        # a cell's output is its last `multiplier` nodes (DARTS' concat = range(2 + steps - multiplier, steps + 2))
        cells = [CellGenotype(c.edges, c.concat[-self.multiplier:], c.n_inputs) for c in cells]
        if len(cells) == 2 and self.cell_group == layout.types:
            return DartsGenotype(normal=cells[0], reduce=cells[1])
        return CellsGenotype(tuple(cells[g] for g in self.cell_group), layout.reductions)
