"""Update schedules: when the alpha step runs (the weight step always runs).

A schedule has ``arch_step_due() -> bool`` (asked once per iteration, before the weight
step), ``after_weight_step(grad_sq_norm)`` (called when ``needs_grad_norm``), state and
``metrics()``; ``train_fraction`` is the train/val split the schedule implies (Maile et al.
4.1: the data are split by the expected ratio of weight steps to alpha steps).
"""

from __future__ import annotations

from typing import Any

import torch

from dartboard.searchers.parts import PartRegistry
from dartboard.searchers.parts.base import Part

SCHEDULES = PartRegistry("schedule")

# Maile et al. 4.1 (ALGORITHMS.md): k = 10 weight steps per alpha step, FIMT EWMA factor 0.2,
# threshold starting at 1.0 and moving by 1.05 per step (1.05^-k after an alpha step).
CS_K = 10
FIMT_K = 10
FIMT_EWMA = 0.2
FIMT_THRESHOLD_INIT = 1.0
FIMT_FACTOR = 1.05
# "paper": k weight steps per alpha step; "reference": the authors' code (k + 1; see FimtSchedule).
FIMT_CONVENTIONS = ("paper", "reference")


def train_fraction_for_ratio(k: int) -> float:
    """k train batches per val batch -> train share k / (k + 1) (k = 10: 90.91% / 9.09%)."""
    return k / (k + 1)


class Schedule(Part):
    needs_grad_norm = False  # True: after_weight_step gets sum ||grad w||^2 (before clipping)
    train_fraction = 0.5

    def arch_step_due(self) -> bool:
        return True

    def after_weight_step(self, grad_sq_norm: torch.Tensor) -> None:
        """Called after every weight step when ``needs_grad_norm``."""


@SCHEDULES.register("alternate")
class AlternateSchedule(Schedule):
    """DARTS: one alpha step, then one weight step, every iteration; the data split 50/50."""


@SCHEDULES.register("constant")
class ConstantSchedule(Schedule):
    """CS-k (Maile et al. 4): exactly one alpha step every k iterations (k weight steps each)."""

    def __init__(self, k: int = CS_K):
        if int(k) < 1:
            raise ValueError(f"k: expected an integer >= 1, got {k}")
        self.k = int(k)
        self.calls = 0
        self.arch_steps = 0

    @property
    def train_fraction(self) -> float:
        return train_fraction_for_ratio(self.k)

    def arch_step_due(self) -> bool:
        due = self.calls % self.k == 0
        self.calls += 1
        self.arch_steps += int(due)
        return due

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "arch_steps": self.arch_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls, self.arch_steps = state["calls"], state["arch_steps"]

    def metrics(self, ctx: Any = None) -> dict[str, float]:
        return {"schedule_arch_steps": float(self.arch_steps), "schedule_iterations": float(self.calls)}


@SCHEDULES.register("fimt")
class FimtSchedule(Schedule):
    """Dynamic FIMT schedule (Maile et al. 3.2; ALGORITHMS.md Maile et al.).

    After each weight step: FI = sum ||grad w||^2 (before clipping);
    FI_ewma <- (1 - lambda) * FI_ewma + lambda * FI (lambda = 0.2; the first FI initialises it).
    If FI_ewma < threshold: the next iteration takes an alpha step and threshold *= factor^(-(k-1));
    otherwise threshold *= factor.

    The ratio (``convention``). Maile et al. 4.1 set "the expected ratio of w steps per alpha step" to
    k = 10 and split the data 90.91 / 9.09 for it; the factors are "computed to maintain the desired
    average frequency of alpha updates, assuming the FIMT were constant". With a constant FI a cycle of
    n weight steps has n - 1 increases and one decrease, so n = k needs the decrease factor^-(k-1):
    that is the default ("paper"). The authors' code (DARTS-PRIME) decreases by factor^-k, which
    balances at k + 1 = 11 weight steps per alpha step while still splitting the data for 10:
    ``convention: reference`` reproduces it.

    The first comparison. The paper compares "after each w update", so the first FI is compared with
    the initial threshold (1.0). The reference decides before the weight step; its first iteration has
    no FI yet, skips the comparison and raises the threshold once, so its first comparison is against
    1.0 * 1.05. ``convention: reference`` reproduces that too (the threshold starts at threshold * factor).

    Reads FI on the host once per step (the decision is a Python bool).
    """

    needs_grad_norm = True

    def __init__(self, k: int = FIMT_K, ewma: float = FIMT_EWMA, threshold: float = FIMT_THRESHOLD_INIT,
                 factor: float = FIMT_FACTOR, convention: str = "paper"):
        if int(k) < 1:
            raise ValueError(f"k: expected an integer >= 1, got {k}")
        if not 0.0 < ewma <= 1.0:
            raise ValueError(f"ewma: expected a value in (0, 1], got {ewma}")
        if factor <= 1.0 or threshold <= 0.0:
            raise ValueError(f"factor and threshold: expected factor > 1 and threshold > 0, got {factor}, {threshold}")
        if convention not in FIMT_CONVENTIONS:
            raise ValueError(f"convention: expected 'paper' or 'reference', got {convention!r}")
        self.k, self.ewma_factor, self.factor = int(k), float(ewma), float(factor)
        self.convention = convention
        # Decreases per alpha step, in units of log(factor): k - 1 (paper, k steps a cycle) or k (reference).
        self.decrease = self.k - 1 if convention == "paper" else self.k
        self.threshold = float(threshold) * (self.factor if convention == "reference" else 1.0)
        self.fi_ewma: float | None = None
        self.due = False
        self.weight_steps = 0
        self.arch_steps = 0

    @property
    def train_fraction(self) -> float:
        return train_fraction_for_ratio(self.k)

    def arch_step_due(self) -> bool:
        due, self.due = self.due, False
        self.arch_steps += int(due)
        return due

    def after_weight_step(self, grad_sq_norm: torch.Tensor) -> None:
        fi = float(grad_sq_norm)
        if self.fi_ewma is None:
            self.fi_ewma = fi
        else:
            self.fi_ewma = (1.0 - self.ewma_factor) * self.fi_ewma + self.ewma_factor * fi
        self.weight_steps += 1
        if self.fi_ewma < self.threshold:
            self.due = True
            self.threshold *= self.factor ** (-self.decrease)
        else:
            self.due = False
            self.threshold *= self.factor

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "fi_ewma": self.fi_ewma, "due": self.due,
                "weight_steps": self.weight_steps, "arch_steps": self.arch_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold, self.fi_ewma, self.due = state["threshold"], state["fi_ewma"], state["due"]
        self.weight_steps, self.arch_steps = state["weight_steps"], state["arch_steps"]

    def metrics(self, ctx: Any = None) -> dict[str, float]:
        out = {"schedule_arch_steps": float(self.arch_steps), "schedule_weight_steps": float(self.weight_steps),
               "fimt_threshold": self.threshold}
        if self.fi_ewma is not None:
            out["fimt_ewma"] = self.fi_ewma
        return out
