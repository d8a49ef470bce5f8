"""Sampling activations: the mixing weights are a random sample drawn once per step.

- ``gumbel`` (GDAS, Dong & Yang 2019; SNAS, Xie et al. 2019): p = softmax((log softmax(alpha) + g) / tau)
  with Gumbel noise g; ``hard``: the straight-through one-hot h - sg(p) + p (GDAS: the forward is
  one-hot, the backward the soft gradient, and only the sampled op of an edge is computed), else
  the relaxed p (SNAS). tau is annealed over the epochs (GDAS 10 -> 0.1, SNAS 1 -> 0.03).
- ``dirichlet`` (DrNAS, Chen et al. 2021): w ~ Dir(elu(alpha) + 1), pathwise (``rsample``)
  gradient; derivation from the expected weights E[w] = beta / sum(beta).

Every draw comes from a generator seeded by (the run seed, the search step, the group): never
from the global RNG, so every rank of a distributed search draws the same sample and a resumed
search the same as the uninterrupted one. The run seed is ``torch.initial_seed()`` when the
part is built (the platform seeds every rank alike) unless ``seed`` is given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable
from torch.distributions.dirichlet import _Dirichlet_backward

from dartboard.searchers.parts import number
from dartboard.searchers.parts.activations import ACTIVATIONS, Activation

# GDAS (Dong & Yang 2019, 4.1 and the reference code): tau decays linearly from 10 to 0.1.
GDAS_TAU_MAX = 10.0
GDAS_TAU_MIN = 0.1
# SNAS (Xie et al. 2019; ALGORITHMS.md, the official script): tau from 1 to 0.03.
SNAS_TAU_MAX = 1.0
SNAS_TAU_MIN = 0.03
TAU_SCHEDULES = ("linear", "exponential")
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def step_seed(base: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed of (run seed, step, stream): distinct streams per group and per part."""
    return (int(base) * _MIX[0] + int(step) * _MIX[1] + int(stream) * _MIX[2] + int(stream)) % (2**63 - 1)


def step_generator(device: torch.device | str, base: int, step: int, stream: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(step_seed(base, step, stream))


def run_seed(seed: int | None) -> int:
    """The sampler's base seed: ``seed``, else the run seed (the default generator's initial seed)."""
    return int(torch.initial_seed()) if seed is None else int(seed)


def temperature(epoch: int, epochs: int, tau_max: float, tau_min: float, schedule: str = "linear") -> float:
    """tau at ``epoch`` (0-based): GDAS's linear tau_max - (tau_max - tau_min) * epoch / (epochs - 1),
    or the geometric interpolation tau_max * (tau_min / tau_max) ** (epoch / (epochs - 1))."""
    t = min(1.0, epoch / max(1, epochs - 1))
    if schedule == "linear":
        return tau_max - (tau_max - tau_min) * t
    return tau_max * (tau_min / tau_max) ** t


def gumbel_noise(shape: torch.Size, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """g = -log(-log U), U ~ U(0, 1) (clamped away from 0 and 1)."""
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def gumbel_softmax(alpha: torch.Tensor, noise: torch.Tensor, tau: float, hard: bool) -> torch.Tensor:
    """GDAS Eq 5-6: p = softmax((log softmax(alpha) + g) / tau); hard: h - sg(p) + p with
    h = onehot(argmax p) (its non-sampled entries are exactly 0: (0 - p) + p)."""
    p = torch.softmax((torch.log_softmax(alpha, dim=-1) + noise) / tau, dim=-1)
    if not hard:
        return p
    h = torch.nn.functional.one_hot(p.argmax(dim=-1), p.shape[-1]).to(p.dtype)
    return h - p.detach() + p


class _DirichletSample(torch.autograd.Function):
    """Dir(concentration).rsample() from an explicit generator (torch's reads the global RNG)."""

    @staticmethod
    def forward(ctx, concentration, generator):
        x = torch._sample_dirichlet(concentration, generator=generator)
        ctx.save_for_backward(x, concentration)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, concentration = ctx.saved_tensors
        return _Dirichlet_backward(x, concentration, grad_output), None


def dirichlet_rsample(concentration: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A pathwise-differentiable sample of Dir(concentration) (implicit reparameterisation)."""
    return _DirichletSample.apply(concentration, generator)


def dirichlet_concentration(alpha: torch.Tensor) -> torch.Tensor:
    """DrNAS: beta = elu(alpha) + 1 (positive)."""
    return torch.nn.functional.elu(alpha) + 1.0


class _GroupSampler(Activation):
    """Keeps the search's alphas (in ``start``) to know which group ``weights(alpha)`` is asked for."""

    stream_offset = 0

    def __init__(self, seed: int | None):
        self.seed = seed
        self.base_seed = run_seed(seed)
        self.step = -1  # the search step of the current sample (-1: none drawn yet)
        self._alphas: list[torch.Tensor] = []

    def start(self, ctx: Any) -> None:
        self._alphas = ctx.alphas

    def group_of(self, alpha: torch.Tensor) -> int:
        for g, a in enumerate(self._alphas):
            if a is alpha:
                return g
        raise ValueError("a sampling activation draws for the search's own alphas only")

    def generator(self, alpha: torch.Tensor, group: int) -> torch.Generator:
        return step_generator(alpha.device, self.base_seed, self.step, self.stream_offset + group)

    def state_dict(self) -> dict[str, Any]:
        return {"base_seed": self.base_seed, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_seed, self.step = int(state["base_seed"]), int(state["step"])


@ACTIVATIONS.register("gumbel")
class GumbelSoftmax(_GroupSampler):
    """GDAS (``hard``) or SNAS (relaxed) Gumbel-softmax, tau annealed per epoch; derivation from
    softmax(alpha) (the argmax op of each edge, as both papers)."""

    def __init__(self, hard: bool = True, tau_max: float = GDAS_TAU_MAX, tau_min: float = GDAS_TAU_MIN,
                 tau_schedule: str = "linear", seed: int | None = None):
        if tau_schedule not in TAU_SCHEDULES:
            raise ValueError(f"tau_schedule: expected one of {', '.join(TAU_SCHEDULES)}, got {tau_schedule!r}")
        tau_min, tau_max = number("tau_min", tau_min), number("tau_max", tau_max)  # a string: named, not a TypeError
        if not 0.0 < tau_min <= tau_max:
            raise ValueError(f"tau_min, tau_max: expected 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
        super().__init__(seed)
        self.hard, self.tau_max, self.tau_min, self.tau_schedule = bool(hard), float(tau_max), float(tau_min), \
            tau_schedule
        self.tau = self.tau_max
        self.noise: list[torch.Tensor] | None = None

    def start(self, ctx: Any) -> None:
        super().start(ctx)
        if self.hard:
            ctx.skip_zero_weight_ops()

    def resample(self, ctx: Any) -> None:
        self.step = ctx.global_step
        self.tau = temperature(ctx.epoch, ctx.epochs, self.tau_max, self.tau_min, self.tau_schedule)
        self.noise = [gumbel_noise(a.shape, self.generator(a, g), a.device) for g, a in enumerate(ctx.alphas)]

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        if self.noise is None:  # before the first step: the expected relaxation
            return torch.softmax(alpha, dim=-1)
        return gumbel_softmax(alpha, self.noise[self.group_of(alpha)], self.tau, self.hard)

    def derive_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alpha, dim=-1)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tau": self.tau, "noise": self.noise}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tau, self.noise = float(state["tau"]), state["noise"]

    def metrics(self, ctx: Any) -> dict[str, float]:
        return {"gumbel_tau": self.tau}


@ACTIVATIONS.register("dirichlet")
class DirichletSampler(_GroupSampler):
    """DrNAS: w ~ Dir(elu(alpha) + 1), one draw per step (the same one for the alpha and the weight
    step: the generator is re-seeded by the step), derivation from E[w] = beta / sum(beta)."""

    stream_offset = 1 << 20

    def __init__(self, seed: int | None = None):
        super().__init__(seed)

    def resample(self, ctx: Any) -> None:
        self.step = ctx.global_step

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        beta = dirichlet_concentration(alpha)
        if self.step < 0:
            return beta / beta.sum(dim=-1, keepdim=True)
        return dirichlet_rsample(beta, self.generator(alpha, self.group_of(alpha)))

    def derive_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        beta = dirichlet_concentration(alpha)
        return beta / beta.sum(dim=-1, keepdim=True)
