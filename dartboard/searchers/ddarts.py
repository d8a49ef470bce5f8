"""D-DARTS (thesis ch. 4, Algorithm 1): one set of alphas, one optimizer and one scheduler per
cell, sigmoid mixing, and the per-cell total loss

    L_T^i = L_CE + w01 * L01^i + wAB * L_AB^i                                  (thesis Eq 4.5)

with the ablation loss ``L_AB^i = (M_C^i - mean M_C) / mean M_C`` (Eq 4.3) on the marginal
contributions ``M_C^i = L_CE(C) - L_CE(C \\ C_i)`` (Eq 4.2).

How cell ``i`` only receives the gradient of its own L_T^i, from ONE backward of L_CE:
alpha_i enters L_T^i through L_CE(C) (in L_CE and in every M_C^j), through L01^i (local) and,
in mode ``full``, through the ablated losses L_CE(C \\ C_j), j != i. With g_i = dL_CE/dalpha_i,
m = mean M_C and h_i = sum_j dL_CE(C \\ C_j)/dalpha_i:

    dL_AB^i/dalpha_i = g_i (m - M_C^i) / m^2              (ablated passes held constant: ``active``)
                     + h_i M_C^i / (n m^2)                 (through the ablated passes: ``full``)

so ``active`` runs the n ablated forwards under ``torch.no_grad()`` and costs no more
activation memory than L_F (the thesis reports +100%), and ``full`` back-propagates the
ablated passes one at a time. ``none`` reproduces the reference code (L_AB taken with
``.item()``: no gradient; ALGORITHMS.md, D-DARTS).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dartboard.searchers.base import accuracy_count
from dartboard.searchers.darts import BilevelSearcher, DartsConfig
from dartboard.searchers.registry import DataShape, dataclass_options, register_searcher

DEACTIVATIONS = ("uniform", "reference")
ABLATION_GRADS = ("none", "active", "full")
#: Mixing weight of every op of a deactivated cell in mode ``uniform``: the mean of the
#: reference's U[0, 1) draw, i.e. sigmoid(0), the state every cell starts from.
UNIFORM_WEIGHT = 0.5


@dataclass
class DDartsConfig(DartsConfig):
    """D-DARTS hyperparameters; the DARTS defaults apply where the thesis is silent."""

    space: str = "darts-none"  # FairDARTS space: the DARTS ops without `none`
    activation: str = "sigmoid"
    alpha_init_constant: float | None = 0.0  # FairDARTS / D-DARTS: alphas start at 0
    arch_lr: float = 3e-3  # reference: Adam lr 3e-3, betas (0.9, 0.999), wd 1e-3, per cell
    arch_betas: tuple[float, float] = (0.9, 0.999)
    arch_weight_decay: float = 1e-3
    arch_lr_min: float = 0.0  # cosine annealing of each cell's alpha lr, down to this
    discretizer: str = "sparse"  # thesis Algorithm 1: <= 1 op per edge above sigma_t = 0.85
    w01: float = 7.0  # thesis 4.2.2 (4.2.1 says 8; the analysis of Fig 4.4 picks 7)
    w_ab: float = 0.5  # thesis 4.2.2, Fig 4.3
    ablation: bool = True  # False: L_F per cell (L_CE + w01 * L01^i), no ablated passes
    deactivation: str = "uniform"  # uniform | reference (seeded U[0, 1) mixing weights)
    ablation_grad: str = "active"  # none (reference) | active | full
    seed: int = 0  # seeds the `reference` deactivation draws

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order != 1:
            raise ValueError(f"order: D-DARTS is first order (Algorithm 1), got {self.order}")
        if self.deactivation not in DEACTIVATIONS:
            raise ValueError(f"deactivation: expected one of {', '.join(DEACTIVATIONS)}, got {self.deactivation!r}")
        if self.ablation_grad not in ABLATION_GRADS:
            raise ValueError(f"ablation_grad: expected one of {', '.join(ABLATION_GRADS)}, "
                             f"got {self.ablation_grad!r}")


def marginal_contributions(loss_all: torch.Tensor, losses_without: torch.Tensor) -> torch.Tensor:
    """Thesis Eq 4.2: M_C^i = L_CE(C) - L_CE(C \\ {C_i}) for every cell i."""
    return loss_all - losses_without


def ablation_loss(m: torch.Tensor) -> torch.Tensor:
    """Thesis Eq 4.3: L_AB^i = (M_C^i - mean M_C) / mean M_C, and 0 where mean M_C = 0."""
    mean = m.mean()
    nonzero = mean != 0
    safe = torch.where(nonzero, mean, torch.ones_like(mean))
    return torch.where(nonzero, (m - mean) / safe, torch.zeros_like(m))


def _ablation_coefficients(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL_AB^i/dL_CE(C), dL_AB^i/d sum_j L_CE(C \\ C_j)) for every i: (m - M^i)/m^2 and
    M^i/(n m^2), 0 where mean M_C = 0 (where Eq 4.3 is constant)."""
    mean = m.mean()
    nonzero = mean != 0
    sq = torch.where(nonzero, mean * mean, torch.ones_like(mean))
    zero = torch.zeros_like(m)
    through_all = torch.where(nonzero, (mean - m) / sq, zero)
    through_ablated = torch.where(nonzero, m / (m.numel() * sq), zero)
    return through_all, through_ablated


def zero_one_losses(alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """L01^i of every group of alphas (FairDARTS zero-one loss, thesis Eq 3.1)."""
    from dartboard.searchers.regularizers import zero_one_loss

    return torch.stack([zero_one_loss(a) for a in alphas])


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Batch norms keep normalising with batch statistics but leave their running statistics
    unchanged (momentum 0): the ablated passes must not pollute them."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=False):
            m.momentum = momentum


class DDartsSearcher(BilevelSearcher):
    """D-DARTS: every group of alphas (here: every cell) has its own optimizer, scheduler and
    loss L_T^i; the ablation deactivates one group at a time."""

    name = "ddarts"
    config: DDartsConfig

    def __init__(self, config: DDartsConfig, *, space=None):
        super().__init__(config, space=space)
        steps = max(1, config.epochs - config.warmup_epochs)
        self.arch_schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=config.arch_lr_min)
                                for opt in self.arch_optimizers]
        self.deactivation_generator = torch.Generator().manual_seed(config.seed)

    def cell_groups(self) -> tuple[list[tuple[tuple[str, ...], ...]], list[int]]:
        """One group per cell (thesis 4.1.1); cells keep their normal/reduction op lists."""
        layers = self.config.layers
        return [self.space.primitives(i in self.reductions) for i in range(layers)], list(range(layers))

    def group_names(self) -> list[str]:
        return [f"cell_{i}" for i in range(self.config.layers)]

    def build_arch_optimizers(self) -> list[torch.optim.Optimizer]:
        c = self.config
        return [torch.optim.Adam([a], lr=c.arch_lr, betas=c.arch_betas, weight_decay=c.arch_weight_decay)
                for a in self.arch.parameters()]

    # ------------------------------------------------------------------ ablation
    def deactivated_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Mixing weights of a deactivated group (the paper leaves "deactivate" open)."""
        if self.config.deactivation == "reference":
            draw = torch.rand(weights.shape, generator=self.deactivation_generator)
            return draw.to(device=weights.device, dtype=weights.dtype)
        return torch.full_like(weights, UNIFORM_WEIGHT)

    def ablated_logits(self, x: torch.Tensor, group_weights: Sequence[torch.Tensor], group: int) -> torch.Tensor:
        """Logits of the supernet with every cell of ``group`` deactivated (C \\ C_i)."""
        gw = list(group_weights)
        gw[group] = self.deactivated_weights(gw[group].detach())
        with frozen_batchnorm_stats(self.network):
            return self.logits(x, self.arch.cell_weights(gw))

    def per_group_losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Gradients of every group's loss w.r.t. its own alphas (scaled like the arch scaler)."""
        c = self.config
        alphas = list(self.arch.parameters())
        gw = self.group_weights()
        logits = self.logits(x, self.arch.cell_weights(gw))
        ce = self.criterion(logits, y)
        self.meter.add("val_loss", ce.detach() * y.numel(), y.numel())
        self.meter.add("val_acc", accuracy_count(logits, y), y.numel())
        del logits
        g_ce = torch.autograd.grad(self.arch_scaler.scale(ce), alphas, allow_unused=True)
        ce = ce.detach()  # a loss that keeps its grad_fn keeps part of the freed graph alive
        g_ce = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, g_ce, strict=False)]
        l01 = zero_one_losses(alphas)
        g01 = torch.autograd.grad(self.arch_scaler.scale(c.w01 * l01.sum()), alphas)  # L01^i is local to alpha_i
        grads = [a + b for a, b in zip(g_ce, g01, strict=False)]
        info: dict[str, Any] = {"ce": ce, "l01": l01.detach()}
        if not c.ablation:
            return grads, info
        n = len(alphas)
        detached = [w.detach() for w in gw]
        losses_without = []
        h = [torch.zeros_like(a) for a in alphas]
        for g in range(n):
            if c.ablation_grad == "full":  # one ablated graph at a time
                loss_g = self.criterion(self.ablated_logits(x, self.group_weights(), g), y)
                dg = torch.autograd.grad(self.arch_scaler.scale(loss_g), alphas, allow_unused=True)
                h = [hi if d is None else hi + d for hi, d in zip(h, dg, strict=False)]
                losses_without.append(loss_g.detach())
                del loss_g, dg
            else:
                with torch.no_grad():
                    losses_without.append(self.criterion(self.ablated_logits(x, detached, g), y))
        m = marginal_contributions(ce, torch.stack(losses_without))  # Eq 4.2
        info["m"] = m
        info["l_ab"] = ablation_loss(m)  # Eq 4.3
        if c.ablation_grad == "none":
            return grads, info
        through_all, through_ablated = _ablation_coefficients(m)
        for i in range(n):
            grads[i] = grads[i] + c.w_ab * through_all[i] * g_ce[i]
            if c.ablation_grad == "full":
                grads[i] = grads[i] + c.w_ab * through_ablated[i] * h[i]
        return grads, info

    def arch_step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
                  ) -> None:
        """Algorithm 1, inner loop: every cell's optimizer steps on its own L_T^i."""
        grads, info = self.per_group_losses(x_val, y_val)
        self.meter.add("l01", info["l01"].mean())
        if "m" in info:
            self.meter.add("marginal_mean", info["m"].mean())
            self.meter.add("ablation_abs", info["l_ab"].abs().mean())
        self.apply_arch_grads(grads)

    # ------------------------------------------------------------------ epochs / checkpoints
    def end_epoch(self) -> dict[str, float]:
        if self.epoch >= self.config.warmup_epochs:  # the alpha lr anneals over the search epochs only
            for scheduler in self.arch_schedulers:
                scheduler.step()
        metrics = super().end_epoch()
        metrics["arch_lr"] = self.arch_optimizers[0].param_groups[0]["lr"]
        self._metrics = metrics
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["arch_schedulers"] = [s.state_dict() for s in self.arch_schedulers]
        state["deactivation_generator"] = self.deactivation_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for scheduler, s in zip(self.arch_schedulers, state["arch_schedulers"], strict=False):
            scheduler.load_state_dict(s)
        self.deactivation_generator.set_state(state["deactivation_generator"])


def ddarts_config(cls: type[DDartsConfig], options: dict[str, Any], shape: DataShape, device: str) -> DDartsConfig:
    opts = dict(options)
    if "arch_betas" in opts:
        opts["arch_betas"] = tuple(opts["arch_betas"])
    return cls(**opts, num_classes=shape.num_classes, in_channels=shape.in_channels, input_size=shape.input_size,
               device=device)


@register_searcher("ddarts", "D-DARTS (thesis ch. 4): per-cell alphas and optimizers, L_T = L_CE + w01 L01 + "
                   "wAB L_AB (ablation loss)", options=dataclass_options(DDartsConfig))
def build_ddarts(options: dict[str, Any], shape: DataShape, device: str) -> DDartsSearcher:
    return DDartsSearcher(ddarts_config(DDartsConfig, options, shape, device))


@register_searcher("ddarts-lf", "D-DARTS with the FairDARTS loss per cell (L_F = L_CE + w01 L01^i, no ablation)",
                   options=dataclass_options(DDartsConfig), defaults={"ablation": False})
def build_ddarts_lf(options: dict[str, Any], shape: DataShape, device: str) -> DDartsSearcher:
    return DDartsSearcher(ddarts_config(DDartsConfig, options, shape, device))
