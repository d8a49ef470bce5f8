"""Regularizers of the alpha step: terms added to L_val, each a small swappable part.

A regularizer has ``loss(searcher, group_weights) -> Tensor`` (added to the validation
loss of the alpha step), ``after_arch_step(searcher)``, ``state_dict``/``load_state_dict``
and ``metrics(searcher)``. The pure formulas are module-level functions, tested against
hand-computed values. Build parts by name with :func:`make_regularizer`.

``on="alphas"`` (the papers' symbols) applies a term to the raw architecture parameters;
``on="weights"`` to the activated mixing weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dartboard.searchers.discretize import genotype_mask

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
ADA_WD_FACTOR = 10.0  # R-DARTS DARTS-ADA: multiply the L2 factor by 10 ...
ADA_WD_MAX = 0.03  # ... capped at 0.03 (ALGORITHMS.md R-DARTS)


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


def discrete_targets(searcher: Any, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Pi_S(values): the one-hot of the searcher's parse (DARTS top-2) of each group."""
    out = []
    for g, v in enumerate(values):
        cell = searcher.derive_group(g, v.detach())
        out.append(genotype_mask(cell, searcher.network.edges, searcher.group_primitives[g]).to(v))
    return out


# ----------------------------------------------------------------------------- parts
class _Part:
    """Defaults for the regularizer protocol."""

    def loss(self, searcher: Any, group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def after_arch_step(self, searcher: Any) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def metrics(self, searcher: Any) -> dict[str, float]:
        return {}

    @staticmethod
    def _values(searcher: Any, group_weights: Sequence[torch.Tensor], on: str) -> list[torch.Tensor]:
        return list(searcher.arch.alphas) if on == "alphas" else list(group_weights)


def _check_on(on: str) -> str:
    if on not in ("alphas", "weights"):
        raise ValueError(f"on: expected 'alphas' or 'weights', got {on!r}")
    return on


class ZeroOne(_Part):
    """w01 * L01 (FairDARTS, thesis Eq 3.2: L_F = L_val + w01 * L01)."""

    def __init__(self, weight: float = W01_FAIRDARTS):
        self.weight = float(weight)

    def loss(self, searcher, group_weights):
        return self.weight * zero_one_loss(list(searcher.arch.alphas))


class L1(_Part):
    """lambda * ||alpha||_1 (sparse DARTS, ALGORITHMS.md)."""

    def __init__(self, weight: float = SPARSE_L1_WEIGHT, on: str = "alphas"):
        if weight < 0:
            raise ValueError(f"weight: expected >= 0, got {weight}")
        self.weight, self.on = float(weight), _check_on(on)

    def loss(self, searcher, group_weights):
        return self.weight * l1_loss(self._values(searcher, group_weights, self.on))


class Proximity(_Part):
    """Maile et al. Eq 6 with c = searcher.progress (linear 0 -> 1 over the search)."""

    def __init__(self, rho: float = RHO_PROXIMITY, on: str = "alphas"):
        self.rho, self.on = float(rho), _check_on(on)
        self.last_c = 0.0

    def loss(self, searcher, group_weights):
        values = self._values(searcher, group_weights, self.on)
        self.last_c = float(searcher.progress)
        return proximity_loss(values, discrete_targets(searcher, values), self.last_c, self.rho)

    def metrics(self, searcher):
        return {"proximity_c": self.last_c}


class Admm(_Part):
    """Maile et al. Eq 7-11: loss (rho_a/2)||alpha - z + u||^2; every ``period`` alpha steps
    z = Pi_S(alpha + u) (a discrete architecture) and u = lambda_u * u + alpha - z."""

    def __init__(self, rho: float = RHO_ADMM, lambda_u: float = LAMBDA_U_ADMM, period: int = ADMM_PERIOD,
                 squared: bool = True, on: str = "alphas"):
        if period < 1:
            raise ValueError(f"period: expected >= 1, got {period}")
        self.rho, self.lambda_u, self.period, self.squared = float(rho), float(lambda_u), int(period), squared
        self.on = _check_on(on)
        self.z: list[torch.Tensor] | None = None
        self.u: list[torch.Tensor] | None = None
        self.steps = 0
        self.updates = 0

    def _values(self, searcher, group_weights=None):
        if self.on == "alphas":
            return list(searcher.arch.alphas)
        return list(group_weights) if group_weights is not None else list(searcher.group_weights())

    def _init(self, searcher, values):
        if self.z is None:
            self.z = discrete_targets(searcher, values)  # z^0 = Pi_S(alpha^0), u^0 = 0
            self.u = [torch.zeros_like(v.detach()) for v in values]

    def loss(self, searcher, group_weights):
        values = self._values(searcher, group_weights)
        self._init(searcher, values)
        return admm_loss(values, self.z, self.u, self.rho, self.squared)

    @torch.no_grad()
    def after_arch_step(self, searcher):
        self.steps += 1
        if self.steps % self.period:
            return
        values = [v.detach() for v in self._values(searcher)]
        self._init(searcher, values)
        self.z = discrete_targets(searcher, [v + u for v, u in zip(values, self.u, strict=True)])  # Eq 9
        self.u = [self.lambda_u * u + v - z for u, v, z in zip(self.u, values, self.z, strict=True)]  # Eq 11
        self.updates += 1

    def state_dict(self):
        return {"z": self.z, "u": self.u, "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state):
        self.z, self.u, self.steps, self.updates = state["z"], state["u"], state["steps"], state["updates"]

    def metrics(self, searcher):
        return {"admm_updates": float(self.updates)}


class BetaDecay(_Part):
    """beta-DARTS: lambda(epoch) * L_beta, lambda(epoch) = max_weight * epoch / ramp_epochs
    (reference: 50 * epoch / 100), on the pre-softmax alphas."""

    def __init__(self, max_weight: float = BETA_MAX_WEIGHT, ramp_epochs: int = BETA_RAMP_EPOCHS):
        if ramp_epochs < 1:
            raise ValueError(f"ramp_epochs: expected >= 1, got {ramp_epochs}")
        self.max_weight, self.ramp_epochs = float(max_weight), int(ramp_epochs)

    def weight(self, epoch: int) -> float:
        return self.max_weight * epoch / self.ramp_epochs

    def loss(self, searcher, group_weights):
        return self.weight(searcher.epoch) * beta_decay_loss(list(searcher.arch.alphas))

    def metrics(self, searcher):
        return {"beta_decay_weight": self.weight(searcher.epoch)}


class AdaptiveWeightDecay:
    """The inner L2 (weight-decay) factor of L_train, which DARTS-ADA raises (R-DARTS):
    wd <- min(wd * factor, max_wd). Acts on the weight optimizer and the unrolled step."""

    def __init__(self, factor: float = ADA_WD_FACTOR, max_wd: float = ADA_WD_MAX):
        self.factor, self.max_wd = float(factor), float(max_wd)

    @staticmethod
    def current(searcher: Any) -> float:
        return float(searcher.w_optimizer.param_groups[0]["weight_decay"])

    def set(self, searcher: Any, value: float) -> None:
        for group in searcher.w_optimizer.param_groups:
            group["weight_decay"] = value
        searcher.config.w_weight_decay = value  # used by the second-order unrolled step

    def increase(self, searcher: Any, base: float | None = None) -> float:
        value = min((self.current(searcher) if base is None else base) * self.factor, self.max_wd)
        self.set(searcher, value)
        return value


REGULARIZERS: dict[str, Callable[..., _Part]] = {
    "zero_one": ZeroOne,
    "l1": L1,
    "proximity": Proximity,
    "admm": Admm,
    "beta_decay": BetaDecay,
}


def make_regularizer(spec: str | dict[str, Any]) -> _Part:
    """A part from a name or ``{"name": ..., **options}``; bad names/options raise naming them."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"regularizers: expected a name or a mapping with 'name', got {spec!r}")
    options = {k: v for k, v in spec.items() if k != "name"}
    try:
        factory = REGULARIZERS[spec["name"]]
    except KeyError:
        raise ValueError(f"regularizers: unknown regularizer {spec['name']!r}; known: "
                         f"{', '.join(sorted(REGULARIZERS))}") from None
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"regularizers: {spec['name']!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(sorted(accepted))}")
    return factory(**options)
