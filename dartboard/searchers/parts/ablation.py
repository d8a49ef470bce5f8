"""D-DARTS's ablation term (thesis ch. 4, Algorithm 1) as a regularizer. D-DARTS itself is a
preset: one group of alphas, one optimizer and one scheduler per cell, sigmoid mixing, the
zero-one loss per group and this term, giving the per-cell total loss

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

from collections.abc import Sequence
from typing import Any

import torch

from dartboard.searchers.base import EpochMeter
from dartboard.searchers.hypergradient import grads_or_zeros
from dartboard.searchers.parts import number
from dartboard.searchers.parts.regularizers import REGULARIZERS, Regularizer

DEACTIVATIONS = ("uniform", "reference")
ABLATION_GRADS = ("none", "active", "full")
W_AB = 0.5  # thesis 4.2.2, Fig 4.3
#: Mixing weight of every op of a deactivated cell in mode ``uniform``: the mean of the
#: reference's U[0, 1) draw, i.e. sigmoid(0), the state every cell starts from.
UNIFORM_WEIGHT = 0.5


def marginal_contributions(loss_all: torch.Tensor, losses_without: torch.Tensor) -> torch.Tensor:
    """Thesis Eq 4.2: M_C^i = L_CE(C) - L_CE(C \\ {C_i}) for every cell i."""
    return loss_all - losses_without


def ablation_loss(m: torch.Tensor) -> torch.Tensor:
    """Thesis Eq 4.3: L_AB^i = (M_C^i - mean M_C) / mean M_C, and 0 where mean M_C = 0."""
    mean = m.mean()
    nonzero = mean != 0
    safe = torch.where(nonzero, mean, torch.ones_like(mean))
    return torch.where(nonzero, (m - mean) / safe, torch.zeros_like(m))


def ablation_coefficients(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL_AB^i/dL_CE(C), dL_AB^i/d sum_j L_CE(C \\ C_j)) for every i: (m - M^i)/m^2 and
    M^i/(n m^2), 0 where mean M_C = 0 (where Eq 4.3 is constant)."""
    mean = m.mean()
    nonzero = mean != 0
    sq = torch.where(nonzero, mean * mean, torch.ones_like(mean))
    zero = torch.zeros_like(m)
    through_all = torch.where(nonzero, (mean - m) / sq, zero)
    through_ablated = torch.where(nonzero, m / (m.numel() * sq), zero)
    return through_all, through_ablated


@REGULARIZERS.register("ablation")
class Ablation(Regularizer):
    """wAB * L_AB^i added to the gradient of group i only (thesis Eq 4.5), from the marginal
    contributions of the groups on the validation batch. ``grad``: ``active`` (ablated passes
    held constant), ``full`` (through the ablated passes), ``none`` (the reference: no gradient,
    L_AB logged only). ``deactivation``: ``uniform`` (every op at 0.5) or ``reference``
    (U[0, 1) draws from a generator seeded with ``seed``)."""

    needs_val_grad = True

    def __init__(self, weight: float = W_AB, grad: str = "active", deactivation: str = "uniform", seed: int = 0):
        if grad not in ABLATION_GRADS:
            raise ValueError(f"ablation_grad: expected one of {', '.join(ABLATION_GRADS)}, got {grad!r}")
        if deactivation not in DEACTIVATIONS:
            raise ValueError(f"deactivation: expected one of {', '.join(DEACTIVATIONS)}, got {deactivation!r}")
        self.weight, self.grad, self.deactivation = number("weight", weight, 0.0), grad, deactivation
        self.generator = torch.Generator().manual_seed(int(seed))
        self.meter = EpochMeter()

    def check(self, config: Any, layout: Any) -> None:
        if config.order != 1:
            raise ValueError(f"regularizer 'ablation' (D-DARTS L_AB) needs the first-order hypergradient "
                             f"(order 1, thesis Algorithm 1), got order {config.order}")

    def deactivated_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Mixing weights of a deactivated group (the paper leaves "deactivate" open)."""
        if self.deactivation == "reference":
            draw = torch.rand(weights.shape, generator=self.generator)
            return draw.to(device=weights.device, dtype=weights.dtype)
        return torch.full_like(weights, UNIFORM_WEIGHT)

    def ablated_output(self, ctx: Any, x: torch.Tensor, group_weights: Sequence[torch.Tensor], group: int
                       ) -> torch.Tensor:
        """The supernet's output with every cell of ``group`` deactivated (C \\ C_i)."""
        gw = list(group_weights)
        gw[group] = self.deactivated_weights(gw[group].detach())
        with ctx.frozen_batchnorm():
            return ctx.forward(x, gw)

    def add_grad_terms(self, ctx, x, y, val_loss, val_grads, grads):
        alphas = ctx.alphas
        losses_without, h = [], [torch.zeros_like(a) for a in alphas]
        with torch.no_grad():
            detached = [w.detach() for w in ctx.group_weights()]
        for g in range(len(alphas)):
            if self.grad == "full":  # one ablated graph at a time
                loss_g = ctx.loss(self.ablated_output(ctx, x, ctx.group_weights(), g), y)
                h = [hi + d for hi, d in zip(h, grads_or_zeros(ctx.scale(loss_g), alphas), strict=True)]
                losses_without.append(loss_g.detach())
                del loss_g
            else:
                with torch.no_grad():
                    losses_without.append(ctx.loss(self.ablated_output(ctx, x, detached, g), y))
        m = marginal_contributions(val_loss, torch.stack(losses_without))  # Eq 4.2
        self.meter.add("marginal_mean", m.mean())
        self.meter.add("ablation_abs", ablation_loss(m).abs().mean())  # Eq 4.3
        if self.grad == "none":
            return grads
        through_all, through_ablated = ablation_coefficients(m)
        out = []
        for i, (g_i, v_i, h_i) in enumerate(zip(grads, val_grads, h, strict=True)):
            g_i = g_i + self.weight * through_all[i] * v_i
            if self.grad == "full":
                g_i = g_i + self.weight * through_ablated[i] * h_i
            out.append(g_i)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def metrics(self, ctx: Any) -> dict[str, float]:
        return self.meter.read()
