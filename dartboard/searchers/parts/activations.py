"""Alpha activations: how architecture parameters become mixing weights.

An activation is a part with state: ``resample`` once per step (a sampler such as GDAS or
DrNAS draws here; the plain activations have nothing to draw), ``weights(alpha)`` read by
the forward and the alpha step of that step, ``derive_weights`` for the parse. An activation
that needs a constraint carries it (``start`` before the first step, ``constrain`` after
every alpha step), so no composition can run it unconstrained:

- ``softmax`` (DARTS), ``sigmoid`` (FairDARTS, D-DARTS): unconstrained;
- ``crb`` (Maile et al. 3.1): clipped ReLU + permanent masking of ops whose alpha reached <= 0;
- ``capped_simplex`` (sparse DARTS, Ito), ``simplex``: the identity + projection after every step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from dartboard.searchers.parts import PartRegistry
from dartboard.searchers.parts.base import Part

ACTIVATIONS = PartRegistry("activation")


class Activation(Part, ABC):
    def resample(self, ctx: Any) -> None:
        """Draw this step's sample (samplers); deterministic activations draw nothing."""

    @abstractmethod
    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        """Mixing weights ``[rows, ops]`` of one group's alphas."""

    def derive_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return self.weights(alpha)

    def start(self, ctx: Any) -> None:
        """Before the first step (a projection makes the initial alphas feasible)."""

    def constrain(self, ctx: Any) -> None:
        """After every alpha step (projection, masking)."""

    def end_epoch(self, ctx: Any) -> None:
        """When an epoch closes, before its mixing weights are recorded (``ctx.epoch``: the epoch closing)."""


@ACTIVATIONS.register("softmax")
class Softmax(Activation):
    """DARTS: w_o = exp(alpha_o) / sum_o' exp(alpha_o') over the ops of an edge."""

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alpha, dim=-1)


@ACTIVATIONS.register("sigmoid")
class Sigmoid(Activation):
    """FairDARTS (thesis 3.2.1): each op weighted independently by sigmoid(alpha)."""

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(alpha)


@ACTIVATIONS.register("crb")
class ClippedReLU(Activation):
    """CRB (Maile et al. 3.1): w_o = min(max(alpha_o, 0), 1), each op on its own; once an op's
    alpha is <= 0 it is masked for good (removed from the forward of every cell using that
    group) and its alpha held at <= 0 so its weight stays exactly 0. Used with a non-affine
    BN after each node's sum (``node_bn``). Reads the alphas on the host after each alpha step."""

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha.clamp(0.0, 1.0)

    @torch.no_grad()
    def constrain(self, ctx: Any) -> None:
        for group, alpha in enumerate(ctx.alphas):
            ctx.mask_group(group, alpha > 0)
            keep = ctx.group_active(group).to(alpha.device)
            alpha.copy_(torch.where(keep, alpha, alpha.clamp_max(0.0)))  # Adam momentum could lift them


def project_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``x`` onto {a >= 0, sum a = 1}.

    Sort-based algorithm (Held et al. 1974; Duchi et al. 2008): with u sorted decreasingly,
    rho = max{j : u_j - (sum_{i<=j} u_i - 1) / j > 0}, theta = (sum_{i<=rho} u_i - 1) / rho,
    a = max(x - theta, 0)."""
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = u.cumsum(dim=-1) - 1.0
    j = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    cond = (u - css / j) > 0
    rho = cond.to(x.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last index where cond holds
    theta = css.gather(-1, rho) / (rho + 1).to(x.dtype)
    return (x - theta).clamp_min(0.0)


def project_capped_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``x`` onto {a >= 0, sum a <= 1}.

    KKT: if clamping to the orthant already gives sum <= 1 that is the projection;
    otherwise the sum constraint is active and the answer is the simplex projection."""
    clamped = x.clamp_min(0.0)
    inside = clamped.sum(dim=-1, keepdim=True) <= 1.0
    return torch.where(inside, clamped, project_simplex(x))


class _Projected(Activation):
    """Alphas kept in a convex set by projection after every alpha step (projected gradient);
    they mix directly (the identity activation)."""

    capped = True

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha

    def project(self, alpha: torch.Tensor) -> torch.Tensor:
        return project_capped_simplex(alpha) if self.capped else project_simplex(alpha)

    @torch.no_grad()
    def constrain(self, ctx: Any) -> None:
        for alpha in ctx.alphas:
            alpha.copy_(self.project(alpha))

    def start(self, ctx: Any) -> None:
        self.constrain(ctx)

    def metrics(self, ctx: Any) -> dict[str, float]:
        with torch.no_grad():
            zeros = sum(int((a == 0).sum()) for a in ctx.alphas)
        return {"alpha_exact_zeros": float(zeros)}


@ACTIVATIONS.register("capped_simplex")
class CappedSimplex(_Projected):
    """Sparse DARTS (ALGORITHMS.md, Ito): alphas in {a >= 0, sum a <= 1}, mixed directly."""

    capped = True


@ACTIVATIONS.register("simplex")
class Simplex(_Projected):
    """Alphas on the exact simplex {a >= 0, sum a = 1}, mixed directly."""

    capped = False
