"""Regularizers of the alpha step: terms added to L_val, each a small swappable part.

A regularizer has ``loss(ctx, group_weights) -> Tensor`` (added to the validation loss of
the alpha step), ``after_arch_step(ctx)``, state and ``metrics(ctx)``. A regularizer with
``needs_val_grad`` also adds a per-group gradient term that needs the gradient of L_val
alone (D-DARTS's L_AB, :mod:`dartboard.searchers.parts.ablation`). The pure formulas are
module-level functions, tested against hand-computed values.

``on="alphas"`` (the papers' symbols) applies a term to the raw architecture parameters;
``on="weights"`` to the activated mixing weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dartboard.searchers.base import EpochMeter
from dartboard.searchers.discretize import genotype_mask
from dartboard.searchers.parts import PartRegistry, number
from dartboard.searchers.parts.base import Part

REGULARIZERS = PartRegistry("regularizer")

# Published constants (named defaults; a sweep may vary them).
W01_FAIRDARTS = 10.0  # FairDARTS: w01 = 10 (ALGORITHMS.md FairDARTS)
RHO_PROXIMITY = 0.1  # Maile et al. 4.1: rho_p = 0.1
RHO_ADMM = 0.1  # Maile et al. 4.1: rho_a = 0.1
LAMBDA_U_ADMM = 0.8  # Maile et al. 4.1: u decay lambda_u = 0.8
ADMM_PERIOD = 10  # Maile et al. 4.1: z and u updated after every 10 alpha steps
# beta-DARTS (Ye et al. 2022), reference code (Sunshine-Ye/Beta-DARTS, optimizers/darts/architect.py):
# lambda(epoch) = 0 + 50 * epoch / 100, i.e. a linear ramp reaching 50 after 100 epochs.
BETA_MAX_WEIGHT = 50.0
BETA_RAMP_EPOCHS = 100
SPARSE_L1_WEIGHT = 0.01  # Ito's abstract fixes no lambda: dartboard's choice


def _flat(tensors: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(tensors, torch.Tensor):
        return tensors.reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


# ----------------------------------------------------------------------------- formulas
def zero_one_loss(alphas: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """FairDARTS zero-one loss (thesis Eq 3.1): L01 = -(1/N) sum_i (sigmoid(alpha_i) - 0.5)^2,
    on the pre-sigmoid alphas, N = number of alphas."""
    return -(torch.sigmoid(_flat(alphas)) - 0.5).pow(2).mean()


def l1_loss(alphas: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Sparse DARTS: ||alpha||_1 = sum_i |alpha_i|. On the exact simplex it is the constant
    n_edges (no gradient along the simplex): use the capped simplex for sparsity."""
    return _flat(alphas).abs().sum()


def proximity_loss(alphas: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], c: float,
                   rho: float = RHO_PROXIMITY) -> torch.Tensor:
    """Maile et al. Eq 6: (c * rho_p / 2) * ||alpha - Pi_S(alpha)||_2 (unsquared 2-norm)."""
    return (c * rho / 2.0) * (_flat(alphas) - _flat(targets).to(_flat(alphas))).norm()


def admm_loss(alphas: Sequence[torch.Tensor], z: Sequence[torch.Tensor], u: Sequence[torch.Tensor],
              rho: float = RHO_ADMM, squared: bool = True) -> torch.Tensor:
    """Maile et al. Eq 7: (rho_a / 2) * ||alpha - z + u||_2^2 (``squared=False``: the
    reference's unsquared norm)."""
    diff = _flat(alphas) - _flat(z) + _flat(u)
    return (rho / 2.0) * (diff.pow(2).sum() if squared else diff.norm())


def beta_decay_loss(alphas: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """beta-DARTS beta-decay (Ye et al. 2022): L_beta = mean over edges of
    log sum_o exp(alpha_o) (the smooth maximum of each edge's pre-softmax alphas)."""
    rows = alphas if isinstance(alphas, torch.Tensor) else torch.cat([a.reshape(-1, a.shape[-1]) for a in alphas])
    return torch.logsumexp(rows, dim=-1).mean()


def discrete_targets(ctx: Any, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Pi_S(values): the one-hot of the search's parse of each group (Maile et al. Eq 1-4)."""
    out = []
    for g, v in enumerate(values):
        group = ctx.groups[g]
        out.append(genotype_mask(ctx.discretize(g, v.detach()), group.rows, group.primitives).to(v))
    return out


# ----------------------------------------------------------------------------- parts
class Regularizer(Part):
    needs_val_grad = False  # True: add_grad_terms gets grad_alpha L_val alone (first order only)

    def loss(self, ctx: Any, group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.zeros((), device=ctx.device)

    def after_arch_step(self, ctx: Any) -> None:
        """After every alpha step (ADMM's z/u updates)."""

    def add_grad_terms(self, ctx: Any, x: torch.Tensor, y: torch.Tensor, val_loss: torch.Tensor,
                       val_grads: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return grads


def _check_on(on: str) -> str:
    if on not in ("alphas", "weights"):
        raise ValueError(f"on: expected 'alphas' or 'weights', got {on!r}")
    return on


def _values(ctx: Any, group_weights: Sequence[torch.Tensor], on: str) -> list[torch.Tensor]:
    return ctx.alphas if on == "alphas" else list(group_weights)


@REGULARIZERS.register("zero_one")
class ZeroOne(Regularizer):
    """w01 * L01 (FairDARTS, thesis Eq 3.2: L_F = L_val + w01 * L01); ``per_group``: the sum of
    every group's own L01^i (D-DARTS, thesis Eq 4.5: each cell's L_T^i has its L01^i)."""

    def __init__(self, weight: float = W01_FAIRDARTS, per_group: bool = False):
        self.weight, self.per_group = number("weight", weight, 0.0), bool(per_group)
        self.meter = EpochMeter()

    def loss(self, ctx, group_weights):
        if self.per_group:
            values = torch.stack([zero_one_loss(a) for a in ctx.alphas])
            self.meter.add("l01", values.detach().mean())
            return self.weight * values.sum()
        value = zero_one_loss(ctx.alphas)
        self.meter.add("l01", value.detach())
        return self.weight * value

    def metrics(self, ctx):
        return self.meter.read()


@REGULARIZERS.register("l1")
class L1(Regularizer):
    """lambda * ||alpha||_1 (sparse DARTS, ALGORITHMS.md)."""

    def __init__(self, weight: float = SPARSE_L1_WEIGHT, on: str = "alphas"):
        self.weight, self.on = number("weight", weight, 0.0), _check_on(on)

    def loss(self, ctx, group_weights):
        return self.weight * l1_loss(_values(ctx, group_weights, self.on))


@REGULARIZERS.register("proximity")
class Proximity(Regularizer):
    """Maile et al. Eq 6 with c = progress of the search (linear 0 -> 1)."""

    def __init__(self, rho: float = RHO_PROXIMITY, on: str = "alphas"):
        self.rho, self.on = number("rho", rho, 0.0), _check_on(on)
        self.last_c = 0.0

    def loss(self, ctx, group_weights):
        values = _values(ctx, group_weights, self.on)
        self.last_c = float(ctx.progress)
        return proximity_loss(values, discrete_targets(ctx, values), self.last_c, self.rho)

    def metrics(self, ctx):
        return {"proximity_c": self.last_c}


@REGULARIZERS.register("admm")
class Admm(Regularizer):
    """Maile et al. Eq 7-11: loss (rho_a/2)||alpha - z + u||^2; every ``period`` alpha steps
    z = Pi_S(alpha + u) (a discrete architecture) and u = lambda_u * u + alpha - z."""

    def __init__(self, rho: float = RHO_ADMM, lambda_u: float = LAMBDA_U_ADMM, period: int = ADMM_PERIOD,
                 squared: bool = True, on: str = "alphas"):
        self.rho, self.lambda_u = number("rho", rho, 0.0), number("lambda_u", lambda_u, 0.0, 1.0)  # u's decay
        self.period, self.squared = number("period", period, 1, integer=True), squared
        self.on = _check_on(on)
        self.z: list[torch.Tensor] | None = None
        self.u: list[torch.Tensor] | None = None
        self.steps = 0
        self.updates = 0

    def _current(self, ctx, group_weights=None):
        if self.on == "alphas":
            return ctx.alphas
        return list(group_weights) if group_weights is not None else ctx.group_weights()

    def _init(self, ctx, values):
        if self.z is None:
            self.z = discrete_targets(ctx, values)  # z^0 = Pi_S(alpha^0), u^0 = 0
            self.u = [torch.zeros_like(v.detach()) for v in values]

    def loss(self, ctx, group_weights):
        values = self._current(ctx, group_weights)
        self._init(ctx, values)
        return admm_loss(values, self.z, self.u, self.rho, self.squared)

    @torch.no_grad()
    def after_arch_step(self, ctx):
        self.steps += 1
        if self.steps % self.period:
            return
        values = [v.detach() for v in self._current(ctx)]
        self._init(ctx, values)
        self.z = discrete_targets(ctx, [v + u for v, u in zip(values, self.u, strict=True)])  # Eq 9
        self.u = [self.lambda_u * u + v - z for u, v, z in zip(self.u, values, self.z, strict=True)]  # Eq 11
        self.updates += 1

    def state_dict(self):
        return {"z": self.z, "u": self.u, "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state):
        self.z, self.u, self.steps, self.updates = state["z"], state["u"], state["steps"], state["updates"]

    def metrics(self, ctx):
        return {"admm_updates": float(self.updates)}


@REGULARIZERS.register("beta_decay")
class BetaDecay(Regularizer):
    """beta-DARTS: lambda(epoch) * L_beta, lambda(epoch) = max_weight * epoch / ramp_epochs
    (reference: 50 * epoch / 100), on the pre-softmax alphas."""

    def __init__(self, max_weight: float = BETA_MAX_WEIGHT, ramp_epochs: int = BETA_RAMP_EPOCHS):
        self.max_weight = number("max_weight", max_weight, 0.0)
        self.ramp_epochs = number("ramp_epochs", ramp_epochs, 1, integer=True)

    def weight(self, epoch: int) -> float:
        return self.max_weight * epoch / self.ramp_epochs

    def loss(self, ctx, group_weights):
        return self.weight(ctx.epoch) * beta_decay_loss(ctx.alphas)

    def metrics(self, ctx):
        return {"beta_decay_weight": self.weight(ctx.epoch)}
