"""The batched engine's convolutions: the DilConvs (and SepConvs) of all edges leaving one node as one
depthwise conv, one pointwise conv and one BN call, run as the device's :class:`ConvPlan` says.

A conv op's stages come by role (:class:`_Stage`): the first edge's ReLU, and every edge's depthwise conv,
pointwise conv and non-affine BN. Gradients keep the layout of the tensors they belong to
(:func:`_channels_last_grad`): a channels-last BN or conv backward handed an NCHW gradient takes a slow path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dartboard.spaces.depthwise import (
    channel_scale,
    crop_kernel,
    depthwise,
    depthwise_flipped,
    depthwise_matmul,
    depthwise_plan,
    flipped_input_grad,
    is_scale,
    swap_channel_blocks,
)
from dartboard.spaces.ops import FactorizedReduce, nchw

CHANNELS_LAST = torch.channels_last


@dataclass(frozen=True)
class _Stage:
    """One DilConv (ReLU, depthwise, pointwise, non-affine BN) on each of E edges: the modules by role."""

    relu: nn.Module  # the first edge's (all edges' are alike)
    dw: tuple[nn.Conv2d, ...]
    pw: tuple[nn.Conv2d, ...]
    bn: tuple[nn.BatchNorm2d, ...]


def _stage(convs: Sequence[nn.Sequential]) -> _Stage:
    return _Stage(convs[0][0], tuple(c[1] for c in convs), tuple(c[2] for c in convs), tuple(c[3] for c in convs))


class _GradLayout(torch.autograd.Function):
    """Identity whose backward hands on the gradient with the given strides. The gradient of one
    block of a concatenation is a strided slice (the per-edge ops' outputs in batched.py); a channels-last BN
    backward on a gradient that is not channels-last takes a slow path (6-8x slower)."""

    @staticmethod
    def forward(ctx, x, strides):
        ctx.strides = strides
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if grad.stride() == ctx.strides:
            return grad, None
        out = torch.empty_strided(grad.shape, ctx.strides, dtype=grad.dtype, device=grad.device)
        return out.copy_(grad), None


def _channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """``x``; its gradient in ``x``'s own layout: channels-last where ``x`` is (the CPU's convolutions and
    BNs here give channels-last outputs), else ``x``'s. Never a layout other than the output's: the BN
    backward that gets it also reads the BN's saved input, and on CUDA an op may give NCHW outputs, where
    a channels-last gradient would meet an NCHW input."""
    return _GradLayout.apply(x, x.stride())


def _conv_stack(relu: torch.Tensor, stages: Sequence[_Stage], scale: torch.Tensor | None,
                repeats: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """``[B, E * C, H', W']`` (edge-major channels): one DilConv (or SepConv: two stages) per edge on a
    shared ReLU'd input, batched; the last BN's output times ``scale`` (one value per channel) when given;
    ``repeats``: the node's repeated inputs so far (:func:`_repeated`)."""
    if len(stages) == 1:
        out = _dil_conv_shared(relu, stages[0], scale, repeats)
    else:
        out = _dil_conv_grouped(_dil_conv_shared(relu, stages[0], None, repeats), stages[1], scale)
    if conv_plan(out.device).stack_nchw:  # back to channels-last for the mixing; the gradient back to NCHW
        out = _channels_last_grad(out).contiguous(memory_format=CHANNELS_LAST)
    return out


@dataclass(frozen=True)
class ConvPlan:
    """How the batched engine runs its convolutions on one device type (:data:`CONV_PLANS`).

    ``multiplier``: the 5x5 and dilated depthwise convs of several edges as one conv with a channel multiplier
    (else on the input repeated once per edge; faster on the CPU, 15 % slower for the graphed darts step on
    an H200: benchmarks/results/gpu_profile_h200_run2.json). ``pointwise``: the edges' 1x1 convs as one
    ``grouped`` conv or one ``block_diagonal`` dense conv (zeros off the edges' blocks: E times the arithmetic
    in one plain conv). ``depthwise_nchw``: depthwise convs on NCHW copies (:func:`~dartboard.spaces.ops.nchw`:
    PyTorch's own depthwise kernels on CUDA instead of cuDNN's NHWC ones), their outputs back to channels-last.
    CUDA's default has both since an H200 timed them (graphed darts step 145.1 -> 123.1 ms first order,
    416.3 -> 348.9 ms second: benchmarks/results/gpu_profile_h200_run3.json); both are slower on the CPU.
    ``stack_nchw`` (with ``depthwise_nchw``): the whole conv op (depthwise and pointwise convs, BNs, the second
    ReLU) on NCHW tensors, back to channels-last once, for the mixing, instead of around every depthwise conv.
    ``matmul_limit``: a depthwise conv with a channel multiplier runs as per-channel matrix products
    (:func:`~dartboard.spaces.depthwise.depthwise_matmul`, edge-major output: no reorder copy) where its input's
    pixels times channels per (cropped) kernel tap, H * W * C / (kh * kw), are at most this; 0: never. The
    products' work grows with the map (H * W per output pixel, against kh * kw taps), oneDNN's channels-last
    kernels run well with many channels: on the CPU, per conv of the digits step (forward and backward), 1.3-4x
    faster than oneDNN on 4x4 maps and for 5x5 kernels on 8x8 maps with 8 or 16 channels (9 to 57 here), even to
    slower for dilated 3x3 kernels on 8x8 maps (57), 0.5-2x at 8x8 with 64 channels (164, the published scale).
    ``linear_1x1``: the pointwise conv of a conv op where it has one group (one edge leaves the node, or the
    block-diagonal conv) as one matrix product of the channels-last pixels (``F.linear`` on a view of them: no
    copy); on the CPU, forward and backward timed alone, 1.05-2.4x faster than oneDNN's 1x1 conv at the digits
    shapes. Whole digits step, A/B in one process: -3.5 %; the cells' 1x1 preprocessing the same way gained
    nothing more, FactorizedReduce as one product with the two weights on the diagonal lost 1 %, and neither
    moved the published step: not kept.
    ``flipped_input_grad``: stride-1 depthwise convs with a kernel larger than 3x3, a dilation or a channel multiplier
    take their input gradient as a *forward* depthwise conv of the output gradient with the flipped kernel
    (:func:`~dartboard.spaces.depthwise.depthwise_flipped`; oneDNN's channels-last backward-data kernels are slow
    there, up to 15x slower than the forward conv), and compute their weight gradient only in a backward pass that
    needs it; the 5x5 and dilated kernels of a node that take no matrix products run on its repeated input (no
    reorder of a multiplier conv's output, forward or backward), their weight gradient that of a multiplier conv of
    the unrepeated input (oneDNN's multiplier-1 5x5 weight gradient is 4x slower). On the CPU, whole steps, A/B in
    one process: published scale -6.9 % first order and -7.4 % second with the flipped input gradient, -4.7 % more
    with the multiplier summed by adds, -8.4 % and -10.4 % more on the repeated input; the digits step (its
    multiplier convs are matrix products) unchanged within the spread: +0.8 % (423.1 -> 426.6 ms) and 0.0 %.
    ``reduce_many``: the stride-2 skips (``FactorizedReduce``) of a node's edges as two matrix products of its
    ReLU's even and odd pixels for all edges and one BN call (:func:`factorized_reduce_many`), and so the
    FactorizedReduce preprocessing of a cell after a reduction; else each module's own forward (a padded copy of
    its input, two strided convs, a concatenation and a BN per edge). On the CPU, whole steps, A/B in one process
    (the edges' alone): digits 403.7 -> 378.2 ms first order (-6.3 %), 1146.6 -> 1089.7 ms second (-5.0 %);
    published 2399.1 -> 2248.3 ms (-6.3 %), 6945.5 -> 6704.1 ms (-3.5 %). Not yet timed on a GPU (fewer kernels
    there: a node's forward with 4 such edges makes 17 aten calls other than views instead of 33).
    ``merge_limit``: a cell's two inputs run as one source node where they have the same shape, each sample's input
    (C * H * W) is at most this and their edges have the same ops, all batched ones (:func:`batched._merged_plan`):
    the inputs side by side on the channels, edge j of input s as edge (j, s) of 2 * steps edges (one ReLU, one set of
    convs and pools, one mixing for both inputs' edges; the stride-2 skips' products take each edge's weights on
    its input's channels, zeros on the other's); 0: never. It cuts the calls of the cells that take it by about a
    fifth (the digits step: 19,911 -> 17,965 dispatched ops with the normal cells merged); oneDNN's grouped 1x1
    convs of twice the channels on large maps run slower. On the CPU, whole steps, A/B in one process against 0:
    digits 440.6 -> 408.0 ms first order (paired 1.078x, 31 rounds, limit 1024: every cell of the digits supernet),
    normal cells alone (512) 1.05x first and second order; published (no cell within 1024) -6 % with its normal cells
    merged at any size (before the stride-2 skips took several sources), -2 % with the 8x8 cells merged (4096). Not
    timed on a GPU (``gpu_profile.variants``)."""

    multiplier: bool = True
    pointwise: str = "grouped"
    depthwise_nchw: bool = False
    stack_nchw: bool = False
    matmul_limit: float = 0.0
    linear_1x1: bool = False
    flipped_input_grad: bool = False
    reduce_many: bool = True
    merge_limit: float = 0.0

    def __post_init__(self) -> None:
        if self.pointwise not in ("grouped", "block_diagonal"):
            raise ValueError(f"ConvPlan.pointwise: expected 'grouped' or 'block_diagonal', got {self.pointwise!r}")
        if not self.matmul_limit >= 0:
            raise ValueError(f"ConvPlan.matmul_limit: expected a number >= 0 (0: never), got {self.matmul_limit!r}")
        if not self.merge_limit >= 0:
            raise ValueError(f"ConvPlan.merge_limit: expected a number >= 0 (0: never), got {self.merge_limit!r}")
        if self.stack_nchw and not self.depthwise_nchw:
            raise ValueError("ConvPlan.stack_nchw: runs the depthwise convs on NCHW tensors too; "
                             "it needs depthwise_nchw=True")


#: Per device type; a type not listed gets ``ConvPlan()``.
CONV_PLANS = {"cpu": ConvPlan(matmul_limit=64.0, linear_1x1=True, flipped_input_grad=True, merge_limit=1024.0),
              "cuda": ConvPlan(multiplier=False, pointwise="block_diagonal", depthwise_nchw=True)}


_DEFAULT_PLAN = ConvPlan()


def conv_plan(device: torch.device) -> ConvPlan:
    """The device type's plan (:data:`CONV_PLANS`), else ``ConvPlan()``: one object, not one made per call (the
    engine asks a few hundred times per step)."""
    return CONV_PLANS.get(device.type, _DEFAULT_PLAN)


def matmul_depthwise(plan: ConvPlan, shape: Sequence[int], kernel: Sequence[int]) -> bool:
    """Whether a multiplier depthwise conv of an input of ``shape`` (``[B, C, H, W]``) with a (cropped) ``kernel``
    runs as per-channel matrix products under ``plan`` (:attr:`ConvPlan.matmul_limit`)."""
    _, channels, height, width = shape
    return height * width * channels <= plan.matmul_limit * kernel[0] * kernel[1]


def _conv_layout(y: torch.Tensor, plan: ConvPlan) -> torch.Tensor:
    """A conv's output in the layout of the conv stack: NCHW under ``stack_nchw``, else channels-last (like the
    gradient the mixing hands back; a no-op on the CPU, whose convs keep channels-last, while a CUDA conv may
    give NCHW)."""
    return nchw(y) if plan.stack_nchw else y.contiguous(memory_format=CHANNELS_LAST)


def _dil_conv_shared(x: torch.Tensor, stage: _Stage, scale: torch.Tensor | None,
                     repeats: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """The depthwise convs of E DilConvs on one input, edge-major output channels (e * C + c) for the
    grouped pointwise conv. Where the (cropped) kernel takes oneDNN's fast depthwise path (3x3 or
    smaller, undilated, stride 1), or the device's :class:`ConvPlan` says so, the input is repeated E
    times along the channels and convolved with one filter per channel: with ``flipped_input_grad`` also every
    stride-1 5x5 or dilated kernel that takes no matrix products (its input gradient a flipped forward conv, its
    weight gradient that of a multiplier conv of the unrepeated input); elsewhere one conv with channel multiplier
    E (output channel c * E + e) is reordered."""
    plan, dw = conv_plan(x.device), stage.dw[0]
    C = x.shape[1]  # S sources' channels: edge (j, s) reads channels s * C_e .. (s + 1) * C_e of x
    n = len(stage.dw) * dw.in_channels // C  # the edges per source (J); E = J * S, edges in (j, s) order
    x, crop, stride, padding, dilation = depthwise_plan(x, dw)
    kernel = dw.kernel_size if crop is None else (crop[1] - crop[0] + 1, crop[3] - crop[2] + 1)
    fast_depthwise = stride == (1, 1) and max(kernel) <= 3 and (dilation == (1, 1) or kernel == (1, 1))
    flip = plan.flipped_input_grad and stride == (1, 1) and not matmul_depthwise(plan, x.shape, kernel)
    if fast_depthwise or not plan.multiplier or flip:
        weight = crop_kernel(torch.cat([d.weight for d in stage.dw]), crop)
        if is_scale(weight, stride, padding):  # a 1x1 kernel: the edges' weights scale x, not repeated
            return _pointwise_bn(_conv_layout(channel_scale(x, weight, n), plan), stage, scale)
        source, x = x, _repeated(x, n, plan, repeats)
        dilation = (1, 1) if kernel == (1, 1) else dilation
        if plan.flipped_input_grad and flipped_input_grad(weight, stride, padding, dilation, n * C):
            y = depthwise_flipped(x, weight, padding, dilation, n * C, source=source)
        else:
            y = F.conv2d(x, weight, None, stride, padding, dilation, n * C)
        return _pointwise_bn(_conv_layout(y, plan), stage, scale)
    # x's channel c with multiplier output j: the weights of super-edge j (its S edges' channels) for channel c
    stacked = torch.cat([d.weight for d in stage.dw]).view(n, C, *dw.weight.shape[1:])
    weight = crop_kernel(stacked.transpose(0, 1).reshape(C * n, 1, *dw.kernel_size), crop)
    if matmul_depthwise(plan, x.shape, kernel):
        return _pointwise_bn(depthwise_matmul(x, weight, stride, padding, dilation, edge_major=True), stage, scale)
    y = F.conv2d(nchw(x) if plan.depthwise_nchw else x, weight, None, stride, padding, dilation, C)
    return _pointwise_bn(swap_channel_blocks(y, C, n), stage, scale)  # channels-last, edge-major


def _repeated(x: torch.Tensor, n: int, plan: ConvPlan, repeats: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """``x`` repeated ``n`` times along the channels (edge-major): NCHW under ``depthwise_nchw``, else
    channels-last. Made once per node for every conv kind that takes it (``repeats``, keyed by the memory
    ``x`` views: a stride-2 dilated conv's even pixels are a new view of the same memory each time): the
    copies and the memory they hold (13 % of a step's peak with CUDA's plan) are not made again."""
    key = (x.data_ptr(), x.shape, x.stride(), n)
    if key not in repeats:
        if plan.depthwise_nchw:
            repeats[key] = x.repeat(1, n, 1, 1)  # standard NCHW strides whatever x's layout
        else:
            batch, channels, height, width = x.shape
            rows = x.permute(0, 2, 3, 1).unsqueeze(3).expand(batch, height, width, n, channels)
            repeats[key] = rows.reshape(batch, height, width, n * channels).permute(0, 3, 1, 2)  # channels-last
    return repeats[key]


def _dil_conv_grouped(x: torch.Tensor, stage: _Stage, scale: torch.Tensor | None = None) -> torch.Tensor:
    """E DilConvs (ReLU, depthwise, pointwise, BN), each on its own group of channels of ``x`` (edge-major):
    one depthwise conv. On NCHW copies the ReLU comes after the copy, so that its saved output is the conv's
    saved input (with the ReLU first, both were kept: on an H200 the step's peak rose from 4919 to 6288 MiB)."""
    plan, weight = conv_plan(x.device), torch.cat([d.weight for d in stage.dw])
    if plan.depthwise_nchw:
        x = nchw(x)
    y = depthwise(stage.relu(x), weight, stage.dw[0], groups=weight.shape[0], flipped=plan.flipped_input_grad)
    return _pointwise_bn(_conv_layout(y, plan), stage, scale)


def _pointwise_bn(y: torch.Tensor, stage: _Stage, scale: torch.Tensor | None = None) -> torch.Tensor:
    plan, groups = conv_plan(y.device), len(stage.pw)
    if groups > 1 and plan.pointwise == "block_diagonal":  # one dense conv, zeros off the blocks
        weight, groups = _block_diagonal([p.weight for p in stage.pw]), 1
    else:
        weight = torch.cat([p.weight for p in stage.pw])
    if groups == 1 and plan.linear_1x1:
        y = linear_1x1(y.permute(0, 2, 3, 1), weight)
    else:  # grouped, as a batched matrix product: 1.8x slower on an H200, 3-5 % on the CPU (gpu_profile_h200_run2.json)
        y = F.conv2d(y, weight, groups=groups)
    return batch_norm_many(_conv_layout(y, plan), stage.bn, scale)


def linear_1x1(pixels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv (``weight``: ``[C_out, C_in, 1, 1]``, one group, stride 1, no bias) of ``[B, H, W, C_in]`` pixels
    (a channels-last tensor's permuted view) as one matrix product: ``[B, C_out, H, W]``, channels-last."""
    return F.linear(pixels, weight.view(weight.shape[0], -1)).permute(0, 3, 1, 2)


def _block_diagonal(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[E * c_out, E * c_in, 1, 1]``: the E 1x1 conv weights on the diagonal, zeros elsewhere, as the stacked
    weights times a 0/1 mask (:func:`_sources_blocks` with one edge per source; the same values as
    ``torch.block_diag``). The gradient then comes back as one contiguous ``[E * c_out, c_in]`` tensor, whose slices
    the parameters take as their gradients; those of ``torch.block_diag`` are slices of the larger matrix with other
    strides, which autograd copies into each parameter's layout (one copy per edge and weight step), and its forward
    is one copy per edge too."""
    n, (c_out, c_in) = len(weights), weights[0].shape[:2]
    blocks = _sources_blocks(torch.cat([w.view(c_out, c_in) for w in weights]), c_out, n)
    return blocks.view(n * c_out, n * c_in, 1, 1)


_IDENTITIES: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}


def _identity(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``torch.eye(n)``, made once per size, device and dtype (not one kernel per block-diagonal weight and pass;
    the eager steps before a CUDA graph's capture make it, so a replay reads it and allocates nothing)."""
    key = (n, device, dtype)
    if key not in _IDENTITIES:
        _IDENTITIES[key] = torch.eye(n, device=device, dtype=dtype)
    return _IDENTITIES[key]


def batch_norm_many(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d], scale: torch.Tensor | None = None) -> torch.Tensor:
    """One training-mode BN call over the channels of several non-affine BNs (concatenated in order),
    its output times ``scale`` (one value per channel) when given; each BN's running statistics get
    exactly the update its own call would give them."""
    if len(bns) == 1 and scale is None:
        return bns[0](x)
    means, variances = [b.running_mean for b in bns], [b.running_var for b in bns]
    mean, var = (means[0], variances[0]) if len(bns) == 1 else (torch.cat(means), torch.cat(variances))
    out = F.batch_norm(x, mean, var, scale, None, True, bns[0].momentum, bns[0].eps)
    with torch.no_grad():
        if len(bns) > 1:  # the update went into the concatenation (a single BN: into its own buffers)
            sizes = [m.numel() for m in means]
            torch._foreach_copy_(means, list(mean.split(sizes)))
            torch._foreach_copy_(variances, list(var.split(sizes)))
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return out


def reducible(modules: Sequence[nn.Module]) -> bool:
    """Whether the stride-2 skips of a node's edges (``FactorizedReduce``) can run as one
    (:func:`factorized_reduce_many`): non-affine BNs with one momentum and eps, bias-free convs."""
    if not all(type(m) is FactorizedReduce for m in modules):
        return False
    bns = [m.bn for m in modules]
    return (all(not b.affine and b.track_running_stats for b in bns)
            and len({(b.momentum, b.eps) for b in bns}) == 1 and len({m.conv_1.weight.shape for m in modules}) == 1
            and all(m.conv_1.bias is None and m.conv_2.bias is None for m in modules))


def factorized_reduce_many(relu: torch.Tensor, reduces: Sequence[FactorizedReduce],
                           scale: torch.Tensor | None, sources: int = 1) -> torch.Tensor:
    """The stride-2 skips (``FactorizedReduce``) of the E edges leaving one node, from the node's ReLU output: the
    even pixels' 1x1 convs of every edge as one matrix product, the odd pixels' as another (an odd map's last odd
    pixel is the zero padding, as in ``FactorizedReduce``), one BN call. Channels-last ``[B, E * C_out, H', W']``,
    edge e's channels its conv_1's then its conv_2's, times ``scale`` (one value per channel) when given."""
    height, width = relu.shape[2:]
    shifted = relu if not (height % 2 or width % 2) else F.pad(relu, (0, width % 2, 0, height % 2))
    even, odd = relu[:, :, ::2, ::2], shifted[:, :, 1::2, 1::2]
    n, half = len(reduces), reduces[0].conv_1.out_channels
    # [E * half, S * C_in]: edge (j, s)'s weights on source s's channels
    w1 = _sources_blocks(torch.cat([m.conv_1.weight for m in reduces]).flatten(1), half, sources)
    w2 = _sources_blocks(torch.cat([m.conv_2.weight for m in reduces]).flatten(1), half, sources)
    y1 = F.linear(even.permute(0, 2, 3, 1), w1).unflatten(-1, (n, half))  # [B, H', W', E, half]
    y2 = F.linear(odd.permute(0, 2, 3, 1), w2).unflatten(-1, (n, half))
    y = torch.stack([y1, y2], dim=-2).flatten(3).permute(0, 3, 1, 2)  # [B, E * 2 * half, H', W'], channels-last
    return batch_norm_many(y, [m.bn for m in reduces], scale)


def _sources_blocks(weight: torch.Tensor, c_out: int, sources: int) -> torch.Tensor:
    """``[E * c_out, c_in]`` per-edge 1x1 weights (edges in (j, s) order) as ``[E * c_out, S * c_in]``: edge (j, s)'s
    block on source s's channels, zeros on the other sources' (one multiply by a 0/1 mask)."""
    if sources == 1:
        return weight
    c_in = weight.shape[1]
    blocks = weight.view(-1, sources, c_out, 1, c_in)  # [J, S, c_out, 1, c_in]
    mask = _identity(sources, weight.device, weight.dtype).view(1, sources, 1, sources, 1)
    return (blocks * mask).reshape(weight.shape[0], sources * c_in)
