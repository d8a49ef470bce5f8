"""Mixed-op modifiers (the ``mixed_op`` seam): PC-DARTS partial channels and DARTS-'s auxiliary skip.

A modifier replaces every search cell's mixed ops in place (``apply``) and may feed them one more
number per edge: the weights the supernet's forward reads get an extra last column
(``forward_weights``), which the replaced mixed ops read and the plain ones ignore.

- ``partial_channel`` (PC-DARTS, Xu et al. 2020): 1/K of the channels go through the mixed op,
  the rest bypass it (max-pooled on a reduction edge), then a channel shuffle with K groups.
  ``edge_norm``: edge normalisation, extra architecture parameters beta (one per edge): the edge's
  output is scaled by softmax over the incoming edges of its node of beta, and the derivation
  scores an op by softmax(beta)_edge * w_op (PC-DARTS 3.3).
- ``aux_skip`` (DARTS-, Chu et al. 2021): out = mixed op + beta_t * skip(x) on every edge, beta_t
  decays from 1 to 0 over the search; the skip is no candidate and the derivation ignores it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dartboard.searchers.parts.seams import MIXED_OPS, PlainMixedOp
from dartboard.spaces.cells import MixedOp, SearchCell
from dartboard.spaces.ops import FactorizedReduce, Identity

PC_K = 4  # PC-DARTS 4.1 (CIFAR-10): K = 4, 1/4 of the channels through the mixed op
PC_BETA_INIT_SCALE = 1e-3  # PC-DARTS reference code: betas = 1e-3 * randn, like the alphas
DARTS_MINUS_BETA0 = 1.0  # DARTS- 3.2: the auxiliary skip's coefficient starts at 1 ...
DECAYS = ("linear", "cosine")  # ... and decays to 0 (linear by default; cosine is the paper's ablation)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: [b, g*n, h, w] viewed [b, g, n, h, w], transposed to [b, n, g, h, w]."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class _Wrapped(nn.Module):
    """A mixed op around an inner :class:`MixedOp`; masks (CRB) act on the inner one."""

    inner: MixedOp

    @property
    def active(self) -> tuple[int, ...]:
        return self.inner.active

    @active.setter
    def active(self, value: tuple[int, ...]) -> None:
        self.inner.active = tuple(value)


class PartialChannelMixedOp(_Wrapped):
    """PC-DARTS Eq 2: shuffle(cat(sum_o w_o o(x[:C/K]), x[C/K:])), times the edge weight with ``edge_norm``."""

    def __init__(self, mixed: MixedOp, k: int, edge_norm: bool):
        super().__init__()
        self.k, self.edge_norm = k, edge_norm
        self.inner = MixedOp(mixed.C // k, mixed.stride, mixed.primitives)
        self.inner.active = mixed.active
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if mixed.stride == 2 else None

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // self.k
        out = self.inner(x[:, :c], weights)
        rest = x[:, c:] if self.bypass_pool is None else self.bypass_pool(x[:, c:])
        out = channel_shuffle(torch.cat([out, rest], dim=1), self.k)
        return out * weights[-1] if self.edge_norm else out


class AuxSkipMixedOp(_Wrapped):
    """DARTS- Eq 5: the mixed op plus beta_t * skip(x) (the coefficient is the weights' last column)."""

    def __init__(self, mixed: MixedOp):
        super().__init__()
        self.inner = mixed
        self.skip = Identity() if mixed.stride == 1 else FactorizedReduce(mixed.C, mixed.C, affine=False)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.inner(x, weights) + weights[-1] * self.skip(x)


def _replace_mixed_ops(supernet: nn.Module, wrap: Any) -> int:
    cells = [m for m in supernet.modules() if isinstance(m, SearchCell)]
    for cell in cells:
        for e, mixed in enumerate(cell.mixed):
            cell.mixed[e] = wrap(mixed)
    return len(cells)


def _check_cells(name: str, layout: Any) -> None:
    if not hasattr(layout, "primitives") or not hasattr(layout, "steps"):
        raise ValueError(f"mixed_op {name!r}: the space has no search cells to modify")


def edge_softmax(beta: torch.Tensor, rows: Sequence[tuple[int, int]]) -> torch.Tensor:
    """PC-DARTS Eq 3: for each node, softmax of beta over its incoming edges (rows (src, dst))."""
    nodes = sorted({dst for _, dst in rows})
    index = [[e for e, (_, dst) in enumerate(rows) if dst == n] for n in nodes]
    order = torch.tensor([e for idx in index for e in idx], device=beta.device)
    values = torch.cat([torch.softmax(beta[idx], dim=0) for idx in index])
    return torch.zeros_like(beta).index_copy(0, order, values)


@MIXED_OPS.register("partial_channel")
class PartialChannel(PlainMixedOp):
    def __init__(self, k: int = PC_K, edge_norm: bool = True):
        if int(k) < 1:
            raise ValueError(f"k: expected an integer >= 1, got {k}")
        self.k, self.edge_norm = int(k), bool(edge_norm)
        self.rows: list[tuple] = []

    def check(self, config: Any, layout: Any) -> None:
        _check_cells("partial_channel", layout)
        if config.C % self.k:
            raise ValueError(f"mixed_op 'partial_channel': C={config.C} is not divisible by k={self.k}")

    def apply(self, supernet: nn.Module) -> None:
        _replace_mixed_ops(supernet, lambda m: PartialChannelMixedOp(m, self.k, self.edge_norm))

    def arch_parameters(self, groups: Sequence[Any]) -> list[torch.Tensor]:
        self.rows = [tuple(g.rows) for g in groups]
        if not self.edge_norm:
            return []
        return [PC_BETA_INIT_SCALE * torch.randn(len(rows)) for rows in self.rows]

    def edge_weights(self, extra: list[torch.Tensor]) -> list[torch.Tensor]:
        return [edge_softmax(b, rows) for b, rows in zip(extra, self.rows, strict=True)]

    def forward_weights(self, ctx, group_weights, extra):
        if not self.edge_norm:
            return group_weights
        return [torch.cat([w, e.to(w.dtype).unsqueeze(1)], dim=1)
                for w, e in zip(group_weights, self.edge_weights(extra), strict=True)]

    def derive_weights(self, group_weights, extra):
        """PC-DARTS 3.3: the score of op o on edge (i, j) is softmax(beta)_ij * w_o."""
        if not self.edge_norm:
            return group_weights
        return [w * e.to(w.dtype).unsqueeze(1) for w, e in zip(group_weights, self.edge_weights(extra), strict=True)]


def aux_coefficient(progress: float, beta0: float = DARTS_MINUS_BETA0, decay: str = "linear") -> float:
    """DARTS-: beta_t = beta0 * (1 - t) (linear) or beta0 * (1 + cos(pi t)) / 2 (cosine), t in [0, 1]."""
    t = min(1.0, max(0.0, progress))
    if decay == "linear":
        return beta0 * (1.0 - t)
    return beta0 * 0.5 * (1.0 + math.cos(math.pi * t))


@MIXED_OPS.register("aux_skip")
class AuxSkip(PlainMixedOp):
    def __init__(self, beta0: float = DARTS_MINUS_BETA0, decay: str = "linear"):
        if decay not in DECAYS:
            raise ValueError(f"decay: expected one of {', '.join(DECAYS)}, got {decay!r}")
        self.beta0, self.decay = float(beta0), decay
        self.coefficient = self.beta0

    def check(self, config: Any, layout: Any) -> None:
        _check_cells("aux_skip", layout)

    def apply(self, supernet: nn.Module) -> None:
        _replace_mixed_ops(supernet, AuxSkipMixedOp)

    def forward_weights(self, ctx, group_weights, extra):
        self.coefficient = aux_coefficient(ctx.progress, self.beta0, self.decay)
        return [torch.cat([w, torch.full((w.shape[0], 1), self.coefficient, dtype=w.dtype, device=w.device)], dim=1)
                for w in group_weights]

    def metrics(self, ctx: Any) -> dict[str, float]:
        return {"aux_skip_coefficient": aux_coefficient(ctx.progress, self.beta0, self.decay)}
