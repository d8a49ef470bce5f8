"""Operation registry: every candidate op of every cell space, by name.

An op factory has the signature ``factory(C, stride, affine) -> nn.Module`` and maps
``C`` channels to ``C`` channels (``stride`` 2 halves the spatial size). Search cells
build ops with ``affine=False`` (ALGORITHMS.md, DARTS); discrete networks with
``affine=True``. Register new ops with :func:`register_op`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from dartboard.registries import Registry

OpFactory = Callable[[int, int, bool], nn.Module]
OPS: Registry[OpFactory] = Registry("op")
register_op = OPS.register  # decorator adding an op factory under a name


def make_op(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    """Build op ``name``; unknown names raise a ValueError listing the known ones."""
    return OPS.lookup(name)(C, stride, affine)


class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise dilated conv, pointwise conv, BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConvs with dilation 1 (the DARTS separable convolution)."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(C_in, C_in, kernel, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel, 1, padding, 1, affine),
        )


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The `none` op: zeros of the output shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset stride-2 1x1 convs, concatenated."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # Odd sizes: pad so the offset branch has the same output size.
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class FactorizedConv(nn.Sequential):
    """ReLU, conv 1xk stride (1,s), conv kx1 stride (s,1), BN (DARTOpti conv_3x1_1x3 / conv_7x1_1x7)."""

    def __init__(self, C: int, k: int, stride: int, affine: bool):
        pad = k // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, (1, k), stride=(1, stride), padding=(0, pad), bias=False),
            nn.Conv2d(C, C, (k, 1), stride=(stride, 1), padding=(pad, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


class Bottleneck131(nn.Sequential):
    """ALGORITHMS.md DARTOpti: ReLU, 1x1 C->C, BN, 3x3 stride s, BN, 1x1 C->4C, BN, ReLU, 1x1 4C->C, BN."""

    def __init__(self, C: int, stride: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 1, bias=False),
            nn.BatchNorm2d(C, affine=affine),
            nn.Conv2d(C, C, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(C, affine=affine),
            nn.Conv2d(C, 4 * C, 1, bias=False),
            nn.BatchNorm2d(4 * C, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(4 * C, C, 1, bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` whose gradient is right on CUDA for channels-last inputs too.

    PyTorch's channels-last (NHWC) CUDA kernel of the average pooling's backward drops the padding
    offset when ``padding > 0`` and silently returns wrong input gradients (pytorch/pytorch#188344;
    torch 2.11 on an H200: 1e-4 to 2e-3 off in float64, found by ``benchmarks/gpu_op_check.py``). On
    CUDA such a pooling gets its input in the standard NCHW strides (:func:`nchw`), whose kernel is right;
    the output is then NCHW and the forward values unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and any(_pair(self.padding)):
            x = nchw(x)
        return super().forward(x)


def nchw(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the standard contiguous strides of its shape (``x`` itself when it has them). Not
    ``x.contiguous()``: PyTorch calls a channels-last tensor with a channel or spatial size of 1
    contiguous as it is, yet its kernels take it as channels-last (and a channel slice of a channels-last
    tensor, which is not contiguous, too)."""
    if x.dim() != 4:
        return x
    n, c, h, w = x.shape
    if x.stride() == (c * h * w, h * w, w, 1):
        return x
    return x.clone(memory_format=torch.contiguous_format)


def _pool(kind: str) -> OpFactory:
    def factory(C: int, stride: int, affine: bool) -> nn.Module:
        if kind == "avg":
            return AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        return nn.MaxPool2d(3, stride=stride, padding=1)

    return factory


register_op("none")(lambda C, stride, affine: Zero(stride))
register_op("avg_pool_3x3")(_pool("avg"))
register_op("max_pool_3x3")(_pool("max"))
register_op("skip_connect")(
    lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine)
)
register_op("sep_conv_3x3")(lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine))
register_op("sep_conv_5x5")(lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine))
register_op("sep_conv_7x7")(lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine))
register_op("dil_conv_3x3")(lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine))
register_op("dil_conv_5x5")(lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine))
# DARTOpti extra ops (thesis 4.1.4; ALGORITHMS.md DARTOpti).
register_op("conv_3x1_1x3")(lambda C, stride, affine: FactorizedConv(C, 3, stride, affine))
register_op("conv_7x1_1x7")(lambda C, stride, affine: FactorizedConv(C, 7, stride, affine))
register_op("simple_conv_1x1")(lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine))
register_op("simple_conv_3x3")(lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine))
register_op("bottleneck_1x3x1")(lambda C, stride, affine: Bottleneck131(C, stride, affine))


class Noise(nn.Module):
    """R-DARTS S4 `noise` op: N(mean, std) noise of the (strided) input's shape, ignoring the input."""

    def __init__(self, stride: int, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.stride, self.mean, self.std = stride, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shaped = x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]
        return torch.randn_like(shaped) * self.std + self.mean


register_op("noise")(lambda C, stride, affine: Noise(stride))  # R-DARTS S4: N(0, 1)

#: The DARTS search space (8 ops including `none`), in the order of the original code.
DARTS_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
#: DARTOpti's space S_o: the 7 DARTS ops without `none` plus 5 extra ops (12 in all).
DARTOPTI_PRIMITIVES: tuple[str, ...] = DARTS_PRIMITIVES[1:] + (
    "conv_3x1_1x3",
    "conv_7x1_1x7",
    "simple_conv_1x1",
    "simple_conv_3x3",
    "bottleneck_1x3x1",
)
#: Ops that are an identity at stride 1 (at stride 2 `skip_connect` is a FactorizedReduce); drop path
#: tests the built op (``isinstance(op, Identity)``), not this name.
IDENTITY_OPS = frozenset({"skip_connect"})
