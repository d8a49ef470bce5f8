"""The Searcher protocol, and the pieces every searcher of the DARTS family shares.

The platform drives any searcher through this protocol only (DESIGN.md, data flow):
``step`` per pair of batches, ``end_epoch`` once per epoch, ``derive`` for the
architecture, ``state_dict``/``load_state_dict`` for exact checkpoints and ``metrics``.
Searchers never import ray or mlflow.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dartboard.searchers.protocol import Batch, Searcher  # noqa: F401  (re-exported)


def seed_everything(seed: int) -> None:
    """One seed per run for python, numpy and torch (DESIGN.md, rules of the house)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ArchParameters(nn.Module):
    """Architecture parameters: one alpha tensor ``[n_edges, n_ops]`` per group of cells.

    ``cell_group[i]`` names the group whose alphas cell ``i`` uses: DARTS has two
    groups (normal, reduce), D-DARTS one per cell, DARTOpti one per cell type.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], cell_group: Sequence[int],
                 init: Callable[[tuple[int, int]], torch.Tensor]):
        super().__init__()
        if max(cell_group) >= len(shapes) or min(cell_group) < 0:
            raise ValueError(f"cell_group {list(cell_group)} names a group outside 0..{len(shapes) - 1}")
        self.alphas = nn.ParameterList(nn.Parameter(init(shape)) for shape in shapes)
        self.cell_group = tuple(cell_group)

    def __len__(self) -> int:
        return len(self.alphas)

    def group_weights(self, activation: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        return [activation(a) for a in self.alphas]

    def cell_weights(self, group_weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [group_weights[g] for g in self.cell_group]

    def cells_of(self, group: int) -> list[int]:
        return [i for i, g in enumerate(self.cell_group) if g == group]


class EpochMeter:
    """Running sums kept as device tensors, read once per epoch (no sync inside a step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor | float] = {}

    def add(self, name: str, value: torch.Tensor, count: torch.Tensor | float = 1.0) -> None:
        value = value.detach().float()
        if name in self.sums:
            self.sums[name] = self.sums[name] + value
            self.counts[name] = self.counts[name] + count
        else:
            self.sums[name], self.counts[name] = value, count

    def read(self) -> dict[str, float]:
        out = {k: float(v) / max(float(self.counts[k]), 1e-12) for k, v in self.sums.items()}
        self.sums.clear()
        self.counts.clear()
        return out


def accuracy_count(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == targets).sum()


def to_device(batch: Batch, device: torch.device) -> Batch:
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
