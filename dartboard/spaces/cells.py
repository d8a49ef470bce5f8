"""Mixed ops, search cells and discrete cells (DARTS cell structure, ALGORITHMS.md DARTS).

A cell has ``n_inputs`` = 2 inputs (the outputs of the two previous cells, preprocessed to
``C`` channels) and ``steps`` intermediate nodes; node ``j`` sums one edge from every
earlier node (14 edges for 4 steps). The output concatenates the intermediate nodes.
Search cells hold every candidate op on every edge and mix them with weights that the
caller passes in: the cell owns no architecture parameters, the searcher does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dartboard.spaces.genotype import CellGenotype
from dartboard.spaces.ops import FactorizedReduce, Identity, ReLUConvBN, make_op


def edge_list(steps: int, n_inputs: int = 2) -> list[tuple[int, int]]:
    """All (src, dst) edges of a search cell in the canonical order of the DARTS code."""
    return [(src, n_inputs + i) for i in range(steps) for src in range(n_inputs + i)]


class MixedOp(nn.Module):
    """sum_o w_o * o(x) over the candidate ops of one edge (DARTS Eq 2 with given weights).

    ``active`` lists the indices of the ops evaluated in the forward; masked ops
    (CRB, ALGORITHMS.md Maile et al.) are skipped entirely, not multiplied by zero.
    With ``skip_zero_weights`` (GDAS's hard samples) an op whose weight is exactly 0 in this
    forward is skipped too (one host read of the weights): the sampled op alone is computed, and
    the alphas still get the straight-through gradient through the sampled op's weight.
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str]):
        super().__init__()
        self.primitives = tuple(primitives)
        self.C, self.stride = C, stride
        self.skip_zero_weights = False
        ops = []
        for name in self.primitives:
            op = make_op(name, C, stride, affine=False)
            if "pool" in name:  # pooling is followed by a non-affine BN in search
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        self.active: tuple[int, ...] = tuple(range(len(ops)))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        active = self.active
        if self.skip_zero_weights:
            nonzero = (weights.detach() != 0).tolist()
            active = tuple(i for i in active if nonzero[i])
        for i in active:
            term = weights[i] * self.ops[i](x)
            out = term if out is None else out + term
        if out is None:  # every op masked: the edge contributes zeros, at no cost
            return x[:, :, :: self.stride, :: self.stride].mul(0.0)
        return out


class SearchCell(nn.Module):
    def __init__(
        self,
        edge_primitives: Sequence[Sequence[str]],
        steps: int,
        multiplier: int,
        C_pp: int,
        C_p: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        node_bn: bool = False,
    ):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.edges = edge_list(steps)
        if len(edge_primitives) != len(self.edges):
            raise ValueError(f"edge_primitives: expected {len(self.edges)} edges, got {len(edge_primitives)}")
        self.edge_primitives = [tuple(p) for p in edge_primitives]
        self.preprocess0 = FactorizedReduce(C_pp, C, affine=False) if reduction_prev else ReLUConvBN(
            C_pp, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.mixed = nn.ModuleList(
            MixedOp(C, 2 if reduction and src < 2 else 1, prims)
            for (src, _), prims in zip(self.edges, self.edge_primitives, strict=True)
        )
        # Maile et al.: a non-affine BN after each node's sum (used with CRB).
        self.node_bn = nn.ModuleList(nn.BatchNorm2d(C, affine=False) for _ in range(steps)) if node_bn else None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for i in range(self.steps):
            n_in = len(states)
            s = sum(self.mixed[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            if self.node_bn is not None:
                s = self.node_bn[i](s)
            offset += n_in
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest by 1 / (1 - drop_prob)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x.div(keep) * mask


class DiscreteCell(nn.Module):
    """A cell built from a :class:`CellGenotype`; a node sums the ops of its incoming edges."""

    def __init__(self, genotype: CellGenotype, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        if genotype.n_inputs != 2:
            raise ValueError(f"cells with {genotype.n_inputs} inputs are not supported (expected 2)")
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)
        self.edges = list(genotype.edges)
        self.ops = nn.ModuleList(
            make_op(e.op, C, 2 if reduction and e.src < 2 else 1, affine=True) for e in self.edges
        )
        # Drop path spares true identities only (DARTS model.py: `not isinstance(op, Identity)`): a
        # skip_connect on a stride-2 edge is a FactorizedReduce with weights and is dropped like any op.
        self.identity = [isinstance(op, Identity) for op in self.ops]
        self.nodes = sorted({e.dst for e in self.edges})
        self.concat = list(genotype.concat)
        self.multiplier = len(self.concat)
        self.drop_prob = 0.0

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = {0: self.preprocess0(s0), 1: self.preprocess1(s1)}
        for node in self.nodes:
            total = None
            for k, edge in enumerate(self.edges):
                if edge.dst != node:
                    continue
                h = self.ops[k](states[edge.src])
                if self.training and self.drop_prob > 0 and not self.identity[k]:
                    h = drop_path(h, self.drop_prob)
                total = h if total is None else total + h
            states[node] = total
        return torch.cat([states[n] for n in self.concat], dim=1)
