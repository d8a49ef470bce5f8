"""The objective (the task loss), and the two seams later methods plug into: a perturbation
of the mixing weights the weight step sees (SDARTS) and a modifier of the supernet's mixed
ops (PC-DARTS partial channels, DARTS- auxiliary skip). Today one entry each: the plain
behaviour of DARTS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dartboard.searchers.parts import PartRegistry
from dartboard.searchers.parts.base import Part

OBJECTIVES = PartRegistry("objective")
PERTURBATIONS = PartRegistry("perturbation")
MIXED_OPS = PartRegistry("mixed_op")


@OBJECTIVES.register("classification")
class Classification(Part):
    """Cross-entropy on the logits (in fp32 under autocast); metric: accuracy."""

    def check(self, config: Any, layout: Any) -> None:
        if getattr(layout, "siamese", False):
            raise ValueError(f"objective 'classification': space {config.space!r} has no classifier; "
                             f"its objectives are simsiam, simclr and moco")
        if config.num_classes < 2:  # every label the same: the cross-entropy is 0 from the first step
            raise ValueError(f"objective 'classification': the data has {config.num_classes} class; a classifier "
                             f"needs at least two (self-supervised search reads unlabelled images: NASiam's presets "
                             f"on a -views dataset)")

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if output.dtype in (torch.float16, torch.bfloat16):
            output = output.float()
        return nn.functional.cross_entropy(output, y)

    def metrics(self, output: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[torch.Tensor, int]]:
        """Per-batch sums and counts (device tensors: no sync inside a step)."""
        return {"acc": ((output.argmax(dim=1) == y).sum(), y.numel())}


@PERTURBATIONS.register("none")
class NoPerturbation(Part):
    """DARTS: the weight step sees the current mixing weights. A perturbation (SDARTS,
    :mod:`dartboard.searchers.parts.perturbations`) gets the weight step's batch ``x, y`` too."""

    def weights(self, ctx: Any, group_weights: Sequence[torch.Tensor], x: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> list[torch.Tensor]:
        return list(group_weights)


@MIXED_OPS.register("none")
class PlainMixedOp(Part):
    """DARTS: every edge mixes all its candidate ops on all channels. The mixed-op modifiers
    (:mod:`dartboard.searchers.parts.mixed_ops`) may own extra architecture parameters (PC-DARTS
    betas: optimised, all-reduced and checkpointed with the alphas) and change the weights the
    supernet's forward reads (``forward_weights``) and those the discretizer reads (``derive_weights``)."""

    def apply(self, supernet: nn.Module) -> None:
        """Modify the supernet's mixed ops in place (nothing for plain DARTS)."""

    def arch_parameters(self, groups: Sequence[Any]) -> list[torch.Tensor]:
        """Initial values of the extra architecture parameters (none for plain DARTS)."""
        return []

    def forward_weights(self, ctx: Any, group_weights: list[torch.Tensor], extra: list[torch.Tensor]
                        ) -> list[torch.Tensor]:
        return group_weights

    def derive_weights(self, group_weights: list[torch.Tensor], extra: list[torch.Tensor]) -> list[torch.Tensor]:
        return group_weights
