"""DARTOpti (thesis 4.1.4, 4.2.4): D-DARTS started from a handcrafted network of S_o.

- the start (``resnet18``, ``resnet50``, ``xception``) fixes the cells, their types and the
  reductions; each cell type keeps its own number of intermediate nodes;
- alphas are 10 on the encoded ops (sigmoid ~ 1) and 0 elsewhere (sigmoid 0.5), so
  :meth:`DartOptiSearcher.derive` before any step is the handcrafted network itself;
- cells of one type share their alphas and their optimizer (thesis 4.1.4 (ii)); the
  ablation of L_T deactivates a whole type;
- ``warmup_epochs`` (5) train the weights only (thesis 4.1.4 (iii));
- every epoch logs the distance M (thesis Eq 4.8) to the start and to the previous epoch's
  architecture, and stops the search once the latter stays under ``stop_tolerance`` for
  ``stop_patience`` epochs, checked from epoch ``stop_min_epoch`` (thesis 4.2.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dartboard.searchers.ddarts import DDartsConfig, DDartsSearcher, ddarts_config
from dartboard.searchers.registry import DataShape, dataclass_options, register_searcher
from dartboard.spaces.cells import SearchCell, edge_list
from dartboard.spaces.distance import architecture_distance
from dartboard.spaces.genotype import CellGenotype, CellsGenotype, from_dict, resolve, to_dict
from dartboard.spaces.handcrafted import HANDCRAFTED, canonical_cell
from dartboard.spaces.networks import SearchNetwork, _Skeleton

ALPHA_ENCODED = 10.0  # thesis 4.1.4 / ALGORITHMS.md: alpha = 10 on the encoded ops (sigmoid ~ 1), 0 elsewhere
WARMUP_EPOCHS = 5  # thesis 4.1.4 (iii): 5 warm-up epochs train the weights only
STOP_TOLERANCE = 1e-3  # thesis 4.2.4: M between consecutive architectures "stable" ...
STOP_PATIENCE = 5  # ... for 5 consecutive epochs ...
STOP_MIN_EPOCH = 10  # ... checked from epoch 10, warm-up included
SEARCH_CHANNELS = 32  # thesis 4.2.1: 32 initial channels while searching from a handcrafted network


@dataclass
class DartOptiConfig(DDartsConfig):
    space: str = "s_o"
    start: str = "resnet18"  # a catalog name or a genotype file of kind "cells"
    C: int = SEARCH_CHANNELS
    layers: int | None = None  # None: the number of cells of the start
    warmup_epochs: int = WARMUP_EPOCHS
    discretizer: str = "edge"  # thesis 4.2.1: edge (<= 2 ops per edge) or sparse, sigma_t = 0.85
    alpha_encoded: float = ALPHA_ENCODED
    early_stop: bool = True
    stop_tolerance: float = STOP_TOLERANCE
    stop_patience: int = STOP_PATIENCE
    stop_min_epoch: int = STOP_MIN_EPOCH

    def __post_init__(self) -> None:
        start = start_genotype(self.start)
        if self.layers is None:
            self.layers = len(start.cells)
        elif self.layers != len(start.cells):
            raise ValueError(f"layers: the start {self.start!r} has {len(start.cells)} cells, got layers={self.layers}")
        super().__post_init__()
        if self.stop_patience < 1:
            raise ValueError(f"stop_patience: expected >= 1, got {self.stop_patience}")


def start_genotype(start: str) -> CellsGenotype:
    """The handcrafted start: a per-cell genotype with cell types (catalog name or file)."""
    genotype = resolve(start)
    if not isinstance(genotype, CellsGenotype):
        raise ValueError(f"start: {start!r} is a {genotype.kind!r} genotype; DARTOpti starts from a per-cell "
                         f"genotype such as {', '.join(HANDCRAFTED)}")
    types = genotype.types if genotype.types is not None else tuple(range(len(genotype.cells)))
    for i, t in enumerate(types):
        first = types.index(t)
        if canonical_cell(genotype.cells[i]) != canonical_cell(genotype.cells[first]):
            raise ValueError(f"start: cells {first} and {i} have type {t} but differ")
    return CellsGenotype(genotype.cells, genotype.reductions, tuple(types))


def cell_steps(cell: CellGenotype) -> int:
    """Number of intermediate nodes of a cell (its search cell has as many)."""
    return cell.n_nodes


class TypedSearchNetwork(SearchNetwork):
    """A supernet whose cells may have different numbers of intermediate nodes (one per cell
    type); each search cell concatenates all its nodes, like the handcrafted cells."""

    def __init__(self, edge_primitives: Sequence[Sequence[Sequence[str]]], cell_steps: Sequence[int], *, C: int,
                 num_classes: int, in_channels: int, input_size: int, stem_multiplier: int,
                 reductions: Sequence[int]):
        _Skeleton.__init__(self)  # the cells differ from SearchNetwork's: build them here
        layers = len(cell_steps)
        self._init_skeleton(C, num_classes, layers, in_channels, input_size, stem_multiplier, reductions)
        self.steps, self.multiplier = max(cell_steps), max(cell_steps)
        self.edges = edge_list(self.steps)
        C_pp, C_p, reduction_prev = self._first_channels()
        C_curr = C
        cells = []
        for i, (prims, steps) in enumerate(zip(edge_primitives, cell_steps, strict=False)):
            reduction = i in self.reductions
            if reduction:
                C_curr *= 2
            cells.append(SearchCell(prims, steps, steps, C_pp, C_p, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_pp, C_p = C_p, steps * C_curr
        self.cells = torch.nn.ModuleList(cells)
        self.classifier = torch.nn.Linear(C_p, num_classes)


class DartOptiSearcher(DDartsSearcher):
    name = "dartopti"
    config: DartOptiConfig

    def __init__(self, config: DartOptiConfig):
        self.start = start_genotype(config.start)
        n_types = max(self.start.types) + 1
        self.type_cells = [self.start.cells[self.start.types.index(t)] for t in range(n_types)]
        self.type_steps = [cell_steps(c) for c in self.type_cells]
        super().__init__(config)
        with torch.no_grad():
            for t, alpha in enumerate(self.arch.alphas):
                alpha.copy_(self.encoded_alphas(t))
        self.previous: CellsGenotype | None = None
        self.flat_epochs = 0

    # ------------------------------------------------------------------ construction
    def type_primitives(self, t: int) -> tuple[tuple[str, ...], ...]:
        ops = self.space.normal[0]
        return tuple(ops for _ in edge_list(self.type_steps[t]))

    def build_network(self) -> TypedSearchNetwork:
        c = self.config
        self.reductions = tuple(self.start.reductions)
        types = self.start.types
        return TypedSearchNetwork([self.type_primitives(t) for t in types], [self.type_steps[t] for t in types],
                                  C=c.C, num_classes=c.num_classes, in_channels=c.in_channels,
                                  input_size=c.input_size, stem_multiplier=c.stem_multiplier,
                                  reductions=self.reductions)

    def cell_groups(self) -> tuple[list[tuple[tuple[str, ...], ...]], list[int]]:
        """One group per cell type: cells of one type share alphas and optimizer (thesis 4.1.4 (ii))."""
        return [self.type_primitives(t) for t in range(len(self.type_cells))], list(self.start.types)

    def encoded_alphas(self, t: int) -> torch.Tensor:
        """alpha_encoded on the ops the handcrafted cell type uses, 0 elsewhere."""
        edges = edge_list(self.type_steps[t])
        ops = list(self.space.normal[0])
        alpha = torch.zeros(len(edges), len(ops))
        for e in self.type_cells[t].edges:
            if e.op not in ops:
                raise ValueError(f"start: op {e.op!r} is not in space {self.space.name!r}")
            alpha[edges.index((e.src, e.dst)), ops.index(e.op)] = self.config.alpha_encoded
        return alpha

    def group_rows(self, group: int) -> tuple:
        return tuple(edge_list(self.type_steps[group]))

    def group_names(self) -> list[str]:
        return [f"type_{t}" for t in range(len(self.type_cells))]

    # ------------------------------------------------------------------ derivation
    def derive_group(self, group: int, weights: torch.Tensor) -> CellGenotype:
        steps = self.type_steps[group]
        cell = self.discretize(weights, edge_list(steps), self.group_primitives[group],
                               **self.config.discretizer_options)
        return canonical_cell(CellGenotype(cell.edges, tuple(range(2, 2 + steps))))

    def derive(self) -> CellsGenotype:
        with torch.no_grad():
            gw = self.group_weights()
        cells = [self.derive_group(t, w) for t, w in enumerate(gw)]
        return CellsGenotype(tuple(cells[t] for t in self.start.types), tuple(self.reductions), self.start.types)

    # ------------------------------------------------------------------ distance and early stop
    def extra_epoch_metrics(self) -> dict[str, float]:
        c = self.config
        current = self.derive()
        metrics = {"distance_to_start": architecture_distance(current, self.start)}
        if self.previous is not None:
            step = architecture_distance(current, self.previous)
            metrics["distance_step"] = step
            searching = self.epoch > c.warmup_epochs  # warm-up epochs cannot move the architecture
            self.flat_epochs = self.flat_epochs + 1 if searching and step < c.stop_tolerance else 0
        self.previous = current
        if c.early_stop and self.epoch >= c.stop_min_epoch and self.flat_epochs >= c.stop_patience:
            self.stop_requested = True
        metrics["flat_epochs"] = float(self.flat_epochs)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["distance"] = {"previous": None if self.previous is None else to_dict(self.previous),
                             "flat_epochs": self.flat_epochs, "stop_requested": self.stop_requested}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        d = state["distance"]
        self.previous = None if d["previous"] is None else from_dict(d["previous"])
        self.flat_epochs, self.stop_requested = d["flat_epochs"], d["stop_requested"]


@register_searcher("dartopti", "DARTOpti (thesis 4.1.4): D-DARTS in S_o started from a handcrafted network "
                   "(start=resnet18|resnet50|xception)", options=dataclass_options(DartOptiConfig),
                   small_data_defaults={"C": 8, "epochs": 10})  # the cell count comes from the start
def build_dartopti(options: dict[str, Any], shape: DataShape, device: str) -> DartOptiSearcher:
    return DartOptiSearcher(ddarts_config(DartOptiConfig, options, shape, device))
