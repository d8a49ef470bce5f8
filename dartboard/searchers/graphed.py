"""A whole search iteration (alpha step + weight step) replayed from one CUDA graph.

:class:`GraphedStep` wraps an :class:`~dartboard.searchers.engine.Engine` and is called like its
``step``: every call is exactly one search iteration on the batches it is given (``Engine.eager_step``;
the search option ``cuda_graph`` makes ``Engine.step`` go through one). The first
``warmup`` calls run eagerly on a side stream (they create the optimizer states and cuDNN plans a
capture needs); the next call captures ``Engine.eager_step`` once into a graph, with the batches copied
into static buffers, and from then on a call copies its batches into those buffers and replays
the graph: thousands of kernel launches become one. This pays where the step is launch-bound (the
DARTS supernet on a GPU: many tiny kernels).

What a replay cannot see is refused up front, by name: Python state that a step would change
(schedules that decide from the step's own values, samplers, perturbations with their own generators,
ADMM's dual update, masks read on the host), fp16's loss scaler (its inf check reads the host), and the mixed-op
modifiers, which are not verified under replay. What changes between epochs (learning rates and
weight decay from schedulers and hooks, ops masked or projected away, the end of the weight-only
warm-up epochs) is baked into a capture: a new epoch, or a learning rate or weight decay changed since,
makes the next call capture again, after checking the parts again (where an epoch-end hook made them
uncapturable, the steps go on eagerly, with one warning). A batch of another shape (an epoch's last,
smaller batch) runs eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from dartboard.searchers.base import EpochMeter
from dartboard.searchers.parts.activations import Activation
from dartboard.searchers.parts.regularizers import Regularizer
from dartboard.searchers.parts.schedules import AlternateSchedule, ConstantSchedule, Schedule
from dartboard.searchers.parts.seams import NoPerturbation, PlainMixedOp
from dartboard.searchers.protocol import Batch

log = logging.getLogger("dartboard")
T = TypeVar("T")


def graph_blockers(engine: Any, device: bool = True) -> list[str]:
    """Why ``engine``'s step cannot be replayed from a CUDA graph (empty: it can); ``device=False``: all
    but the device (a study's dry build on the CPU of a search that will run on a GPU)."""
    reasons = []
    if device and engine.device.type != "cuda":
        reasons.append(f"CUDA graphs need a CUDA device, the search runs on {engine.device}")
    if engine.config.precision == "fp16":
        reasons.append("precision fp16: the loss scaler reads its inf check on the host every step (use bf16)")
    for opt in engine.arch_optimizer.optimizers:
        if isinstance(opt, torch.optim.Adam) and not opt.defaults.get("fused"):
            reasons.append("arch optimizer: Adam without fused=True keeps its step counter on the host")
    if any(getattr(m, "skip_zero_weights", False) for m in engine.supernet.modules()):
        reasons.append("ops skipped where their weight is zero: the skip is decided on the host")
    return reasons + _part_blockers(engine)


def _part_blockers(engine: Any) -> list[str]:
    reasons = []
    if (type(engine.schedule) not in (Schedule, AlternateSchedule, ConstantSchedule)
            or getattr(engine.schedule, "whole_pass", False)):
        reasons.append(f"schedule {type(engine.schedule).__name__}: it decides which steps take an alpha step "
                       f"from values read on the host, or runs whole passes")
    for what, base in (("resample", Activation.resample), ("constrain", Activation.constrain)):
        if getattr(type(engine.activation), what) is not base:
            reasons.append(f"activation {type(engine.activation).__name__}: its {what} changes host state each step")
    if type(engine.perturbation) is not NoPerturbation:
        reasons.append(f"perturbation {type(engine.perturbation).__name__}: it draws from its own generator")
    if type(engine.mixed_op) is not PlainMixedOp:
        reasons.append(f"mixed op {type(engine.mixed_op).__name__}: only the plain mixed op is verified under "
                       f"replay (its weights may change on the host between epochs)")
    for reg in engine.regularizers:
        if type(reg).after_arch_step is not Regularizer.after_arch_step:
            reasons.append(f"regularizer {type(reg).__name__}: its update after each alpha step runs on the host")
        if getattr(reg, "deactivation", None) == "reference":  # D-DARTS L_AB's U[0, 1) draws
            reasons.append(f"regularizer {type(reg).__name__}: deactivation 'reference' draws from a CPU generator")
    return reasons


def on_side_stream(device: torch.device, fn: Callable[[], T]) -> T:
    """``fn()`` on a side stream, ordered after and before the current stream's work: the eager warm-up
    calls before a CUDA graph capture (PyTorch's recipe: they create the handles and states it needs)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        out = fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    return out


@dataclass
class _Captured:
    """One captured step: its graph, the meters its replays rewrite (owner, meter) and the host-side
    counts (global steps, alpha steps) a replay stands for."""

    graph: Any
    meters: list[tuple[Any, EpochMeter]]
    deltas: tuple[int, int]


class GraphedStep:
    """``engine.eager_step`` replayed from a CUDA graph; see the module docstring. Where the schedule
    takes an alpha step only every k-th iteration (CS-k), two graphs: with and without it."""

    def __init__(self, engine: Any, warmup: int = 3):
        reasons = graph_blockers(engine)
        if reasons:
            raise ValueError("cuda_graph: the step cannot be captured in a CUDA graph: " + "; ".join(reasons))
        if warmup < 1:
            raise ValueError(f"warmup: expected an integer >= 1 (eager steps before the capture), got {warmup}")
        self.engine, self.warmup = engine, int(warmup)
        self.eager_steps = self.replays = self.captures = 0
        self.graphs: dict[bool, _Captured] = {}  # by "takes an alpha step"
        self.eager_reason: str | None = None  # set when a later epoch's parts cannot be captured any more
        self._static: list[torch.Tensor] = []
        self._captured_key: tuple[Any, ...] = ()

    def __call__(self, train_batch: Batch, val_batch: Batch) -> None:
        tensors = [*train_batch, *val_batch]
        if self.eager_steps < self.warmup:
            on_side_stream(self.engine.device, lambda: self.engine.eager_step(train_batch, val_batch))
            self.eager_steps += 1
            return
        if self.eager_reason is not None or (self._static and not self._fits(tensors)):
            self.engine.eager_step(train_batch, val_batch)  # another shape: this one batch eagerly
            return
        key = self._key()
        if key != self._captured_key:  # the first capture, or a new epoch: every graph is stale
            reasons = graph_blockers(self.engine)  # again: an epoch-end hook may have changed the parts
            if reasons:  # e.g. DARTS-PT's projection now skips ops on the host: eager from here on
                self.graphs.clear()
                self.eager_reason = "; ".join(reasons)
                log.warning("cuda_graph: eager steps from epoch %d on: %s", self.engine.epoch, self.eager_reason)
                self.engine.eager_step(train_batch, val_batch)
                return
            self.graphs.clear()  # the previous captures' pools go before the next are taken
            self._static = [t.to(self.engine.device).clone() for t in tensors]
            self._captured_key = key
        due = self._arch_step_due()
        if due not in self.graphs:
            self.graphs[due] = self._capture(due)
        for buffer, t in zip(self._static, tensors, strict=True):
            buffer.copy_(t, non_blocking=True)
        captured = self.graphs[due]
        captured.graph.replay()
        self.replays += 1
        self._after_replay(captured, val_batch)

    step = __call__

    # ------------------------------------------------------------------ internals
    def _fits(self, tensors: list[torch.Tensor]) -> bool:
        return all(t.shape == s.shape and t.dtype == s.dtype for t, s in zip(tensors, self._static, strict=True))

    def _key(self) -> tuple[Any, ...]:
        """What a capture bakes in that may change between calls: the epoch (epoch-end hooks and
        schedulers) and every optimizer's learning rate and weight decay."""
        opts = [self.engine.w_optimizer, *self.engine.arch_optimizer.optimizers]
        return (self.engine.epoch, *((float(g["lr"]), float(g.get("weight_decay", 0.0)))
                                     for o in opts for g in o.param_groups))

    def _arch_step_due(self) -> bool:
        """Whether this call's step takes an alpha step, decided on the host as ``Engine.eager_step``
        decides it (a CS-k schedule's counter advances here, once per call, as in an eager step)."""
        engine = self.engine
        return engine.epoch >= engine.config.warmup_epochs and bool(engine.schedule.arch_step_due())

    def _capture(self, due: bool) -> _Captured:
        engine = self.engine
        # capturable only for the capture (fused Adam keeps its step counter on the device already): a
        # checkpoint keeps the flag, and a capturable Adam refuses CPU parameters when resumed there
        groups = [g for o in [engine.w_optimizer, *engine.arch_optimizer.optimizers] for g in o.param_groups
                  if "capturable" in g]
        flags = [g["capturable"] for g in groups]
        for group in groups:
            group["capturable"] = True
        steps = (engine.global_step, engine.arch_steps)
        # the engine's meter and the parts' own (FairDARTS L_01, D-DARTS L_AB): the captured step adds to
        # fresh meters, whose tensors each replay rewrites and each call adds to the real ones
        owners = [o for o in (engine, *engine.regularizers, engine.schedule, engine.activation, engine.objective)
                  if isinstance(getattr(o, "meter", None), EpochMeter)]
        real = [o.meter for o in owners]
        meters = [(o, EpochMeter()) for o in owners]
        for owner, meter in meters:
            owner.meter = meter
        engine.schedule.arch_step_due = lambda: due  # decided by the caller; the counter moved there
        x_train, y_train, x_val, y_val = self._static
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                engine.eager_step((x_train, y_train), (x_val, y_val))
        finally:
            del engine.schedule.arch_step_due
            for owner, meter in zip(owners, real, strict=True):
                owner.meter = meter
            for group, flag in zip(groups, flags, strict=True):
                group["capturable"] = flag
        # the capture ran no kernel: undo its host-side counts, replay them per call instead
        deltas = (engine.global_step - steps[0], engine.arch_steps - steps[1])
        engine.global_step, engine.arch_steps = steps
        self.captures += 1
        return _Captured(graph, meters, deltas)

    def _after_replay(self, captured: _Captured, val_batch: Batch) -> None:
        engine = self.engine
        for owner, meter in captured.meters:  # the graph's outputs are overwritten by the next replay
            for name, value in meter.sums.items():
                count = meter.counts[name]
                owner.meter.add(name, value.clone(), count.clone() if torch.is_tensor(count) else count)
        engine.global_step += captured.deltas[0]
        engine.arch_steps += captured.deltas[1]
        engine.last_val_batch = val_batch
