"""Training and evaluating a PMSM flux model (thesis 6.2.3) from a ``flux_mlp`` genotype.

The model is trained through criterion C only (it never sees the flux); evaluation reports C on the
val and test splits and, against the simulator's ground truth, the flux error (RMSE of lambda_d and
lambda_q on the test split's operating points and on a grid over the current box) and the torque
error (Eq 6.9) the flux implies. :func:`plot_flux_maps` draws learned vs true flux (the thesis's
Fig 6.15 as a picture).

The learned flux is identifiable: a constant offset on lambda_d (lambda_q) changes the q (d) row of
the residual by omega_e times the offset, and omega_e is kept away from 0 by the simulator.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dartboard.data.datasets import check_batch, make_loader
from dartboard.data.pmsm import PmsmSplits, torque
from dartboard.errors import UserInputError, message_line
from dartboard.model_files import FLUX_RESULT_FILE, WEIGHTS_FILE
from dartboard.searchers.base import seed_everything
from dartboard.searchers.parts.pmsm import DET_FLOOR, predicted_derivatives
from dartboard.spaces.pmsm import FluxNet, count_parameters
from dartboard.spaces.pmsm_genotype import FluxMlpGenotype

log = logging.getLogger("dartboard")


@dataclass
class FluxTrainConfig:
    epochs: int = 150
    batch_size: int = 128
    lr: float = 3e-3  # Adam, cosine to lr_min
    lr_min: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    form: str = "physical"
    det_floor: float = DET_FLOOR
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")


@dataclass
class FluxTrainResult:
    genotype: dict[str, Any]
    criterion_val: float
    criterion_test: float
    singular_test: float
    parameters: int
    seconds: float
    epochs: int
    seed: int
    # against the simulator's true flux map; None on measured data, which has none
    flux_rmse_d: float | None = None
    flux_rmse_q: float | None = None
    flux_rmse: float | None = None  # sqrt of the mean of both squared errors, test split
    flux_rmse_grid: float | None = None  # the same on a 41 x 41 grid over the current box
    torque_rmse: float | None = None


class TrainingDiverged(FloatingPointError):
    """The criterion became NaN or inf while training a flux model."""


def criterion_on(net: FluxNet, dataset: Any, form: str, det_floor: float, device: torch.device
                 ) -> tuple[float, float]:
    """(criterion C, fraction of near-singular samples) over ``dataset`` (a TensorDataset)."""
    x, y = (t.to(device) for t in dataset.tensors)
    with torch.no_grad():
        pred, singular = predicted_derivatives(net(x), form, det_floor)
    return float(((pred - y) ** 2).mean()), float(singular.float().mean())


def flux_errors(net: FluxNet, splits: PmsmSplits, device: torch.device) -> dict[str, float]:
    """Flux and torque errors against the simulator's ground truth (test split and a grid); none on measured
    data."""
    params = splits.params
    if splits.flux is None or params is None:
        return {}
    x = splits.test.tensors[0].to(device)
    currents = x[:, :2]
    with torch.no_grad():
        learned = net.flux(currents)
        true = splits.flux(currents.double()).float().to(device)
        err = (learned - true) ** 2
        axis = torch.linspace(-params.I_max, params.I_max, 41, device=device)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
        grid_err = (net.flux(grid) - splits.flux(grid.double()).float().to(device)) ** 2
        t_err = (torque(params, currents, learned) - torque(params, currents, true)) ** 2
    return {"flux_rmse_d": math.sqrt(float(err[:, 0].mean())), "flux_rmse_q": math.sqrt(float(err[:, 1].mean())),
            "flux_rmse": math.sqrt(float(err.mean())), "flux_rmse_grid": math.sqrt(float(grid_err.mean())),
            "torque_rmse": math.sqrt(float(t_err.mean()))}


def train_flux_model(genotype: FluxMlpGenotype, splits: PmsmSplits, cfg: FluxTrainConfig,
                     out_dir: str | Path | None = None,
                     on_epoch: Callable[[int, float], None] | None = None) -> tuple[FluxNet, FluxTrainResult]:
    """Train the network of ``genotype`` on ``splits.train`` through criterion C (Adam, cosine),
    then evaluate it. ``out_dir``: where ``weights.safetensors`` and ``result.json`` go."""
    from dartboard.spaces.genotype import to_dict

    if not isinstance(splits, PmsmSplits):
        raise ValueError("data: a flux model is trained on PMSM data (dataset 'pmsm')")
    check_batch(cfg.batch_size, {"training split": len(splits.train)})  # the loader drops a last partial batch
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    net = FluxNet(genotype).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs, eta_min=cfg.lr_min)
    loader = make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        total, n = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            pred, _ = predicted_derivatives(net(x), cfg.form, cfg.det_floor)
            loss = torch.mean((pred - y) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            total, n = total + float(loss.detach()) * y.shape[0], n + y.shape[0]
        sched.step()
        if not math.isfinite(total):
            raise TrainingDiverged(f"training {genotype.describe()}: criterion C became {total / n} in epoch "
                                   f"{epoch + 1}; lower lr")
        if on_epoch is not None:
            on_epoch(epoch, total / n)
    seconds = time.perf_counter() - start
    net.eval()
    c_val, _ = criterion_on(net, splits.val, cfg.form, cfg.det_floor, device)
    c_test, singular = criterion_on(net, splits.test, cfg.form, cfg.det_floor, device)
    result = FluxTrainResult(to_dict(genotype), c_val, c_test, singular_test=singular, parameters=count_parameters(net),
                             seconds=seconds, epochs=cfg.epochs, seed=cfg.seed, **flux_errors(net, splits, device))
    if out_dir is not None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(weights, str(out / WEIGHTS_FILE))
        (out / FLUX_RESULT_FILE).write_text(json.dumps({**asdict(result), "config": asdict(cfg),
                                                   "data": {"current_limit": splits.current_limit()}}, indent=1))
    return net, result


def load_flux_model(folder: str | Path) -> tuple[FluxNet, dict[str, Any]]:
    """A flux model that :func:`train_flux_model` saved (``pmsm compare``'s ``OUT/models/NAME/seedN``): the network
    in evaluation mode, and its ``result.json``."""
    from safetensors.torch import load_file

    from dartboard.spaces.genotype import from_dict

    folder = Path(folder)
    missing = [name for name in (FLUX_RESULT_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserInputError(f"flux model {str(folder)!r}: no {' and no '.join(missing)} there; `dartboard pmsm "
                             f"compare` writes a trained flux model to OUT/models/NAME/seedN")
    try:
        result = json.loads((folder / FLUX_RESULT_FILE).read_text())
        genotype = from_dict(result["genotype"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"flux model {str(folder)!r}: {FLUX_RESULT_FILE} is not a flux model's result "
                             f"({type(err).__name__}: {err})") from None
    net = FluxNet(genotype)
    try:
        net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except RuntimeError as err:
        raise UserInputError(f"flux model {str(folder)!r}: {WEIGHTS_FILE} does not fit {genotype.describe()} "
                             f"({message_line(err)})") from None
    return net.eval(), result


#: Grid points a flux table computes in one forward (1001 x 1001 points at once peaked at 2.1 GB).
FLUX_TABLE_CHUNK = 65536


def flux_table(net: FluxNet, limit: float, points: int) -> dict[str, torch.Tensor]:
    """The learned flux map on a ``points`` x ``points`` grid of currents over [-limit, limit]^2 (I_d slowest): the
    currents, the flux and its Jacobian, i.e. the differential inductances (L_dd = d lambda_d / d I_d, L_dq = d
    lambda_d / d I_q, L_qd, L_qq), each a column of ``points**2`` values."""
    axis = torch.linspace(-limit, limit, points)
    currents = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    x = torch.cat([currents, torch.zeros(len(currents), 4)], 1)  # the model reads the currents only
    fluxes, jacs = [], []
    with torch.no_grad():  # FLUX_TABLE_CHUNK rows at a time: the Jacobian's work takes about 2 kB a row
        for start in range(0, len(x), FLUX_TABLE_CHUNK):
            out = net(x[start:start + FLUX_TABLE_CHUNK])
            fluxes.append(out.flux)
            jacs.append(out.jac)
    flux, jac = torch.cat(fluxes), torch.cat(jacs)
    return {"I_d": currents[:, 0], "I_q": currents[:, 1], "lambda_d": flux[:, 0], "lambda_q": flux[:, 1],
            "L_dd": jac[:, 0, 0], "L_dq": jac[:, 0, 1], "L_qd": jac[:, 1, 0], "L_qq": jac[:, 1, 1]}


def plot_flux_maps(models: Mapping[str, FluxNet], splits: PmsmSplits, path: str | Path,
                   slices: tuple[float, ...] | None = None) -> Path:
    """Learned vs true flux: lambda_d against I_d and lambda_q against I_q, at a few values of the
    other current (columns), one colour per model, the truth dashed black (thesis Fig 6.15); on measured
    data the learned maps alone, over the measured currents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit = splits.current_limit()
    axis = torch.linspace(-limit, limit, 101)
    slices = slices or (-0.8 * limit, 0.0, 0.8 * limit)  # -1, 0, 1 p.u. for the default motor
    fig, axes = plt.subplots(2, len(slices), figsize=(3.4 * len(slices), 6.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, (label, k) in enumerate((("d", 0), ("q", 1))):
        for col, other in enumerate(slices):
            ax = axes[row][col]
            currents = torch.stack([axis, torch.full_like(axis, other)], -1) if k == 0 else \
                torch.stack([torch.full_like(axis, other), axis], -1)
            if splits.flux is not None:
                true = splits.flux(currents.double()).float()[:, k]
                ax.plot(axis, true, "k--", linewidth=2, label="true (simulator)")
            for m, (name, net) in enumerate(models.items()):
                device = next(net.parameters()).device
                with torch.no_grad():
                    learned = net.flux(currents.to(device)).cpu()[:, k]
                ax.plot(axis, learned, color=colors[m % len(colors)], linewidth=1.4, label=name)
            other_name = "I_q" if k == 0 else "I_d"
            ax.set_title(f"lambda_{label} vs I_{label}, {other_name} = {other:.3g}", fontsize=9)
            ax.set_xlabel(f"I_{label} (p.u.)", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[row][0].set_ylabel(f"lambda_{label} (p.u.)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
