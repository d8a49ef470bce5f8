"""The PMSM parts (thesis 6.2.2): the Jacobian-based surrogate criterion C as an objective, the
per-row argmax discretizer of chain spaces, and a hook that stops a diverged search with a clear error.

**Criterion C** (Eqs 6.15-6.16). The flux is never measured; the current derivatives are. A flux
model ``M(I) = (lambda_d, lambda_q)`` predicts them through the motor equations (derivation in
:mod:`dartboard.data.pmsm`):

    form "physical" (default):  dI/dt_hat = J_M^-1 (-R I + omega_e (lambda_q, -lambda_d) + v),
                                J_M = d(lambda_d, lambda_q) / d(I_d, I_q)

and ``C = MSE(dI/dt_hat, dI/dt)``. The thesis prints Eq 6.15 as ``J_M^-1 (-R I + omega_e M + v)``
with ``M = (lambda_q, lambda_d)``, ``I = (I_d, I_q)`` and (Eq 6.16) ``J_M = [[d lambda_q/d I_q,
d lambda_d/d I_q], [d lambda_q/d I_d, d lambda_d/d I_d]]``. Against Eqs 6.7-6.8 and 6.13-6.14 that
form has (i) ``+omega_e lambda_d`` in the q-axis row where the physics has ``-omega_e lambda_d``
(Eq 6.7), and (ii) a Jacobian whose diagonal pairs the d-axis row with d lambda_q / d I_q and the
q-axis row with d lambda_d / d I_d (for decoupled maps Eq 6.13 divides by f2' = d lambda_d / d I_d,
not by d lambda_q / d I_q). Fed with the true flux map it does not reproduce the true derivatives,
so the physically consistent form is the default and ``form: thesis`` (the literal Eqs 6.15-6.16)
an option, for comparison.

**Guarded inverse.** The 2x2 system is solved in closed form, ``J^-1 r = adj(J) r / det J``, with
``det J`` pushed away from 0 to ``+-det_floor`` (sign kept). Samples where ``|det J| < det_floor``
are counted: the metric ``singular`` is their fraction (logged every epoch), so a near-singular
model Jacobian is a handled, logged case, never a silent inf/NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from dartboard.searchers.discretize import best_op, register_discretizer
from dartboard.searchers.parts.base import Part
from dartboard.searchers.parts.hooks import HOOKS
from dartboard.searchers.parts.seams import OBJECTIVES

log = logging.getLogger("dartboard")

FORMS = ("physical", "thesis")
DET_FLOOR = 1e-6


def residual_and_jacobian(out: Any, form: str = "physical") -> tuple[torch.Tensor, torch.Tensor]:
    """(r [B, 2], J [B, 2, 2]) of ``dI/dt_hat = J^-1 r`` for a :class:`~dartboard.spaces.pmsm.FluxOutput`."""
    flux, jac, x = out.flux.float(), out.jac.float(), out.x.float()
    i, omega, v, r = x[:, 0:2], x[:, 2:3], x[:, 3:5], x[:, 5:6]
    lam_d, lam_q = flux[:, 0], flux[:, 1]
    if form == "physical":
        rhs = -r * i + omega * torch.stack([lam_q, -lam_d], -1) + v
        return rhs, jac
    # thesis-literal Eqs 6.15-6.16: M = (lambda_q, lambda_d); J_M = [[dq/dIq, dd/dIq], [dq/dId, dd/dId]]
    rhs = -r * i + omega * torch.stack([lam_q, lam_d], -1) + v
    literal = torch.stack([torch.stack([jac[:, 1, 1], jac[:, 0, 1]], -1),
                           torch.stack([jac[:, 1, 0], jac[:, 0, 0]], -1)], -2)
    return rhs, literal


def guarded_solve(jac: torch.Tensor, rhs: torch.Tensor, det_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(J^-1 rhs with |det J| floored at det_floor, bool [B]: where the floor applied)."""
    a, b, c, d = jac[:, 0, 0], jac[:, 0, 1], jac[:, 1, 0], jac[:, 1, 1]
    det = a * d - b * c
    singular = det.abs() < det_floor
    sign = torch.where(det < 0, -1.0, 1.0).to(det.dtype)
    det = torch.where(singular, sign * det_floor, det)
    r0, r1 = rhs[:, 0], rhs[:, 1]
    return torch.stack([(d * r0 - b * r1) / det, (a * r1 - c * r0) / det], -1), singular


def predicted_derivatives(out: Any, form: str = "physical", det_floor: float = DET_FLOOR
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    rhs, jac = residual_and_jacobian(out, form)
    return guarded_solve(jac, rhs, det_floor)


@OBJECTIVES.register("flux_criterion")
class FluxCriterion(Part):
    """Criterion C (module docstring): MSE between the derivatives the flux model predicts through
    the motor equations and the measured ones. ``form``: ``physical`` (default) or ``thesis``
    (Eqs 6.15-6.16 as printed); ``det_floor``: the guard of the Jacobian's inverse."""

    def __init__(self, form: str = "physical", det_floor: float = DET_FLOOR):
        if form not in FORMS:
            raise ValueError(f"objective.form: expected one of {', '.join(FORMS)}, got {form!r}")
        if isinstance(det_floor, bool) or not isinstance(det_floor, int | float) or not det_floor > 0:
            raise ValueError(f"det_floor: expected a number > 0, got {det_floor!r}")  # the part is named around it
        self.form, self.det_floor = form, float(det_floor)

    def check(self, config: Any, layout: Any) -> None:
        if not str(config.space).startswith("pmsm-"):
            raise ValueError(f"objective 'flux_criterion' needs a PMSM flux space (pmsm-depth, pmsm-activation, ...), "
                             f"got space {config.space!r}")

    def loss(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        pred, _ = predicted_derivatives(output, self.form, self.det_floor)
        return torch.mean((pred - y.float()) ** 2)

    def metrics(self, output: Any, y: torch.Tensor) -> dict[str, tuple[torch.Tensor, int]]:
        with torch.no_grad():
            pred, singular = predicted_derivatives(output, self.form, self.det_floor)
            err = (pred - y.float()) ** 2
        n = y.shape[0]
        return {"mse_d": (err[:, 0].sum(), n), "mse_q": (err[:, 1].sum(), n), "singular": (singular.sum(), n)}


@register_discretizer("argmax")
def argmax_parse(weights: torch.Tensor, rows: Sequence[Any], primitives: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Chain spaces: the strongest op of every row (NaN/inf weights: FloatingPointError)."""
    weights = weights.detach().float().cpu()
    return tuple(primitives[r][best_op(weights[r][: len(primitives[r])], primitives[r])[0]] for r in range(len(rows)))


argmax_parse.row_kind = "layer"  # parses chains (one op per layer), not cells (see Engine: the space's row kind)


class SearchDiverged(FloatingPointError):
    """The search's loss became NaN or inf: stopped with the epoch and the metric that diverged."""


@HOOKS.register("finite_guard")
class FiniteGuard(Part):
    """Raise :class:`SearchDiverged` at the end of the first epoch whose train or val loss is not
    finite (a NaN run stops at once, with the reason, instead of deriving from NaN weights)."""

    def end_epoch(self, ctx: Any) -> dict[str, float]:
        metrics = ctx.epoch_metrics
        for key in ("train_loss", "val_loss"):
            value = metrics.get(key)
            if value is not None and not math.isfinite(value):
                raise SearchDiverged(f"the search diverged: {key} became {value} in epoch {ctx.epoch}; lower "
                                     "w_lr or arch_lr (exp, x^2 and prod compose into fast-growing functions)")
        singular = metrics.get("train_singular", 0.0)
        if singular > 0.5:
            log.warning("epoch %d: the model's Jacobian was near singular (|det| < det_floor) at %.0f %% of the "
                        "training samples", ctx.epoch, 100 * singular)
        return {}
