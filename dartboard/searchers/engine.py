"""The one search engine: a bilevel DARTS-family searcher that runs a composition of parts
(DESIGN.md, "the one idea"; thesis 2.7 for the bilevel step).

    space x grouping x alpha init x activation x arch optimizer x schedule x regularizers
        x weight-step perturbation x mixed-op modifier x discretizer x objective x epoch hooks

Each iteration: (schedule permitting, after the warm-up epochs) one alpha step on a validation batch, first order or
unrolled (:mod:`dartboard.searchers.hypergradient`), then one weight step on a training batch. The activation is
sampled once per step and read by both. No ``.item()`` and no branching on tensor values inside :meth:`Engine.step`
(a part that must read a tensor, such as FIMT or CRB masking, says so itself).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dartboard.searchers.base import EpochMeter, mixing_entropy, rng_state, set_rng_state, to_device
from dartboard.searchers.config import EngineConfig
from dartboard.searchers.context import SearchContext
from dartboard.searchers.graphed import GraphedStep
from dartboard.searchers.hypergradient import functional_loss, grads_or_zeros, unrolled_arch_grads
from dartboard.searchers.optim_imports import defer_dynamo_import
from dartboard.searchers.protocol import Batch, GradReducer, ModuleWrapper
from dartboard.spaces.batched import use_engine
from dartboard.spaces.catalog import get_space
from dartboard.spaces.genotype import Genotype
from dartboard.spaces.supernet import AlphaGroup, Supernet

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Parts:
    """The built parts of a search (see :mod:`dartboard.searchers.parts`)."""

    grouping: Any
    alpha_init: Any
    activation: Any
    arch_optimizer: Any
    schedule: Any
    regularizers: list[Any]
    perturbation: Any
    mixed_op: Any
    hooks: list[Any]
    discretizer: Any
    objective: Any


class Engine:
    """Runs one composition of parts; implements the Searcher protocol."""

    def __init__(self, config: EngineConfig, parts: Parts, name: str = "darts"):
        defer_dynamo_import()  # its optimizers' steps import torch._dynamo otherwise: 1.1 CPU s per process
        self.name, self.config, self.device = name, config, torch.device(config.device)
        space = get_space(config.space)
        _check_row_kind(space, parts.discretizer)
        self.layout = space.layout(config)
        for part in (parts.grouping, parts.alpha_init, parts.activation, parts.arch_optimizer, parts.schedule,
                     parts.perturbation, parts.mixed_op, parts.objective, *parts.regularizers, *parts.hooks):
            part.check(config, self.layout)
        self.activation, self.schedule, self.regularizers = parts.activation, parts.schedule, parts.regularizers
        self.perturbation, self.hooks, self.discretizer = parts.perturbation, list(parts.hooks), parts.discretizer
        self.mixed_op = parts.mixed_op
        self.objective, self.parts = parts.objective, parts
        cell_group, group_names = parts.grouping.assign(self.layout)
        self.supernet: Supernet = space.supernet(self.layout, cell_group, group_names, config)
        parts.mixed_op.apply(self.supernet)
        use_engine(self.supernet, config.engine)  # batched: falls back to the reference path where it must
        if hasattr(parts.objective, "attach"):  # e.g. MoCo's momentum key encoder, part of the supernet's state
            parts.objective.attach(self.supernet)
        self.supernet.to(self.device)
        self.arch = nn.ParameterList(nn.Parameter(parts.alpha_init.init(g, self.supernet.cells_of(i), self.layout))
                                     for i, g in enumerate(self.supernet.groups)).to(self.device)
        # extra architecture parameters of the mixed op (PC-DARTS edge normalisation betas): optimised,
        # all-reduced and checkpointed with the alphas
        self.arch_extra = nn.ParameterList(nn.Parameter(t) for t in parts.mixed_op.arch_parameters(
            self.supernet.groups)).to(self.device)
        # foreach: PyTorch's default on CUDA; on the CPU its default is a Python loop over the parameters, 4 ops
        # each (889 tensors at digits scale: 7.9 -> 4.6 ms a step, the same values to the bit)
        self.w_optimizer: torch.optim.Optimizer = (
            torch.optim.SGD(self.supernet.parameters(), lr=config.w_lr, momentum=config.w_momentum,
                            weight_decay=config.w_weight_decay, foreach=True) if config.w_optimizer == "sgd" else
            torch.optim.Adam(self.supernet.parameters(), lr=config.w_lr, weight_decay=config.w_weight_decay))
        self.w_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, config.epochs,
                                                                      eta_min=config.w_lr_min)
        self.arch_optimizer = parts.arch_optimizer.build(self.arch_parameters(), config)
        self.amp_dtype = AMP_DTYPES[config.precision]
        fp16 = config.precision == "fp16"
        self.w_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.arch_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.train_module: nn.Module = self.supernet  # the distributed seam (DDP-wrapped by the platform)
        self.reduce_arch_grads: GradReducer = lambda grads: None
        self.epoch = self.global_step = self.arch_steps = 0
        self.meter = EpochMeter()
        self.history: list[dict[str, Any]] = []  # per-epoch metrics + mixing-weight snapshots
        self._metrics: dict[str, float] = {}
        self.epoch_metrics: dict[str, float] = {}  # this epoch's metrics before the hooks (for the hooks)
        self.stop_requested = False
        self.last_val_batch: Batch | None = None
        self.deferred: list[Batch] = []  # a whole-pass schedule's train batches, weight-stepped at the epoch's end
        self.ctx = SearchContext(self)
        self.activation.start(self.ctx)  # feasible start (projections) and the masks the init implies
        # cuda_graph: step() replays eager_step() from one CUDA graph; refused here, by name, where it cannot
        self.graphed: GraphedStep | None = GraphedStep(self) if config.cuda_graph else None

    # ------------------------------------------------------------------ Searcher protocol
    @property
    def epochs(self) -> int:
        return int(self.config.epochs)

    @property
    def train_fraction(self) -> float:
        return float(self.schedule.train_fraction)

    def arch_parameters(self) -> list[torch.Tensor]:
        return list(self.arch) + list(self.arch_extra)

    def weight_parameters(self) -> list[torch.Tensor]:
        return list(self.supernet.parameters())

    def distribute(self, wrap: ModuleWrapper, reduce_arch_grads: GradReducer) -> None:
        if self.graphed is not None:
            raise ValueError("cuda_graph: one worker only (the all-reduces of several workers are not captured)")
        self.train_module = wrap(self.supernet)
        self.reduce_arch_grads = reduce_arch_grads

    def alpha_groups(self) -> list[AlphaGroup]:
        return list(self.supernet.groups)

    @property
    def space_info(self) -> dict[str, Any]:
        return {"space": self.config.space, "layers": self.layout.layers, "reductions": tuple(self.layout.reductions)}

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def add_hook(self, hook: Any) -> None:
        """An epoch hook from outside the preset (e.g. the tiny81 regret tracker)."""
        self.hooks.append(hook)

    # ------------------------------------------------------------------ forward pieces
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def group_weights(self) -> list[torch.Tensor]:
        return [self.activation.weights(a) for a in self.arch]

    def forward(self, x: torch.Tensor, group_weights: Sequence[torch.Tensor], module: nn.Module | None = None,
                detach_arch: bool = False) -> torch.Tensor:
        weights = self.forward_weights(group_weights, detach_arch)
        with self.autocast():
            return (module or self.supernet)(x, weights)

    def forward_weights(self, group_weights: Sequence[torch.Tensor], detach_arch: bool = False) -> list[torch.Tensor]:
        """What the supernet's forward takes: the mixing weights as the mixed op reads them (PC-DARTS
        edge weights, the DARTS- skip coefficient); ``detach_arch``: no gradient to the extra parameters."""
        extra = [b.detach() for b in self.arch_extra] if detach_arch else list(self.arch_extra)
        return self.mixed_op.forward_weights(self.ctx, list(group_weights), extra)

    def regularization(self, group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for reg in self.regularizers:
            total = total + reg.loss(self.ctx, group_weights)
        return total

    def _record(self, prefix: str, loss: torch.Tensor, output: torch.Tensor, y: torch.Tensor) -> None:
        self.meter.add(f"{prefix}_loss", loss.detach() * y.numel(), y.numel())
        for name, (value, count) in self.objective.metrics(output, y).items():
            self.meter.add(f"{prefix}_{name}", value, count)

    # ------------------------------------------------------------------ the step
    def step(self, train_batch: Batch, val_batch: Batch) -> None:
        if self.graphed is not None:
            self.graphed(train_batch, val_batch)
        else:
            self.eager_step(train_batch, val_batch)

    def eager_step(self, train_batch: Batch, val_batch: Batch) -> None:
        """One search iteration, op by op (what a CUDA graph of the step captures)."""
        self.last_val_batch = val_batch  # for curvature hooks at the end of the epoch
        x_train, y_train = to_device(train_batch, self.device)
        self.activation.resample(self.ctx)
        if self.epoch >= self.config.warmup_epochs and self.schedule.arch_step_due():
            # single level (SNAS): the alpha step takes the training batch, like the weight step
            x_val, y_val = (x_train, y_train) if self.config.single_level else to_device(val_batch, self.device)
            self.arch_step(x_train, y_train, x_val, y_val)
        if getattr(self.schedule, "whole_pass", False):  # NASiam Algorithm 4: all alpha steps, then all weight steps
            self.deferred.append(train_batch)
        else:
            self.weight_step(x_train, y_train)
        self.global_step += 1

    def _deferred_weight_steps(self) -> None:
        for batch in self.deferred:
            self.activation.resample(self.ctx)
            self.weight_step(*to_device(batch, self.device))
        self.deferred.clear()

    def arch_step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
                  ) -> None:
        if self.config.order == 2:
            grads = self.unrolled_grads(x_train, y_train, x_val, y_val)
        else:
            grads = self.first_order_grads(x_val, y_val)
        self.apply_arch_grads(grads)

    def unrolled_grads(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
                       ) -> list[torch.Tensor]:
        """The second-order hypergradient (thesis Eq 2.8) of S * (L_val + regularizers)."""
        return unrolled_arch_grads(
            self.supernet, functional_loss(self.supernet, self.autocast, self.objective.loss, self.forward_weights),
            self.arch_parameters(),
            self.group_weights, self.regularization, self.w_optimizer, self.arch_scaler.scale,
            (x_train, y_train, x_val, y_val), self.config.unrolled_r,
            lambda loss, out, y: self._record("val", loss, out, y))

    def first_order_grads(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """grad_alpha of S * (L_val + regularizers); with a per-group gradient term (D-DARTS
        L_AB) the L_val gradient is taken alone first, as the term needs it."""
        alphas = self.arch_parameters()
        gw = self.group_weights()
        output = self.forward(x, gw)
        loss = self.objective.loss(output, y)
        self._record("val", loss, output, y)
        terms = [r for r in self.regularizers if r.needs_val_grad]
        if not terms:
            return grads_or_zeros(self.arch_scaler.scale(loss + self.regularization(gw)), alphas)
        del output
        g_val = grads_or_zeros(self.arch_scaler.scale(loss), alphas)
        loss = loss.detach()  # a loss that keeps its grad_fn keeps part of the freed graph alive
        reg = self.regularization(self.group_weights())
        g_reg = grads_or_zeros(self.arch_scaler.scale(reg), alphas) if reg.requires_grad else None
        grads = g_val if g_reg is None else [a + b for a, b in zip(g_val, g_reg, strict=True)]
        for term in terms:
            grads = term.add_grad_terms(self.ctx, x, y, loss, g_val, grads)
        return grads

    def apply_arch_grads(self, grads: Sequence[torch.Tensor]) -> None:
        self.reduce_arch_grads(grads)
        for a, g in zip(self.arch_parameters(), grads, strict=True):
            a.grad = g
        self.arch_optimizer.step(self.arch_scaler)
        self.arch_steps += 1
        for reg in self.regularizers:
            reg.after_arch_step(self.ctx)
        self.activation.constrain(self.ctx)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            weights = [w.detach() for w in self.group_weights()]
        weights = self.perturbation.weights(self.ctx, weights, x, y)
        self.w_optimizer.zero_grad(set_to_none=True)
        output = self.forward(x, weights, self.train_module, detach_arch=True)
        loss = self.objective.loss(output, y)
        self.w_scaler.scale(loss).backward()
        self.w_scaler.unscale_(self.w_optimizer)
        # the optimizer's own list: walking the supernet's module tree costs 3-5 ms a step
        params = [p for group in self.w_optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.schedule.needs_grad_norm:  # Fisher information trace (FIMT): sum ||grad w||^2 before clipping
            self.schedule.after_weight_step(torch.stack([p.grad.float().pow(2).sum() for p in params]).sum())
        nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.w_scaler.step(self.w_optimizer)
        self.w_scaler.update()
        self._record("train", loss, output, y)

    # ------------------------------------------------------------------ epochs
    def end_epoch(self) -> dict[str, float]:
        self._deferred_weight_steps()
        self.activation.end_epoch(self.ctx)
        metrics = self.meter.read()
        metrics["lr"] = self.w_optimizer.param_groups[0]["lr"]
        metrics["arch_steps"] = float(self.arch_steps)
        metrics["epoch"] = float(self.epoch)
        self.w_scheduler.step()
        self.arch_optimizer.end_epoch(searching=self.epoch >= self.config.warmup_epochs)
        self.epoch += 1
        with torch.no_grad():
            weights = self.derive_weights()
            snapshot = [w.detach().float().cpu().tolist() for w in weights]
        self.history.append({"epoch": self.epoch, "metrics": dict(metrics), "weights": snapshot})
        metrics["alpha_entropy"] = mixing_entropy(weights)
        metrics["active_ops"] = float(self.ctx.active_op_count())
        metrics["arch_lr"] = float(self.arch_optimizer.lr)
        metrics.update(self.schedule.metrics(self.ctx))
        metrics.update(self.activation.metrics(self.ctx))
        for part in self.regularizers:
            metrics.update(part.metrics(self.ctx))
        self.epoch_metrics = dict(metrics)
        for hook in self.hooks:
            metrics.update(hook.end_epoch(self.ctx))
        self._metrics = metrics
        return metrics

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Batch]) -> dict[str, float]:
        """Supernet loss and accuracy on ``loader`` with the current mixing weights."""
        was_training = self.supernet.training
        self.supernet.eval()
        gw = self.group_weights()
        meter = EpochMeter()
        for batch in loader:
            x, y = to_device(batch, self.device)
            output = self.forward(x, gw)
            meter.add("loss", self.objective.loss(output, y) * y.numel(), y.numel())
            for name, (value, count) in self.objective.metrics(output, y).items():
                meter.add(name, value, count)
        self.supernet.train(was_training)
        return meter.read()

    # ------------------------------------------------------------------ derivation
    def derive_weights(self) -> list[torch.Tensor]:
        """Per group, the weights the genotype is derived from (and the history records): a sampler's distribution,
        not its last sample (GDAS, SNAS, DrNAS); PC-DARTS' op weights times its edge weights."""
        return self.mixed_op.derive_weights([self.activation.derive_weights(a) for a in self.arch],
                                            list(self.arch_extra))

    def derive(self) -> Genotype:
        with torch.no_grad():
            gw = self.derive_weights()
        return self.supernet.genotype([self.discretizer(w, g.rows, g.primitives)
                                       for w, g in zip(gw, self.supernet.groups, strict=True)])

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> dict[str, Any]:
        """A deep copy of everything but the epoch hooks' own state (what a rollback restores)."""
        return copy.deepcopy({
            "config": asdict(self.config),
            "network": self.supernet.state_dict(),
            "arch": self.arch.state_dict(),
            "arch_extra": self.arch_extra.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "w_scheduler": self.w_scheduler.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "w_scaler": self.w_scaler.state_dict(),
            "arch_scaler": self.arch_scaler.state_dict(),
            "activation": self.activation.state_dict(),
            "schedule": self.schedule.state_dict(),
            "regularizers": [r.state_dict() for r in self.regularizers],
            "perturbation": self.perturbation.state_dict(),
            "masks": self.supernet.active_ops(),
            "counters": {"epoch": self.epoch, "global_step": self.global_step, "arch_steps": self.arch_steps},
            "history": self.history,
            "rng": rng_state(),
        })

    def restore(self, state: dict[str, Any]) -> None:
        self.supernet.load_state_dict(state["network"])
        self.arch.load_state_dict(state["arch"])
        self.arch_extra.load_state_dict(state["arch_extra"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.w_scheduler.load_state_dict(state["w_scheduler"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.w_scaler.load_state_dict(state["w_scaler"])
        self.arch_scaler.load_state_dict(state["arch_scaler"])
        self.activation.load_state_dict(state["activation"])
        self.schedule.load_state_dict(state["schedule"])
        for reg, s in zip(self.regularizers, state["regularizers"], strict=True):
            reg.load_state_dict(s)
        self.perturbation.load_state_dict(state["perturbation"])
        self.supernet.set_active_ops(state["masks"])
        counters = state["counters"]
        self.epoch, self.global_step = counters["epoch"], counters["global_step"]
        self.arch_steps = counters["arch_steps"]
        self.history = list(state["history"])
        set_rng_state(state["rng"])

    def state_dict(self) -> dict[str, Any]:
        state = self.snapshot()
        state["hooks"] = [h.state_dict() for h in self.hooks]
        state["stop_requested"] = self.stop_requested
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restore(state)
        if len(state["hooks"]) != len(self.hooks):
            raise ValueError(f"checkpoint has {len(state['hooks'])} epoch hooks, this search {len(self.hooks)}")
        for hook, s in zip(self.hooks, state["hooks"], strict=True):
            hook.load_state_dict(s)
        self.stop_requested = bool(state["stop_requested"])


def _check_row_kind(space: Any, discretizer: Any) -> None:
    """A discretizer parses one kind of alpha row: cell edges (``edge``, every DARTS discretizer) or
    chain layers (``layer``); the space says which rows it has (``row_kind``, default ``edge``)."""
    fn = getattr(discretizer, "func", discretizer)
    want, got = getattr(space, "row_kind", "edge"), getattr(fn, "row_kind", "edge")
    if want != got:
        name = getattr(discretizer, "name", getattr(fn, "__name__", "?"))
        raise ValueError(f"discretizer {name!r} parses {got} rows; space {space.name!r} has {want} rows: "
                         f"choose a discretizer for {want}s")

