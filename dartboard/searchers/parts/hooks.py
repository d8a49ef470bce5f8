"""Epoch hooks: ``end_epoch(ctx) -> metrics`` after every epoch, with state. R-DARTS's
curvature hook is in :mod:`dartboard.searchers.parts.rdarts`; DARTOpti's distance stop here."""

from __future__ import annotations

from typing import Any

from dartboard.searchers.parts import PartRegistry
from dartboard.searchers.parts.base import Part
from dartboard.spaces.distance import architecture_distance
from dartboard.spaces.genotype import from_dict, to_dict

HOOKS = PartRegistry("hook")

STOP_TOLERANCE = 1e-3  # thesis 4.2.4: M between consecutive architectures "stable" ...
STOP_PATIENCE = 5  # ... for 5 consecutive epochs ...
STOP_MIN_EPOCH = 10  # ... checked from epoch 10, warm-up included


@HOOKS.register("distance_stop")
class DistanceStop(Part):
    """DARTOpti (thesis 4.2.4): log the distance M (thesis Eq 4.8) of the derived architecture to
    the start and to the previous epoch's; stop once the latter stays under ``tolerance`` for
    ``patience`` epochs, checked from epoch ``min_epoch`` (``stop``: False logs only)."""

    def __init__(self, tolerance: float = STOP_TOLERANCE, patience: int = STOP_PATIENCE,
                 min_epoch: int = STOP_MIN_EPOCH, stop: bool = True):
        if int(patience) < 1:
            raise ValueError(f"stop_patience: expected >= 1, got {patience}")
        self.tolerance, self.patience, self.min_epoch, self.stop = float(tolerance), int(patience), int(min_epoch), stop
        self.previous: Any = None
        self.flat_epochs = 0

    def end_epoch(self, ctx: Any) -> dict[str, float]:
        current = ctx.derive()
        metrics = {}
        if ctx.start is not None:
            metrics["distance_to_start"] = architecture_distance(current, ctx.start)
        if self.previous is not None:
            step = architecture_distance(current, self.previous)
            metrics["distance_step"] = step
            searching = ctx.epoch > ctx.warmup_epochs  # warm-up epochs cannot move the architecture
            self.flat_epochs = self.flat_epochs + 1 if searching and step < self.tolerance else 0
        self.previous = current
        if self.stop and ctx.epoch >= self.min_epoch and self.flat_epochs >= self.patience:
            ctx.request_stop()
        metrics["flat_epochs"] = float(self.flat_epochs)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"previous": None if self.previous is None else to_dict(self.previous), "flat_epochs": self.flat_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = None if state["previous"] is None else from_dict(state["previous"])
        self.flat_epochs = state["flat_epochs"]
