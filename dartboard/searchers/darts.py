"""DARTS (thesis 2.7; Liu et al.), written as the composable bilevel searcher of the family.

A variant is ``activation x schedule x regularizers x discretizer`` over a cell space
(DESIGN.md, "the one idea"); this module holds the bilevel loop they plug into:

- first order: the alpha step takes grad_alpha L_val(w, alpha) with the current w;
- second order (unrolled, thesis Eq 2.8): w' = w - eta (m * buf + grad_w L_train + wd * w),
  grad_alpha L_val(w', alpha) - eta * grad^2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha),
  the Hessian-vector product by finite differences with R = 0.01 / ||grad_w' L_val||.

No ``.item()`` and no branching on tensor values inside :meth:`BilevelSearcher.step`
(a schedule that must read a tensor, such as FIMT, says so itself).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call

from dartboard.searchers.activations import get_activation
from dartboard.searchers.base import (
    ArchParameters,
    Batch,
    EpochMeter,
    accuracy_count,
    rng_state,
    set_rng_state,
    to_device,
)
from dartboard.searchers.discretize import get_discretizer
from dartboard.searchers.protocol import AlphaGroup, GradReducer, ModuleWrapper
from dartboard.spaces.catalog import CellSpace, get_space
from dartboard.spaces.genotype import CellsGenotype, DartsGenotype, Genotype
from dartboard.spaces.networks import SearchNetwork, default_reductions


@dataclass
class DartsConfig:
    """Hyperparameters of a DARTS-family search; defaults are the published DARTS ones
    (ALGORITHMS.md, DARTS; Liu et al. 2019, CIFAR-10 search)."""

    space: str = "darts"
    C: int = 16  # DARTS search: 16 initial channels
    layers: int = 8  # DARTS search: 8 cells
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    num_classes: int = 10
    in_channels: int = 3
    input_size: int = 32
    epochs: int = 50  # DARTS: 50 search epochs
    warmup_epochs: int = 0  # epochs training weights only (DARTOpti: 5)
    order: int = 1  # 1 = first order, 2 = unrolled second order
    w_lr: float = 0.025  # DARTS: SGD lr 0.025, cosine to 0.001
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4  # DARTS: Adam lr 3e-4, betas (0.5, 0.999), wd 1e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    alpha_init_scale: float = 1e-3  # DARTS: alpha = 1e-3 * randn
    alpha_init_constant: float | None = None  # FairDARTS: 0
    activation: str = "softmax"
    discretizer: str = "darts"
    discretizer_options: dict[str, Any] = field(default_factory=dict)
    unrolled_r: float = 0.01  # DARTS: R = 0.01 / ||grad_w' L_val||
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    node_bn: bool = False
    reductions: tuple[int, ...] | None = None  # reduction cell positions; None: layers//3, 2*layers//3
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.order not in (1, 2):
            raise ValueError(f"order: expected 1 or 2, got {self.order}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: expected fp32, bf16 or fp16, got {self.precision!r}")
        for name in ("C", "layers", "steps", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")


class Regularizer(Protocol):
    """A term added to the validation loss in the alpha step (or a post-step projection)."""

    def loss(self, searcher: BilevelSearcher, group_weights: Sequence[torch.Tensor]) -> torch.Tensor: ...

    def after_arch_step(self, searcher: BilevelSearcher) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Schedule(Protocol):
    """Decides, before each iteration, whether the alpha step runs (weights always step)."""

    def arch_step_due(self) -> bool: ...

    def after_weight_step(self, grad_sq_norm: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class AlternateSchedule:
    """DARTS: one alpha step, then one weight step, every iteration; the data split 50/50."""

    needs_grad_norm = False
    train_fraction = 0.5

    def metrics(self) -> dict[str, float]:
        return {}

    def arch_step_due(self) -> bool:
        return True

    def after_weight_step(self, grad_sq_norm: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class BilevelSearcher:
    """The DARTS-family searcher. Subclasses change the cell grouping (``cell_groups``),
    the losses (``arch_loss``) or the derivation; parts change by configuration."""

    name = "darts"

    def __init__(self, config: DartsConfig, *, regularizers: Sequence[Regularizer] = (),
                 schedule: Schedule | None = None, space: CellSpace | None = None):
        self.config = config
        self.device = torch.device(config.device)
        self.space = space or get_space(config.space)
        if self.space.steps != config.steps:
            raise ValueError(f"steps: space {self.space.name!r} has {self.space.steps} steps, "
                             f"config says {config.steps}")
        self.activation = get_activation(config.activation)
        self.discretize = get_discretizer(config.discretizer)
        self.regularizers = list(regularizers)
        self.schedule = schedule or AlternateSchedule()
        self.reductions = (default_reductions(config.layers) if config.reductions is None
                           else tuple(int(r) for r in config.reductions))
        self.network = self.build_network().to(self.device)
        group_primitives, cell_group = self.cell_groups()
        self.group_primitives = group_primitives
        self.arch = ArchParameters([(len(p), len(p[0])) for p in group_primitives], cell_group,
                                   self.alpha_init).to(self.device)
        self.w_optimizer = torch.optim.SGD(self.network.parameters(), lr=config.w_lr, momentum=config.w_momentum,
                                           weight_decay=config.w_weight_decay)
        self.w_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, config.epochs,
                                                                      eta_min=config.w_lr_min)
        self.arch_optimizers = self.build_arch_optimizers()
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
        fp16 = config.precision == "fp16"
        self.w_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.arch_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        # Set by the platform for distributed runs: the module used for the weight step
        # (e.g. DDP-wrapped) and a hook averaging alpha gradients over ranks.
        self.train_module: nn.Module = self.network
        self.reduce_arch_grads: Callable[[Sequence[torch.Tensor]], None] = lambda grads: None
        self.epoch = 0
        self.global_step = 0
        self.arch_steps = 0
        self.meter = EpochMeter()
        self.history: list[dict[str, Any]] = []  # per-epoch metrics + alpha snapshots
        self._metrics: dict[str, float] = {}
        self.stop_requested = False

    # ------------------------------------------------------------------ construction
    def build_network(self) -> SearchNetwork:
        c = self.config
        return SearchNetwork(
            normal_primitives=self.space.normal, reduce_primitives=self.space.reduce, C=c.C,
            num_classes=c.num_classes, layers=c.layers, steps=c.steps, multiplier=c.multiplier,
            stem_multiplier=c.stem_multiplier, in_channels=c.in_channels, input_size=c.input_size,
            reductions=self.reductions, node_bn=c.node_bn,
        )

    def cell_groups(self) -> tuple[list[tuple[tuple[str, ...], ...]], list[int]]:
        """DARTS: two groups of alphas, normal (0) and reduce (1)."""
        cell_group = [1 if i in self.reductions else 0 for i in range(self.config.layers)]
        return [self.space.normal, self.space.reduce], cell_group

    def alpha_init(self, shape: tuple[int, int]) -> torch.Tensor:
        if self.config.alpha_init_constant is not None:
            return torch.full(shape, float(self.config.alpha_init_constant))
        return self.config.alpha_init_scale * torch.randn(shape)

    def build_arch_optimizers(self) -> list[torch.optim.Optimizer]:
        c = self.config
        # fused: the default Adam reads its step counter with .item() (a host sync per step)
        return [torch.optim.Adam(self.arch.parameters(), lr=c.arch_lr, betas=c.arch_betas,
                                 weight_decay=c.arch_weight_decay, fused=True)]

    # ------------------------------------------------------------------ forward pieces
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def group_weights(self) -> list[torch.Tensor]:
        return self.arch.group_weights(self.activation)

    def cell_weights(self, group_weights: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        gw = self.group_weights() if group_weights is None else group_weights
        return self.arch.cell_weights(gw)

    def logits(self, x: torch.Tensor, cell_weights: Sequence[torch.Tensor], module: nn.Module | None = None
               ) -> torch.Tensor:
        with self.autocast():
            return (module or self.network)(x, cell_weights)

    @staticmethod
    def criterion(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if logits.dtype in (torch.float16, torch.bfloat16):  # the loss is computed in fp32 under autocast
            logits = logits.float()
        return nn.functional.cross_entropy(logits, y)

    def regularization(self, group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for reg in self.regularizers:
            total = total + reg.loss(self, group_weights)
        return total

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L_val(w, alpha) + regularizers; records validation metrics on the way."""
        gw = self.group_weights()
        logits = self.logits(x, self.arch.cell_weights(gw))
        loss = self.criterion(logits, y)
        self.meter.add("val_loss", loss * y.numel(), y.numel())
        self.meter.add("val_acc", accuracy_count(logits, y), y.numel())
        return loss + self.regularization(gw)

    # ------------------------------------------------------------------ Searcher protocol
    @property
    def epochs(self) -> int:
        return int(self.config.epochs)

    @property
    def train_fraction(self) -> float:
        return float(getattr(self.schedule, "train_fraction", 0.5))

    def arch_parameters(self) -> list[torch.Tensor]:
        return list(self.arch.parameters())

    def weight_parameters(self) -> list[torch.Tensor]:
        return list(self.network.parameters())

    def distribute(self, wrap: ModuleWrapper, reduce_arch_grads: GradReducer) -> None:
        self.train_module = wrap(self.network)
        self.reduce_arch_grads = reduce_arch_grads

    def group_names(self) -> list[str]:
        if len(self.group_primitives) == 2 and self.arch.cell_group == tuple(
                1 if i in self.reductions else 0 for i in range(self.config.layers)):
            return ["normal", "reduce"]
        return [f"group_{g}" for g in range(len(self.group_primitives))]

    def group_rows(self, group: int) -> tuple:
        return tuple(self.network.edges)

    def alpha_groups(self) -> list[AlphaGroup]:
        return [AlphaGroup(name, self.group_rows(g), tuple(self.group_primitives[g]))
                for g, name in enumerate(self.group_names())]

    @property
    def progress(self) -> float:
        """Fraction of the search done, in [0, 1] (for ramps such as the proximity weight)."""
        return min(1.0, self.epoch / max(1, self.config.epochs))

    # ------------------------------------------------------------------ the step
    def step(self, train_batch: Batch, val_batch: Batch) -> None:
        x_train, y_train = to_device(train_batch, self.device)
        if self.epoch >= self.config.warmup_epochs and self.schedule.arch_step_due():
            x_val, y_val = to_device(val_batch, self.device)
            self.arch_step(x_train, y_train, x_val, y_val)
        self.weight_step(x_train, y_train)
        self.global_step += 1

    def arch_step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
                  ) -> None:
        alphas = list(self.arch.parameters())
        if self.config.order == 2:
            grads = self.unrolled_arch_grads(x_train, y_train, x_val, y_val)
        else:
            loss = self.arch_loss(x_val, y_val)
            grads = torch.autograd.grad(self.arch_scaler.scale(loss), alphas, allow_unused=True)
            grads = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads, strict=True)]
        self.apply_arch_grads(grads)

    def apply_arch_grads(self, grads: Sequence[torch.Tensor]) -> None:
        alphas = list(self.arch.parameters())
        self.reduce_arch_grads(grads)
        for a, g in zip(alphas, grads, strict=True):
            a.grad = g
        for opt in self.arch_optimizers:
            self.arch_scaler.step(opt)
        self.arch_scaler.update()
        for opt in self.arch_optimizers:
            opt.zero_grad(set_to_none=True)
        self.arch_steps += 1
        for reg in self.regularizers:
            reg.after_arch_step(self)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            cell_weights = [w.detach() for w in self.cell_weights()]
        self.w_optimizer.zero_grad(set_to_none=True)
        logits = self.logits(x, cell_weights, self.train_module)
        loss = self.criterion(logits, y)
        self.w_scaler.scale(loss).backward()
        self.w_scaler.unscale_(self.w_optimizer)
        params = [p for p in self.network.parameters() if p.grad is not None]
        if getattr(self.schedule, "needs_grad_norm", False):
            # Fisher information trace (FIMT): sum ||grad w||^2 before clipping.
            self.schedule.after_weight_step(torch.stack([p.grad.float().pow(2).sum() for p in params]).sum())
        nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.w_scaler.step(self.w_optimizer)
        self.w_scaler.update()
        self.meter.add("train_loss", loss.detach() * y.numel(), y.numel())
        self.meter.add("train_acc", accuracy_count(logits, y), y.numel())

    # ------------------------------------------------------------------ second order
    def _train_loss_fn(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                       cell_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        with self.autocast():
            logits = functional_call(self.network, params, (x, list(cell_weights)))
        return self.criterion(logits, y)

    def unrolled_arch_grads(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                            y_val: torch.Tensor) -> list[torch.Tensor]:
        """Second-order DARTS hypergradient (thesis Eq 2.8 with the finite-difference Hessian)."""
        c = self.config
        names = [n for n, _ in self.network.named_parameters()]
        weights = [p for _, p in self.network.named_parameters()]
        alphas = list(self.arch.parameters())
        eta = self.w_optimizer.param_groups[0]["lr"]
        # w' = w - eta * (momentum * buf + grad L_train(w) + wd * w)
        train_loss = self._train_loss_fn(dict(zip(names, weights, strict=True)), x_train, y_train,
                                         [w.detach() for w in self.cell_weights()])
        g_train = torch.autograd.grad(train_loss, weights)
        unrolled = []
        for p, g in zip(weights, g_train, strict=True):
            buf = self.w_optimizer.state.get(p, {}).get("momentum_buffer")
            step = g + c.w_weight_decay * p.detach()
            if buf is not None:
                step = step + c.w_momentum * buf
            unrolled.append((p.detach() - eta * step).requires_grad_(True))
        # grad_alpha and grad_w' of L_val(w', alpha) (+ regularizers, which depend on alpha only)
        gw = self.group_weights()
        with self.autocast():
            unrolled_params = dict(zip(names, unrolled, strict=True))
            logits = functional_call(self.network, unrolled_params, (x_val, self.arch.cell_weights(gw)))
        val_loss = self.criterion(logits, y_val)
        self.meter.add("val_loss", val_loss.detach() * y_val.numel(), y_val.numel())
        self.meter.add("val_acc", accuracy_count(logits, y_val), y_val.numel())
        total = val_loss + self.regularization(gw)
        grads = torch.autograd.grad(total, alphas + unrolled, allow_unused=True)
        d_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads[: len(alphas)], strict=True)]
        d_w = [torch.zeros_like(u) if g is None else g for u, g in zip(unrolled, grads[len(alphas):], strict=True)]
        # Finite-difference Hessian-vector product: (grad_a L_train(w+) - grad_a L_train(w-)) / 2R
        R = c.unrolled_r / torch.sqrt(sum(g.pow(2).sum() for g in d_w)).clamp_min(1e-12)
        hvp = None
        for sign in (1.0, -1.0):
            shifted = {n: p.detach() + sign * R * d for n, p, d in zip(names, weights, d_w, strict=True)}
            loss = self._train_loss_fn(shifted, x_train, y_train, self.cell_weights())
            g = torch.autograd.grad(loss, alphas, allow_unused=True)
            g = [torch.zeros_like(a) if gi is None else gi for a, gi in zip(alphas, g, strict=True)]
            hvp = g if hvp is None else [h - gi for h, gi in zip(hvp, g, strict=True)]
        return [da - eta * h / (2 * R) for da, h in zip(d_alpha, hvp, strict=True)]

    # ------------------------------------------------------------------ epochs
    def end_epoch(self) -> dict[str, float]:
        metrics = self.meter.read()
        metrics["lr"] = self.w_optimizer.param_groups[0]["lr"]
        metrics["arch_steps"] = float(self.arch_steps)
        metrics["epoch"] = float(self.epoch)
        self.w_scheduler.step()
        self.epoch += 1
        with torch.no_grad():
            snapshot = [w.detach().float().cpu().tolist() for w in self.group_weights()]
        self.history.append({"epoch": self.epoch, "metrics": dict(metrics), "weights": snapshot})
        metrics.update(self.extra_epoch_metrics())
        self._metrics = metrics
        return metrics

    def extra_epoch_metrics(self) -> dict[str, float]:
        """Searcher-specific numbers for the epoch log (count of active ops, eigenvalues...)."""
        return {}

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """Supernet loss and accuracy on ``loader`` with the current mixing weights."""
        was_training = self.network.training
        self.network.eval()
        cw = self.cell_weights()
        total, correct, loss_sum = 0, torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for batch in loader:
            x, y = to_device(batch, self.device)
            logits = self.logits(x, cw)
            loss_sum += self.criterion(logits, y) * y.numel()
            correct += accuracy_count(logits, y)
            total += y.numel()
        self.network.train(was_training)
        return {"loss": float(loss_sum) / max(total, 1), "acc": float(correct) / max(total, 1)}

    # ------------------------------------------------------------------ derivation
    def derive_group(self, group: int, weights: torch.Tensor):
        return self.discretize(weights, self.network.edges, self.group_primitives[group],
                               **self.config.discretizer_options)

    def derive(self) -> Genotype:
        with torch.no_grad():
            gw = self.group_weights()
        cells = [self.derive_group(g, w) for g, w in enumerate(gw)]
        if len(cells) == 2 and self.arch.cell_group == tuple(1 if i in self.reductions else 0
                                                             for i in range(self.config.layers)):
            return DartsGenotype(normal=cells[0], reduce=cells[1])
        return CellsGenotype(tuple(cells[g] for g in self.arch.cell_group), tuple(self.reductions))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy): later steps never change a checkpoint taken earlier."""
        return copy.deepcopy({
            "config": asdict(self.config),
            "network": self.network.state_dict(),
            "arch": self.arch.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "w_scheduler": self.w_scheduler.state_dict(),
            "arch_optimizers": [o.state_dict() for o in self.arch_optimizers],
            "w_scaler": self.w_scaler.state_dict(),
            "arch_scaler": self.arch_scaler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "regularizers": [r.state_dict() for r in self.regularizers],
            "masks": self.active_ops(),
            "counters": {"epoch": self.epoch, "global_step": self.global_step, "arch_steps": self.arch_steps},
            "history": self.history,
            "rng": rng_state(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.arch.load_state_dict(state["arch"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.w_scheduler.load_state_dict(state["w_scheduler"])
        for opt, s in zip(self.arch_optimizers, state["arch_optimizers"], strict=True):
            opt.load_state_dict(s)
        self.w_scaler.load_state_dict(state["w_scaler"])
        self.arch_scaler.load_state_dict(state["arch_scaler"])
        self.schedule.load_state_dict(state["schedule"])
        for reg, s in zip(self.regularizers, state["regularizers"], strict=True):
            reg.load_state_dict(s)
        self.set_active_ops(state.get("masks"))
        counters = state["counters"]
        self.epoch, self.global_step = counters["epoch"], counters["global_step"]
        self.arch_steps = counters["arch_steps"]
        self.history = list(state["history"])
        set_rng_state(state["rng"])

    def active_ops(self) -> list[list[list[int]]]:
        """Indices of the ops each mixed edge evaluates, per cell (masking, e.g. CRB)."""
        return [[list(m.active) for m in cell.mixed] for cell in self.network.cells]

    def set_active_ops(self, masks: list[list[list[int]]] | None) -> None:
        if masks is None:
            return
        for cell, cell_masks in zip(self.network.cells, masks, strict=True):
            for mixed, active in zip(cell.mixed, cell_masks, strict=True):
                mixed.active = tuple(active)


def cosine_lr(base: float, minimum: float, epoch: int, epochs: int) -> float:
    """The cosine-annealed learning rate at ``epoch`` (as CosineAnnealingLR)."""
    return minimum + (base - minimum) * (1 + math.cos(math.pi * epoch / epochs)) / 2
