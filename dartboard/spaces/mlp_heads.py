"""The MLP op set of NASiam (thesis 5.1.2) and the networks built from it: mixed layers for the
search, discrete heads of a derived ``mlp`` genotype, and the small CNN backbone of the bundled data.

Every op maps ``[batch, dim] -> [batch, dim]`` (the thesis version: equal hidden dimensions, so the
identity is a true identity and an identity layer vanishes on derivation). BN follows every linear
and pooling op except on the predictor's last layer (SimSiam's finding, followed by the thesis).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "silu": nn.SiLU, "elu": nn.ELU}
# Thesis 5.1.2: the 7 ops of S; S' drops the two pooling ops.
NASIAM_OPS: tuple[str, ...] = ("linear_relu", "linear_hardswish", "linear_silu", "linear_elu", "max_pool_3",
                               "avg_pool_3", "identity")
NASIAM_REDUCED_OPS: tuple[str, ...] = tuple(op for op in NASIAM_OPS if "pool" not in op)
POOL_KERNEL = 3  # thesis: max_pool_3x3 / avg_pool_3x3, 1-dimensional over the feature vector


class Pool1d(nn.Module):
    """A 1-d pooling over the features of each sample (kernel 3, stride 1, same length)."""

    def __init__(self, kind: str):
        super().__init__()
        cls = nn.MaxPool1d if kind == "max" else nn.AvgPool1d
        extra = {} if kind == "max" else {"count_include_pad": False}
        self.pool = cls(POOL_KERNEL, stride=1, padding=POOL_KERNEL // 2, **extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.unsqueeze(1)).squeeze(1)


def make_mlp_op(name: str, dim: int, bn: bool = True) -> nn.Module:
    """One op of the set; ``bn=False`` on the predictor's last layer."""
    if name == "identity":
        return nn.Identity()
    if name.startswith("linear_") and name[len("linear_"):] in ACTIVATIONS:
        core: list[nn.Module] = [nn.Linear(dim, dim, bias=not bn)]
        act = ACTIVATIONS[name[len("linear_"):]]()
    elif name in ("max_pool_3", "avg_pool_3"):
        core, act = [Pool1d(name[:3])], None
    else:
        raise ValueError(f"op: unknown MLP op {name!r}; known ops: {', '.join(NASIAM_OPS)}")
    layers = core + ([nn.BatchNorm1d(dim)] if bn else []) + ([act] if act is not None else [])
    return nn.Sequential(*layers)


class MixedLayer(nn.Module):
    """``sum_o w_o * o(x)`` over a layer's candidate ops (thesis Eq 5.3 with given weights);
    ``active``: the ops evaluated (masked ops are skipped, not multiplied by zero)."""

    def __init__(self, primitives: Sequence[str], dim: int, bn: bool = True):
        super().__init__()
        self.primitives = tuple(primitives)
        self.ops = nn.ModuleList(make_mlp_op(p, dim, bn) for p in self.primitives)
        self.active: tuple[int, ...] = tuple(range(len(self.ops)))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for i in self.active:
            term = weights[i] * self.ops[i](x)
            out = term if out is None else out + term
        return x.mul(0.0) if out is None else out


def discrete_head(ops: Sequence[str], dim: int, last_bn: bool = True) -> nn.Sequential:
    """The head of a derived chain (identity layers already removed); ``last_bn=False`` for the
    predictor (no BN on its output)."""
    return nn.Sequential(*(make_mlp_op(op, dim, bn=last_bn or i < len(ops) - 1) for i, op in enumerate(ops)))


class SmallCNN(nn.Module):
    """The backbone of the bundled data: 3 conv-BN-ReLU blocks (width C, 2C, 4C; the last two stride 2),
    global average pooling; features of dimension ``4C`` (the heads' dimension)."""

    def __init__(self, in_channels: int, C: int):
        super().__init__()
        widths = (C, 2 * C, 4 * C)
        blocks: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(widths):
            blocks += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
