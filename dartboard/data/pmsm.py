"""A permanent magnet synchronous motor (PMSM) simulator: the data of thesis section 6.2, which the
thesis only calls "dummy data".

**Equations** (thesis Eqs 6.7-6.8, d-q frame): the flux linkages obey

    d lambda_d / dt = -R I_d + omega_e lambda_q + v_d
    d lambda_q / dt = -R I_q - omega_e lambda_d + v_q

and the flux is a function of the currents, ``lambda = Lambda(I)`` (the constitutive law; linear
inductances give Eq 6.11). By the chain rule ``d lambda / dt = J(I) dI/dt`` with the Jacobian
``J = d(lambda_d, lambda_q) / d(I_d, I_q)`` (rows: lambda_d, lambda_q; columns: I_d, I_q), so

    dI/dt = J(I)^-1 r,    r = (-R I_d + omega_e lambda_q + v_d,  -R I_q - omega_e lambda_d + v_q).

For decoupled maps (``lambda_d = f2(I_d)``, ``lambda_q = f1(I_q)``, Eq 6.12) ``J`` is diagonal and
this is Eqs 6.13-6.14: ``dI_d/dt = (f2')^-1 (-R I_d + omega_e lambda_q + v_d)`` and
``dI_q/dt = (f1')^-1 (-R I_q - omega_e lambda_d + v_q)``. The simulator computes exactly this, with
the analytic Jacobian of its flux maps, and adds optional Gaussian noise to the measured derivatives.

**Units.** Everything is per unit (p.u.): currents in rated current, voltages in rated voltage,
electrical speed in base speed omega_b, flux in V_b / omega_b, time in 1 / omega_b (so a
derivative of 1 p.u. is a change of one rated current per 1/omega_b seconds). The defaults
(:class:`MotorParams`) describe a small salient interior-magnet motor:

    R = 0.02, lambda_f = 0.7, L_d0 = 0.5, L_q0 = 0.9, I_s = 1.0 (saturation current), cross = 0.05,
    P = 4 pole pairs (torque only, Eq 6.9), currents uniform in [-1.25, 1.25]^2,
    |omega_e| uniform in [0.3, 1.0] with a random sign (never near 0: at omega_e = 0 the
    permanent-magnet flux lambda_f drops out of the equations and cannot be identified),
    voltages uniform in the voltage circle |v| <= 1.0, noise 1 % of each derivative's std.

**Flux maps** (saturating, ``I_s``): ``lambda_d = lambda_f + L_d0 I_s tanh(I_d / I_s) + c I_q^2 / 2``,
``lambda_q = L_q0 I_s tanh(I_q / I_s) + c I_d I_q``. ``c`` (``cross``, default 0.05) is a
cross-saturation term (0 gives exactly the separable maps); it comes from the co-energy term
``c I_d I_q^2 / 2``, so the Jacobian stays
symmetric (reciprocity, d lambda_d / d I_q = d lambda_q / d I_d = c I_q) as a physical flux map must;
d lambda_q / d I_q = L_q0 sech^2(I_q / I_s) + c I_d.

A sample is ``x = (I_d, I_q, omega_e, v_d, v_q, R)`` (R travels with the measurement; it may differ
between motors or temperatures) and ``y = (dI_d/dt, dI_q/dt)``. The ground-truth flux maps are kept
(:attr:`PmsmSplits.flux`) for evaluation: the model never sees the flux, only the derivatives.

Registered as the dataset ``pmsm`` (``--data-root FILE``: a JSON or YAML file of
:class:`MotorParams` fields changes the motor); generated in well under a second, seeded. A CSV file
instead holds a motor's own measurements (:mod:`dartboard.data.pmsm_measured`): no simulator and no
true flux map then.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from dartboard.data.datasets import DatasetInfo, Splits
from dartboard.errors import DataError
from dartboard.user_files import parse_mapping

FEATURES = ("I_d", "I_q", "omega_e", "v_d", "v_q", "R")
TARGETS = ("dI_d/dt", "dI_q/dt")
DET_FLOOR = 1e-6  # a flux map whose Jacobian determinant falls below this anywhere is refused

FluxMap = Callable[[torch.Tensor], torch.Tensor]  # currents [B, 2] (I_d, I_q) -> flux [B, 2] (lambda_d, lambda_q)


@dataclass(frozen=True)
class MotorParams:
    """The simulated motor and how it is sampled (per unit; see the module docstring)."""

    R: float = 0.02
    P: int = 4
    lambda_f: float = 0.7
    L_d0: float = 0.5
    L_q0: float = 0.9
    I_s: float = 1.0
    cross: float = 0.05
    I_max: float = 1.25
    omega_min: float = 0.3
    omega_max: float = 1.0
    V_max: float = 1.0
    noise: float = 0.01  # std of the additive noise on each derivative, as a fraction of its std
    n_train: int = 4096
    n_val: int = 1024
    n_test: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("L_d0", "L_q0", "I_s", "I_max", "omega_min", "omega_max", "V_max")
        for name in positive:
            _check(name, getattr(self, name), lambda v: v > 0, "a number > 0")
        for name in ("R", "lambda_f", "noise"):
            _check(name, getattr(self, name), lambda v: v >= 0, "a number >= 0")
        _check("cross", self.cross, lambda v: True, "a number")
        if self.omega_min >= self.omega_max:
            raise DataError(f"omega_min: expected omega_min < omega_max, got {self.omega_min} >= {self.omega_max}")
        for name in ("P", "n_train", "n_val", "n_test", "seed"):
            value = getattr(self, name)
            low = 0 if name == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataError(f"{name}: expected an integer >= {low}, got {value!r}")
        # a lower bound of the tanh maps' Jacobian determinant in the current box (the corners)
        sech2 = 1.0 / math.cosh(self.I_max / self.I_s) ** 2
        c = abs(self.cross) * self.I_max
        worst = (self.L_d0 * sech2) * (self.L_q0 * sech2 - c) - c**2
        if worst <= DET_FLOOR:
            raise DataError(f"cross: {self.cross} makes the flux map's Jacobian singular inside the current box "
                            f"(det down to {worst:.3g} at |I_q| = I_max = {self.I_max}); a motor whose currents "
                            f"cannot be solved for is not simulated: lower cross or I_max")

    @classmethod
    def from_file(cls, path: str | Path) -> MotorParams:
        """Fields from a JSON or YAML mapping (unknown fields are refused by name)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"pmsm: --data-root {str(path)!r} is not a file; give a JSON or YAML file of motor "
                            f"parameters ({', '.join(f.name for f in dataclasses.fields(cls))}), a CSV file of "
                            f"measurements, or none")
        data = parse_mapping(path.read_text(), f"pmsm: {str(path)!r}", what="a mapping of motor parameters",
                             json_syntax=path.suffix == ".json", error=DataError)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"pmsm: unknown motor parameter {', '.join(map(repr, unknown))}; known: "
                            f"{', '.join(sorted(known))}")
        return cls(**data)


def _check(name: str, value: Any, ok: Callable[[float], bool], what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
        raise DataError(f"{name}: expected {what}, got {value!r}")


# ------------------------------------------------------------------ flux maps
def tanh_flux(params: MotorParams) -> FluxMap:
    """The simulator's saturating flux maps (module docstring), currents [B, 2] -> flux [B, 2]."""
    lf, ld, lq, s, c = params.lambda_f, params.L_d0, params.L_q0, params.I_s, params.cross

    def flux(currents: torch.Tensor) -> torch.Tensor:
        i_d, i_q = currents[..., 0], currents[..., 1]
        lam_d = lf + ld * s * torch.tanh(i_d / s) + 0.5 * c * i_q**2
        lam_q = lq * s * torch.tanh(i_q / s) + c * i_d * i_q
        return torch.stack([lam_d, lam_q], dim=-1)

    return flux


def tanh_jacobian(params: MotorParams, currents: torch.Tensor) -> torch.Tensor:
    """The analytic Jacobian [B, 2, 2] of :func:`tanh_flux`: rows lambda_d, lambda_q; columns I_d, I_q."""
    i_d, i_q = currents[..., 0], currents[..., 1]
    s, c = params.I_s, params.cross
    j_dd = params.L_d0 / torch.cosh(i_d / s) ** 2
    j_qq = params.L_q0 / torch.cosh(i_q / s) ** 2 + c * i_d
    j_dq = c * i_q  # d lambda_d / d I_q
    j_qd = c * i_q  # d lambda_q / d I_d
    return torch.stack([torch.stack([j_dd, j_dq], -1), torch.stack([j_qd, j_qq], -1)], -2)


def network_jacobian(flux: FluxMap, currents: torch.Tensor) -> torch.Tensor:
    """The Jacobian [B, 2, 2] of any differentiable flux map (a teacher network), by torch.func."""
    from torch.func import jacrev, vmap

    return vmap(jacrev(lambda i: flux(i.unsqueeze(0)).squeeze(0)))(currents)


def current_derivatives(x: torch.Tensor, flux: torch.Tensor, jac: torch.Tensor) -> torch.Tensor:
    """dI/dt = J^-1 (-R I + omega_e (lambda_q, -lambda_d) + v) (module docstring), [B, 2]."""
    i, omega, v, r = x[:, 0:2], x[:, 2], x[:, 3:5], x[:, 5]
    rhs = -r[:, None] * i + omega[:, None] * torch.stack([flux[:, 1], -flux[:, 0]], -1) + v
    return torch.linalg.solve(jac, rhs)


# ------------------------------------------------------------------ sampling
@dataclass
class Sample:
    x: torch.Tensor  # [n, 6] float64: I_d, I_q, omega_e, v_d, v_q, R
    y: torch.Tensor  # [n, 2] float64: measured dI/dt (with noise)
    y_clean: torch.Tensor  # [n, 2] noiseless dI/dt
    flux: torch.Tensor  # [n, 2] true (lambda_d, lambda_q)
    jacobian: torch.Tensor  # [n, 2, 2]


def sample_operating_points(params: MotorParams, n: int, generator: torch.Generator) -> torch.Tensor:
    """x [n, 6] (float64): currents in the box, |omega_e| in [omega_min, omega_max] with a random sign,
    voltages uniform in the voltage circle, R."""
    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    currents = (2 * u(n, 2) - 1) * params.I_max
    sign = torch.where(u(n) < 0.5, -1.0, 1.0).to(torch.float64)
    omega = sign * (params.omega_min + (params.omega_max - params.omega_min) * u(n))
    radius, angle = params.V_max * u(n).sqrt(), 2 * math.pi * u(n)
    volts = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], -1)
    resistance = torch.full((n,), float(params.R), dtype=torch.float64)
    return torch.cat([currents, omega[:, None], volts, resistance[:, None]], dim=1)


def simulate(params: MotorParams, n: int, seed: int, flux_map: FluxMap | None = None) -> Sample:
    """``n`` measurements of the motor (its tanh maps, or ``flux_map``: any differentiable
    (I_d, I_q) -> (lambda_d, lambda_q), e.g. a teacher network), seeded, in float64."""
    g = torch.Generator().manual_seed(seed)
    x = sample_operating_points(params, n, g)
    currents = x[:, :2]
    if flux_map is None:
        flux, jac = tanh_flux(params)(currents), tanh_jacobian(params, currents)
    else:
        with torch.no_grad():
            flux = flux_map(currents)
        jac = network_jacobian(flux_map, currents).detach()
    det = torch.linalg.det(jac)
    if not bool((det.abs() > DET_FLOOR).all()):
        bad = int((det.abs() <= DET_FLOOR).sum())
        raise DataError(f"flux map: its Jacobian is singular (|det| <= {DET_FLOOR}) at {bad} of {n} operating "
                        "points; the current derivatives are not defined there")
    y_clean = current_derivatives(x, flux, jac)
    y = y_clean
    if params.noise > 0:
        y = y_clean + params.noise * y_clean.std(dim=0) * torch.randn(y_clean.shape, generator=g, dtype=torch.float64)
    return Sample(x, y, y_clean, flux, jac)


def torque(params: MotorParams, currents: torch.Tensor, flux: torch.Tensor) -> torch.Tensor:
    """Electromagnetic torque (Eq 6.9): 3/2 P (lambda_d I_q - lambda_q I_d)."""
    return 1.5 * params.P * (flux[..., 0] * currents[..., 1] - flux[..., 1] * currents[..., 0])


# ------------------------------------------------------------------ splits
@dataclass
class PmsmSplits(Splits):
    """train / test (the search splits ``train`` 50/50 into its own train and val), ``val`` for the
    final training, the motor and its true flux map (evaluation only; both None for measured data)."""

    val: TensorDataset | None = None
    params: MotorParams | None = None
    flux: FluxMap | None = None

    def current_limit(self) -> float:
        """The largest current magnitude of the data's box: the simulator's I_max, or the measured maximum."""
        if self.params is not None:
            return self.params.I_max
        return float(self.train.tensors[0][:, :2].abs().max())


def make_splits(params: MotorParams, flux_map: FluxMap | None = None, name: str = "pmsm") -> PmsmSplits:
    """Disjoint train / val / test samples (seeds ``seed``, ``seed + 1``, ``seed + 2``) as float32."""
    def part(n: int, offset: int) -> TensorDataset:
        s = simulate(params, n, params.seed * 3 + offset, flux_map)
        return TensorDataset(s.x.float(), s.y.float())

    info = DatasetInfo(name, in_channels=len(FEATURES), input_size=1, num_classes=len(TARGETS))
    return PmsmSplits(part(params.n_train, 0), part(params.n_test, 2), info, val=part(params.n_val, 1), params=params,
                      flux=flux_map or tanh_flux(params))


@functools.lru_cache(maxsize=8)
def _cached(params: MotorParams) -> PmsmSplits:
    return make_splits(params)


def load_pmsm(root: str | None = None, image_size: int = 0) -> PmsmSplits:
    """The registered loader: the default motor, the parameters in the file ``root``, or the measurements in
    the CSV file ``root`` (:mod:`dartboard.data.pmsm_measured`)."""
    from dartboard.data.pmsm_measured import is_measurements, measured_datasets

    if is_measurements(root):
        parts = measured_datasets(root, FEATURES, TARGETS)
        info = DatasetInfo("pmsm", in_channels=len(FEATURES), input_size=1, num_classes=len(TARGETS))
        return PmsmSplits(parts["train"], parts["test"], info, val=parts["val"])
    params = MotorParams() if root is None else MotorParams.from_file(root)
    return _cached(params)

