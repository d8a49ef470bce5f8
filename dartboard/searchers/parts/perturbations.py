"""Weight-step perturbations (the ``perturbation`` seam): SDARTS (Chen & Hsieh 2020).

The weight step trains the supernet on perturbed mixing weights w + delta, |delta| <= epsilon
elementwise, epsilon ramped linearly over the search (SDARTS: 0.03 -> 0.3):

- ``random`` (SDARTS-RS): delta ~ U[-epsilon, epsilon];
- ``adversarial`` (SDARTS-ADV): ``steps`` of L-inf PGD maximising the training loss on the weight
  step's batch, step size 2 epsilon / steps, from a random start (SDARTS Eq 7 and reference code).

``clip``: the reference code's projection after every change (``simplex``: clamp to [0, 1] and
renormalise each row; ``box``: clamp to [0, 1] only, for sigmoid mixing; ``none``). The alphas are
never touched: only the weights the weight step sees change, so they are "restored" by construction.
Draws come from a generator seeded by (run seed, step), as the samplers'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dartboard.searchers.parts.base import Part
from dartboard.searchers.parts.samplers import run_seed, step_generator
from dartboard.searchers.parts.seams import PERTURBATIONS

# SDARTS 4 / reference code: epsilon = 0.03 + (0.3 - 0.03) * epoch / epochs.
SDARTS_EPSILON_MIN = 0.03
SDARTS_EPSILON_MAX = 0.3
SDARTS_PGD_STEPS = 7  # SDARTS-ADV: 7 PGD steps
CLIPS = ("simplex", "box", "none")
_STREAM = 1 << 21


def epsilon_at(progress: float, epsilon_min: float = SDARTS_EPSILON_MIN, epsilon_max: float = SDARTS_EPSILON_MAX
               ) -> float:
    return epsilon_min + (epsilon_max - epsilon_min) * min(1.0, max(0.0, progress))


def clip_weights(w: torch.Tensor, clip: str) -> torch.Tensor:
    """``simplex``: clamp to [0, 1], a row that became all zero keeps its argmax, rows renormalised."""
    if clip == "none":
        return w
    c = w.clamp(0.0, 1.0)
    if clip == "box":
        return c
    fallback = torch.nn.functional.one_hot(w.argmax(dim=-1), w.shape[-1]).to(w.dtype)
    c = torch.where(c.sum(dim=-1, keepdim=True) > 0, c, fallback)
    return c / c.sum(dim=-1, keepdim=True)


def uniform_noise(w: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype) * 2.0 - 1.0) * epsilon


@PERTURBATIONS.register("random")
class RandomSmoothing(Part):
    """SDARTS-RS: the weight step sees clip(w + U[-epsilon, epsilon])."""

    def __init__(self, epsilon_min: float = SDARTS_EPSILON_MIN, epsilon_max: float = SDARTS_EPSILON_MAX,
                 clip: str = "simplex", seed: int | None = None):
        if clip not in CLIPS:
            raise ValueError(f"clip: expected one of {', '.join(CLIPS)}, got {clip!r}")
        if not 0.0 <= epsilon_min <= epsilon_max:
            raise ValueError(f"epsilon_min, epsilon_max: expected 0 <= min <= max, got {epsilon_min}, {epsilon_max}")
        self.epsilon_min, self.epsilon_max, self.clip = float(epsilon_min), float(epsilon_max), clip
        self.base_seed = run_seed(seed)
        self.epsilon = self.epsilon_min

    def noise(self, ctx: Any, group_weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.epsilon = epsilon_at(ctx.progress, self.epsilon_min, self.epsilon_max)
        return [uniform_noise(w, self.epsilon, step_generator(w.device, self.base_seed, ctx.global_step, _STREAM + g))
                for g, w in enumerate(group_weights)]

    def weights(self, ctx: Any, group_weights: Sequence[torch.Tensor], x: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [clip_weights(w + d, self.clip) for w, d in zip(group_weights, self.noise(ctx, group_weights),
                                                                strict=True)]

    def state_dict(self) -> dict[str, Any]:
        return {"base_seed": self.base_seed, "epsilon": self.epsilon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_seed, self.epsilon = int(state["base_seed"]), float(state["epsilon"])

    def metrics(self, ctx: Any) -> dict[str, float]:
        return {"sdarts_epsilon": self.epsilon}


@PERTURBATIONS.register("adversarial")
class AdversarialPerturbation(RandomSmoothing):
    """SDARTS-ADV: delta maximises L_train(w, weights + delta) over |delta| <= epsilon by L-inf PGD
    (sign-gradient ascent, step 2 epsilon / steps, projected after every step). The PGD forwards
    normalise with batch statistics but leave the BN running statistics alone."""

    def __init__(self, epsilon_min: float = SDARTS_EPSILON_MIN, epsilon_max: float = SDARTS_EPSILON_MAX,
                 steps: int = SDARTS_PGD_STEPS, random_start: bool = True, clip: str = "simplex",
                 seed: int | None = None):
        if int(steps) < 1:
            raise ValueError(f"steps: expected an integer >= 1, got {steps}")
        super().__init__(epsilon_min, epsilon_max, clip, seed)
        self.steps, self.random_start = int(steps), bool(random_start)

    def project(self, base: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return clip_weights(base + (w - base).clamp(-self.epsilon, self.epsilon), self.clip)

    def weights(self, ctx, group_weights, x=None, y=None):
        if x is None or y is None:
            raise ValueError("perturbation 'adversarial' needs the weight step's batch")
        base = [w.detach() for w in group_weights]
        noise = self.noise(ctx, base)
        current = [self.project(b, b + d) if self.random_start else b for b, d in zip(base, noise, strict=True)]
        lr = 2.0 * self.epsilon / self.steps
        with ctx.frozen_batchnorm(), torch.enable_grad():
            for _ in range(self.steps):
                current = [c.detach().requires_grad_(True) for c in current]
                loss = ctx.loss(ctx.forward(x, current), y)
                grads = torch.autograd.grad(loss, current, allow_unused=True)
                current = [self.project(b, c + lr * (torch.zeros_like(c) if g is None else g.sign()))
                           for b, c, g in zip(base, current, grads, strict=True)]
        return [c.detach() for c in current]
