"""DARTS variants as data: every preset is a dict of parts + hyperparameters, built by ONE
generic builder (DESIGN.md, "the one idea").

Parts (all selectable from a user's options):

- ``activation``: softmax | sigmoid | crb | capped_simplex | simplex (a projection or CRB
  masking goes with the last three, see ``activations.ACTIVATION_CONSTRAINTS``);
- ``schedule`` + ``schedule_options``: alternate | constant (CS-k) | fimt;
- ``regularizers``: a list of names or ``{"name": ..., **options}`` (zero_one, l1,
  proximity, admm, beta_decay);
- ``monitors``: epoch hooks, e.g. ``{"name": "rdarts", "mode": "es" | "ada"}``;
- ``discretizer`` + ``discretizer_options``, ``space`` and every DartsConfig field;
- ``alpha_init``: "default" (DartsConfig) or "uniform" (1/|O| + alpha_init_scale * randn);
- ``arch_optimizer``: adam | sgd; ``arch_lr_schedule``: constant | cosine.

Maile et al.'s Table 1 rows are compositions of the fragments ``cs10``, ``fimt``, ``crb``,
``pr`` and ``admm``: ``darts+pr+fimt`` is ``merge(pr, fimt)``, nothing is copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dartboard.searchers.activations import ACTIVATION_CONSTRAINTS, SimplexProjection
from dartboard.searchers.darts import BilevelSearcher, DartsConfig
from dartboard.searchers.darts_presets import darts_config
from dartboard.searchers.rdarts import MONITORS
from dartboard.searchers.registry import DataShape, dataclass_options, register_searcher
from dartboard.searchers.regularizers import make_regularizer
from dartboard.searchers.schedules import make_schedule

CRB_INIT_SCALE = 1e-4  # Maile et al. (ALGORITHMS.md): CRB alpha init 1/|O| + 1e-4 * randn


class VariantSearcher(BilevelSearcher):
    """BilevelSearcher with epoch hooks (monitors), alpha-init/optimizer choices and the
    per-epoch metrics of its parts."""

    name = "darts-variant"

    def __init__(self, config: DartsConfig, *, regularizers: Sequence[Any] = (), schedule: Any = None,
                 monitors: Sequence[Any] = (), alpha_init: str = "default", arch_optimizer: str = "adam",
                 arch_lr_schedule: str = "constant"):
        if alpha_init not in ("default", "uniform"):
            raise ValueError(f"alpha_init: expected 'default' or 'uniform', got {alpha_init!r}")
        if arch_optimizer not in ("adam", "sgd"):
            raise ValueError(f"arch_optimizer: expected 'adam' or 'sgd', got {arch_optimizer!r}")
        if arch_lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"arch_lr_schedule: expected 'constant' or 'cosine', got {arch_lr_schedule!r}")
        self.alpha_init_mode, self.arch_optimizer_name = alpha_init, arch_optimizer
        super().__init__(config, regularizers=regularizers, schedule=schedule)
        self.monitors = list(monitors)
        self.last_val_batch = None
        self.arch_schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs, eta_min=0.0)
                                for opt in self.arch_optimizers] if arch_lr_schedule == "cosine" else []
        with torch.no_grad():  # start feasible (projections) and with the masks the init implies
            for part in self.regularizers:
                if isinstance(part, SimplexProjection):
                    part.after_arch_step(self)

    def alpha_init(self, shape: tuple[int, int]) -> torch.Tensor:
        if self.alpha_init_mode == "uniform":
            return 1.0 / shape[1] + self.config.alpha_init_scale * torch.randn(shape)
        return super().alpha_init(shape)

    def build_arch_optimizers(self) -> list[torch.optim.Optimizer]:
        if getattr(self, "arch_optimizer_name", "adam") == "sgd":  # plain projected gradient
            c = self.config
            return [torch.optim.SGD(self.arch.parameters(), lr=c.arch_lr, weight_decay=c.arch_weight_decay)]
        return super().build_arch_optimizers()

    def step(self, train_batch, val_batch) -> None:
        self.last_val_batch = val_batch  # for curvature monitors at the end of the epoch
        super().step(train_batch, val_batch)

    def end_epoch(self) -> dict[str, float]:
        for sched in self.arch_schedulers:
            sched.step()
        return super().end_epoch()

    def extra_epoch_metrics(self) -> dict[str, float]:
        metrics = {"active_ops": float(sum(len(a) for cell in self.active_ops() for a in cell)),
                   "arch_lr": float(self.arch_optimizers[0].param_groups[0]["lr"])}
        if hasattr(self.schedule, "metrics"):
            metrics.update(self.schedule.metrics())
        for part in self.regularizers:
            if hasattr(part, "metrics"):
                metrics.update(part.metrics(self))
        for monitor in self.monitors:
            metrics.update(monitor.end_epoch(self))
        return metrics

    # checkpoints: the base state (what R-DARTS rolls back to) plus the monitors' own state
    def base_state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["arch_schedulers"] = [s.state_dict() for s in self.arch_schedulers]
        return state

    def base_load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for sched, s in zip(self.arch_schedulers, state.get("arch_schedulers", []), strict=False):
            sched.load_state_dict(s)

    def state_dict(self) -> dict[str, Any]:
        state = self.base_state_dict()
        state["monitors"] = [m.state_dict() for m in self.monitors]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_load_state_dict(state)
        for monitor, s in zip(self.monitors, state.get("monitors", []), strict=False):
            monitor.load_state_dict(s)


# ----------------------------------------------------------------------------- the builder
VARIANT_OPTIONS = ("regularizers", "schedule", "schedule_options", "monitors", "alpha_init", "arch_optimizer",
                   "arch_lr_schedule", "activation_constraint")


def _make_monitor(spec: str | dict[str, Any]):
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name not in MONITORS:
        raise ValueError(f"monitors: unknown monitor {name!r}; known: {', '.join(sorted(MONITORS))}")
    try:
        return MONITORS[name](**spec)
    except TypeError as err:
        raise ValueError(f"monitors: bad options for {name!r}: {err}") from None


def build_variant(options: dict[str, Any], shape: DataShape, device: str) -> VariantSearcher:
    """The one builder of every preset and user combination."""
    opts = dict(options)
    regularizer_specs = list(opts.pop("regularizers", []) or [])
    schedule = make_schedule(opts.pop("schedule", "alternate"), opts.pop("schedule_options", None))
    monitors = [_make_monitor(m) for m in opts.pop("monitors", []) or []]
    variant = {k: opts.pop(k) for k in ("alpha_init", "arch_optimizer", "arch_lr_schedule") if k in opts}
    constraint = opts.pop("activation_constraint", True)
    config = darts_config(opts, shape, device)
    parts = [make_regularizer(s) for s in regularizer_specs]
    if constraint and config.activation in ACTIVATION_CONSTRAINTS:
        parts.append(ACTIVATION_CONSTRAINTS[config.activation]())
    return VariantSearcher(config, regularizers=parts, schedule=schedule, monitors=monitors, **variant)


def merge(*fragments: dict[str, Any]) -> dict[str, Any]:
    """Compose option fragments: ``regularizers``/``monitors`` lists concatenate, other keys
    must agree (a conflict is an error naming the key)."""
    out: dict[str, Any] = {}
    for frag in fragments:
        for key, value in frag.items():
            if key in ("regularizers", "monitors"):
                out[key] = list(out.get(key, [])) + list(value)
            elif key in out and out[key] != value:
                raise ValueError(f"preset fragments disagree on {key!r}: {out[key]!r} vs {value!r}")
            else:
                out[key] = value
    return out


# Fragments (data). Sources: ALGORITHMS.md and the papers named in each comment.
FRAGMENTS: dict[str, dict[str, Any]] = {
    # Maile et al. 4: CS10, one alpha step per 10 weight steps.
    "cs10": {"schedule": "constant", "schedule_options": {"k": 10}},
    # Maile et al. 3.2 / 4.1: FIMT, expected ratio 10, EWMA 0.2.
    "fimt": {"schedule": "fimt", "schedule_options": {"k": 10}},
    # Maile et al. 3.1 / 4.1: clipped ReLU, node BN, no none, init 1/|O| + 1e-4 randn, arch wd off.
    "crb": {"activation": "crb", "node_bn": True, "space": "darts-none", "alpha_init": "uniform",
            "alpha_init_scale": CRB_INIT_SCALE, "arch_weight_decay": 0.0, "arch_lr_schedule": "constant"},
    # Maile et al. 3.3 / 4.1: proximity regularization, rho_p = 0.1.
    "pr": {"regularizers": [{"name": "proximity"}]},
    # Maile et al. 3.4 / 4.1: ADMM, rho_a = 0.1, lambda_u = 0.8, period 10.
    "admm": {"regularizers": [{"name": "admm"}]},
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "darts-variant": ("DARTS with any combination of parts from the options", {}),
    "fairdarts": ("FairDARTS (thesis 3.2.1): sigmoid + zero-one loss (w01 = 10), no none", {
        "activation": "sigmoid", "space": "darts-none", "alpha_init_constant": 0.0,
        "regularizers": [{"name": "zero_one"}],
        # FairDARTS reference optimizers (ALGORITHMS.md FairDARTS).
        "arch_lr": 3e-3, "arch_betas": (0.9, 0.999), "arch_weight_decay": 1e-3, "w_lr": 0.005}),
    "sparse-darts": ("Sparse DARTS (Ito): capped-simplex alphas, projected gradient, l1", {
        "activation": "capped_simplex", "alpha_init": "uniform", "arch_weight_decay": 0.0,
        "regularizers": [{"name": "l1"}]}),
    "beta-darts": ("beta-DARTS (Ye et al. 2022): beta-decay regularization, ramp 50 * epoch / 100", {
        "space": "darts-none", "regularizers": [{"name": "beta_decay"}]}),
    "rdarts-es": ("R-DARTS DARTS-ES: Hessian eigenvalue early stopping", {
        "monitors": [{"name": "rdarts", "mode": "es"}]}),
    "rdarts-ada": ("R-DARTS DARTS-ADA: rollback and weight decay x10 on rising curvature", {
        "monitors": [{"name": "rdarts", "mode": "ada"}]}),
}
# Maile et al. Table 1 rows: compositions of fragments.
for _row in ("cs10", "fimt", "crb", "fimt+crb", "pr", "pr+fimt", "pr+fimt+crb", "admm", "admm+fimt",
             "admm+fimt+crb"):
    PRESETS[f"darts+{_row}"] = (f"Maile et al. Table 1: DARTS+{_row.upper()}",
                                merge(*(FRAGMENTS[f] for f in _row.split("+"))))

OPTIONS = dataclass_options(DartsConfig) + VARIANT_OPTIONS


def _register(name: str, description: str, defaults: dict[str, Any]) -> None:
    register_searcher(name, description, options=OPTIONS, defaults=defaults)(build_variant)


for _name, (_description, _defaults) in PRESETS.items():
    _register(_name, _description, _defaults)
