"""Registration of the plain DARTS searcher (first and second order)."""

from __future__ import annotations

from typing import Any

from dartboard.searchers.darts import BilevelSearcher, DartsConfig
from dartboard.searchers.registry import DataShape, dataclass_options, register_searcher


def darts_config(options: dict[str, Any], shape: DataShape, device: str) -> DartsConfig:
    opts = dict(options)
    if "arch_betas" in opts:
        opts["arch_betas"] = tuple(opts["arch_betas"])
    return DartsConfig(**opts, num_classes=shape.num_classes, in_channels=shape.in_channels,
                       input_size=shape.input_size, device=device)


@register_searcher("darts", "DARTS (Liu et al.): softmax mixing, bilevel; order 1 or 2",
                   options=dataclass_options(DartsConfig))
def build_darts(options: dict[str, Any], shape: DataShape, device: str) -> BilevelSearcher:
    return BilevelSearcher(darts_config(options, shape, device))


@register_searcher("darts-2nd", "DARTS, second order (unrolled)", options=dataclass_options(DartsConfig),
                   defaults={"order": 2})
def build_darts_2nd(options: dict[str, Any], shape: DataShape, device: str) -> BilevelSearcher:
    return BilevelSearcher(darts_config(options, shape, device))
