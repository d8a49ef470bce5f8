"""Architecture optimizers: Adam or SGD over all alphas or one per group (D-DARTS, thesis
Algorithm 1), with a constant or cosine-annealed learning rate. The base learning rate,
betas and weight decay are the config's ``arch_lr``, ``arch_betas``, ``arch_weight_decay``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from dartboard.searchers.parts import PartRegistry
from dartboard.searchers.parts.base import Part

ARCH_OPTIMIZERS = PartRegistry("arch_optimizer")
LR_SCHEDULES = ("constant", "cosine")


class ArchOptimizer:
    """The built optimizers and their schedulers; ``step`` goes through the arch scaler."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], schedulers: list[Any]):
        self.optimizers, self.schedulers = optimizers, schedulers

    def step(self, scaler: torch.amp.GradScaler) -> None:
        for opt in self.optimizers:
            scaler.step(opt)
        scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def end_epoch(self, searching: bool) -> None:
        """The alpha lr anneals over the search epochs only (not the warm-up)."""
        if searching:
            for s in self.schedulers:
                s.step()

    @property
    def lr(self) -> float:
        return float(self.optimizers[0].param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)
        for sched, s in zip(self.schedulers, state["schedulers"], strict=True):
            sched.load_state_dict(s)


class _ArchOptimizerPart(Part, ABC):
    def __init__(self, per_group: bool = False, lr_schedule: str = "constant", lr_min: float = 0.0):
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: expected one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.per_group, self.lr_schedule, self.lr_min = bool(per_group), lr_schedule, float(lr_min)

    @abstractmethod
    def make(self, params: list[torch.Tensor], config: Any) -> torch.optim.Optimizer:
        """One optimizer over ``params``."""

    def build(self, alphas: list[torch.Tensor], config: Any) -> ArchOptimizer:
        optimizers = ([self.make([a], config) for a in alphas] if self.per_group else [self.make(alphas, config)])
        schedulers = []
        if self.lr_schedule == "cosine":
            steps = max(1, config.epochs - config.warmup_epochs)
            schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, steps, eta_min=self.lr_min)
                          for o in optimizers]
        return ArchOptimizer(optimizers, schedulers)


@ARCH_OPTIMIZERS.register("adam")
class Adam(_ArchOptimizerPart):
    """DARTS: Adam(lr 3e-4, betas (0.5, 0.999), wd 1e-3). Fused: the default Adam reads its
    step counter with .item() (a host sync per step)."""

    def make(self, params, config):
        return torch.optim.Adam(params, lr=config.arch_lr, betas=config.arch_betas,
                                weight_decay=config.arch_weight_decay, fused=True)


@ARCH_OPTIMIZERS.register("sgd")
class Sgd(_ArchOptimizerPart):
    """Plain (projected) gradient descent on the alphas."""

    def make(self, params, config):
        return torch.optim.SGD(params, lr=config.arch_lr, weight_decay=config.arch_weight_decay)
