"""The Searcher protocol: everything the platform (Ray worker, local run, studies, reports)
may use of a searcher, and nothing more (DESIGN.md, data flow). No ``getattr`` probing:
every searcher has all of these.

Part protocols (activation, schedule, regularizer, ...) live beside the engine in
``dartboard.searchers.parts``; they talk to the engine through :class:`SearchContext` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from dartboard.spaces.supernet import AlphaGroup  # noqa: F401  (part of the protocol)

Batch = tuple[torch.Tensor, torch.Tensor]
ModuleWrapper = Callable[[nn.Module], nn.Module]
GradReducer = Callable[[Sequence[torch.Tensor]], None]


@runtime_checkable
class Searcher(Protocol):
    epoch: int  # epochs done
    stop_requested: bool  # an epoch hook asked to stop (early stopping)
    history: list[dict[str, Any]]  # per epoch: {"epoch", "metrics", "weights": mixing weights per group}

    @property
    def epochs(self) -> int:
        """The planned number of search epochs."""

    @property
    def train_fraction(self) -> float:
        """The train share of the search split the update schedule implies (DARTS: 0.5)."""

    def step(self, train_batch: Batch, val_batch: Batch) -> None:
        """One search iteration on a pair of batches (no host synchronisation inside)."""

    def end_epoch(self) -> dict[str, float]:
        """Close an epoch (schedulers, hooks, stop rules); return the epoch's metrics."""

    def derive(self) -> Any:
        """The discrete architecture preferred now (a genotype)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the search exactly (a snapshot)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def metrics(self) -> dict[str, float]:
        """The latest epoch's metrics."""

    def arch_parameters(self) -> list[torch.Tensor]:
        """The architecture parameters (identical on every rank of a distributed run)."""

    def weight_parameters(self) -> list[torch.Tensor]:
        """The supernet's weights."""

    def distribute(self, wrap: ModuleWrapper, reduce_arch_grads: GradReducer) -> None:
        """Distributed seams: ``wrap`` the module used by the weight step (e.g. in DDP) and
        average alpha gradients over ranks with ``reduce_arch_grads`` before each alpha step."""

    @property
    def space_info(self) -> dict[str, Any]:
        """What is searched: ``{"space": name, "layers": cells, "reductions": positions}`` for cell spaces."""

    def add_hook(self, hook: Any) -> None:
        """An epoch hook from outside (``end_epoch(ctx) -> metrics``, state), e.g. the tiny81 regret tracker."""

    def alpha_groups(self) -> list[AlphaGroup]:
        """How to read ``history[i]["weights"]``: one entry per group of alphas."""
