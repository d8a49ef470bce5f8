"""Small pieces every search shares: one seed per run, RNG snapshots for exact resumes,
an epoch meter that never synchronises inside a step, batches to the device.
(The Searcher protocol itself is in :mod:`dartboard.searchers.protocol`.)"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

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


def to_device(batch: Batch, device: torch.device) -> Batch:
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def mixing_entropy(group_weights: list[torch.Tensor]) -> float:
    """Mean normalised entropy of the mixing weights' rows (1: uniform over a row's ops, 0: one op):
    each row ``w`` is read as the distribution ``w / sum(w)`` and its entropy divided by ``log(#ops)``.
    Rows with fewer than two ops or no weight are left out."""
    values = []
    for w in group_weights:
        w = w.detach().float().clamp_min(0.0)
        if w.shape[-1] < 2:
            continue
        total = w.sum(dim=-1, keepdim=True)
        keep = total.squeeze(-1) > 0
        p = w[keep] / total[keep]
        h = -(p * p.clamp_min(1e-30).log()).sum(dim=-1) / torch.log(torch.tensor(float(w.shape[-1])))
        values.append(h)
    return float(torch.cat(values).mean()) if values else float("nan")
