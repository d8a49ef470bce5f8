"""Regularizers of the one-shot methods: DrNAS's Dirichlet anchor and SNAS's resource penalty."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
from torch.distributions import Dirichlet, kl_divergence

from dartboard.searchers.parts.regularizers import REGULARIZERS, Regularizer
from dartboard.searchers.parts.samplers import dirichlet_concentration

# DrNAS (Chen et al. 2021, 3.2 and reference code): lambda = 1e-3 times KL(Dir(beta) || Dir(1)).
DRNAS_REG_SCALE = 1e-3
DRNAS_ANCHOR = 1.0
DRNAS_KINDS = ("kl", "l2")
RESOURCE_CHANNELS = 16  # op costs are the parameter counts of the ops built at C = 16 (DARTS search)


def dirichlet_kl(concentration: torch.Tensor, anchor: float = DRNAS_ANCHOR) -> torch.Tensor:
    """sum over rows of KL(Dir(beta_row) || Dir(anchor * 1))."""
    return kl_divergence(Dirichlet(concentration), Dirichlet(torch.full_like(concentration, anchor))).sum()


def dirichlet_l2(concentration: torch.Tensor, anchor: float = DRNAS_ANCHOR) -> torch.Tensor:
    """The L2 alternative: sum of (beta - anchor)^2 (pulls the concentrations to the anchor's)."""
    return (concentration - anchor).pow(2).sum()


@REGULARIZERS.register("dirichlet_kl")
class DirichletAnchor(Regularizer):
    """DrNAS: weight * sum over groups of KL(Dir(elu(alpha) + 1) || Dir(anchor)) (``kind: l2``:
    the squared distance of the concentrations to the anchor instead)."""

    def __init__(self, weight: float = DRNAS_REG_SCALE, anchor: float = DRNAS_ANCHOR, kind: str = "kl"):
        if kind not in DRNAS_KINDS:
            raise ValueError(f"kind: expected one of {', '.join(DRNAS_KINDS)}, got {kind!r}")
        if anchor <= 0 or weight < 0:
            raise ValueError(f"anchor, weight: expected anchor > 0 and weight >= 0, got {anchor}, {weight}")
        self.weight, self.anchor, self.kind = float(weight), float(anchor), kind

    def loss(self, ctx: Any, group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        term = dirichlet_kl if self.kind == "kl" else dirichlet_l2
        return self.weight * sum(term(dirichlet_concentration(a), self.anchor) for a in ctx.alphas)


@cache
def op_cost(name: str) -> float:
    """Parameters of op ``name`` in a search cell at C = 16, stride 1 (none, skip, pools: 0)."""
    from dartboard.spaces.ops import make_op

    return float(sum(p.numel() for p in make_op(name, RESOURCE_CHANNELS, 1, affine=False).parameters()))


def resource_cost(weights: torch.Tensor, primitives: Sequence[Sequence[str]]) -> torch.Tensor:
    """sum_edges sum_o w_o * cost(o) / max cost (SNAS 3.3's resource term, relaxed: the expected
    cost under the sampled weights, differentiable through them)."""
    costs = torch.tensor([[op_cost(n) for n in row] for row in primitives], dtype=weights.dtype,
                         device=weights.device)
    return (weights[:, : costs.shape[1]] * costs).sum() / costs.max().clamp_min(1.0)


@REGULARIZERS.register("resource")
class Resource(Regularizer):
    """SNAS's optional resource penalty: weight * sum over groups of the expected normalised
    parameter cost of the mixing weights."""

    def __init__(self, weight: float = 0.0):
        if weight < 0:
            raise ValueError(f"weight: expected >= 0, got {weight}")
        self.weight = float(weight)

    def loss(self, ctx: Any, group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.weight * sum(resource_cost(w, g.primitives) for w, g in zip(group_weights, ctx.groups,
                                                                                  strict=True))
