"""What a part sees of the search: a small facade over the engine (DESIGN.md: parts talk
to the engine only through a context, never by reaching into the searcher or mutating its
config). Read-only views, plus the few actions a part may take (mask ops, request a stop,
restore a snapshot)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dartboard.spaces.genotype import CellGenotype, Genotype
from dartboard.spaces.supernet import AlphaGroup

if TYPE_CHECKING:
    from dartboard.searchers.engine import Engine


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Batch norms keep normalising with batch statistics but leave their running statistics
    unchanged (momentum 0): extra forwards (ablations, curvature probes) must not pollute them."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


class SearchContext:
    def __init__(self, engine: Engine):
        # A weak reference: the engine holds its context, so a strong one back would make every searcher a
        # reference cycle, freed only by Python's cyclic collector (tens of thousands of objects per supernet, each
        # walked by every full collection until then) instead of when its last reference goes.
        self._engine = weakref.proxy(engine)

    # ------------------------------------------------------------------ views
    @property
    def alphas(self) -> list[nn.Parameter]:
        return list(self._engine.arch)

    @property
    def groups(self) -> list[AlphaGroup]:
        return self._engine.supernet.groups

    @property
    def epoch(self) -> int:
        return self._engine.epoch

    @property
    def epochs(self) -> int:
        return self._engine.epochs

    @property
    def warmup_epochs(self) -> int:
        return self._engine.config.warmup_epochs

    @property
    def progress(self) -> float:
        """Fraction of the search done, in [0, 1] (ramps such as the proximity weight)."""
        return min(1.0, self.epoch / max(1, self.epochs))

    @property
    def device(self) -> torch.device:
        return self._engine.device

    @property
    def epoch_metrics(self) -> dict[str, float]:
        """The metrics of the epoch being closed, before the epoch hooks add theirs."""
        return dict(self._engine.epoch_metrics)

    @property
    def weight_optimizer(self) -> torch.optim.Optimizer:
        return self._engine.w_optimizer

    @property
    def last_val_batch(self) -> Any:
        return self._engine.last_val_batch

    @property
    def global_step(self) -> int:
        """Search iterations done (samplers seed their draws with it)."""
        return self._engine.global_step

    @property
    def start(self) -> Genotype | None:
        """The handcrafted genotype the supernet was started from (DARTOpti), else None."""
        return self._engine.supernet.layout.start

    # ------------------------------------------------------------------ computations
    def group_weights(self) -> list[torch.Tensor]:
        """Mixing weights of every group (with graph) from the step's activation sample."""
        return self._engine.group_weights()

    def forward(self, x: torch.Tensor, group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._engine.forward(x, group_weights)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._engine.objective.loss(output, y)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The alpha step's loss scaling (fp16); identity otherwise."""
        return self._engine.arch_scaler.scale(loss)

    def frozen_batchnorm(self) -> contextlib.AbstractContextManager:
        return frozen_batchnorm_stats(self._engine.supernet)

    @contextlib.contextmanager
    def preserved_buffers(self) -> Iterator[None]:
        """BN running statistics restored on exit (a probe that runs extra forwards)."""
        net = self._engine.supernet
        buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
        try:
            yield
        finally:
            with torch.no_grad():
                for n, b in net.named_buffers():
                    b.copy_(buffers[n])

    def discretize(self, group: int, weights: torch.Tensor) -> CellGenotype:
        return self._engine.discretizer(weights, self.groups[group].rows, self.groups[group].primitives)

    def derive(self) -> Genotype:
        return self._engine.derive()

    # ------------------------------------------------------------------ actions
    def mask_group(self, group: int, keep: torch.Tensor) -> None:
        self._engine.supernet.mask_group(group, keep)

    def group_active(self, group: int) -> torch.Tensor:
        return self._engine.supernet.group_active(group)

    def active_op_count(self) -> int:
        return sum(len(a) for cell in self._engine.supernet.active_ops() for a in cell)

    def skip_zero_weight_ops(self) -> None:
        """Ask the supernet to skip ops whose mixing weight is exactly 0 (GDAS: only the sampled
        op of each edge is computed); a supernet without that ability computes every op."""
        skip = getattr(self._engine.supernet, "set_skip_zero_weights", None)
        if skip is not None:
            skip(True)

    def reduce_mean(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` in place over the ranks of a distributed search (the engine's
        ``reduce_arch_grads``; nothing on one process): a decision every rank must share."""
        self._engine.reduce_arch_grads(list(tensors))

    def request_stop(self) -> None:
        self._engine.stop_requested = True

    def snapshot(self) -> dict[str, Any]:
        """The engine's state without the epoch hooks' (what a rollback restores)."""
        return self._engine.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        self._engine.restore(state)
