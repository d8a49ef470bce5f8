"""How the batched engine runs a depthwise convolution: the kernel cropped to the taps that reach an input
pixel, and a stride-2 dilation-2 conv as an undilated conv of the even pixels (same outputs and gradients)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def depthwise(x: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d, groups: int, flipped: bool = False
              ) -> torch.Tensor:
    """``conv``'s depthwise convolution of ``x`` with ``weight`` as :func:`depthwise_plan` runs it; ``flipped``: with
    the flipped-kernel input gradient where it applies (:func:`depthwise_conv`)."""
    x, crop, stride, padding, dilation = depthwise_plan(x, conv)
    weight = crop_kernel(weight, crop)
    if is_scale(weight, stride, padding) and weight.shape[0] == groups == x.shape[1]:  # multiplier 1
        return channel_scale(x, weight, 1)
    return depthwise_conv(x, weight, stride, padding, dilation, groups, flipped)


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], groups: int, flipped: bool) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, dilation, groups)``; with ``flipped``, as :func:`depthwise_flipped`
    where that applies (stride 1)."""
    if flipped and flipped_input_grad(weight, stride, padding, dilation, groups):
        return depthwise_flipped(x, weight, tuple(padding), tuple(dilation), groups)
    return F.conv2d(x, weight, None, stride, padding, dilation, groups)


def is_scale(weight: torch.Tensor, stride: tuple[int, ...], padding: tuple[int, ...]) -> bool:
    """Whether a depthwise conv with this (cropped) ``weight`` is a per-channel scale: 1x1, stride 1, no padding
    (a 5x5 or dilated kernel on a 2x2 or 1x1 map, cropped to its centre)."""
    return tuple(weight.shape[2:]) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def channel_scale(x: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
    """A 1x1 depthwise conv (``weight``: ``[n * C, 1, 1, 1]``) of ``x`` (``[B, C, H, W]``) repeated ``n`` times along
    the channels (output channel e * C + c), as one multiply of the channels-last pixels: no repeated copy of ``x``, a
    channels-last output. On the CPU, forward and backward, 3.6-4.6x faster than oneDNN's 1x1 depthwise conv
    on the digits supernet's 2x2 maps ([64, 32..128, 2, 2]: 197-211 against 43-58 us)."""
    batch, channels, height, width = x.shape
    y = x.permute(0, 2, 3, 1).unsqueeze(3) * weight.view(n, channels)
    return y.reshape(batch, height, width, n * channels).permute(0, 3, 1, 2)


def depthwise_plan(x: torch.Tensor, conv: nn.Conv2d) -> tuple[torch.Tensor, tuple[int, int, int, int] | None,
                                                              tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """How to run ``conv``'s depthwise convolution of ``x``: ``(x, crop, stride, padding, dilation)``.

    The kernel is cropped to the taps that reach an input pixel (``crop``: first and last row and
    column, or None): on small maps the outer taps of a 5x5 or dilated kernel only ever meet the zero
    padding (a 5x5 kernel on a 2x2 map is a 3x3 one; a dilated 3x3 on a 2x2 map its centre). Same
    output, and the cropped taps' gradient is the same zero.

    A stride-2 conv with dilation 2 (and even padding) only ever reads the even pixels: it is an
    undilated stride-1 conv of ``x[:, :, ::2, ::2]`` with half the padding, whose backward runs 3-4x
    faster on CPU than the dilated strided one."""
    stride, padding, dilation = conv.stride, conv.padding, conv.dilation
    if stride == dilation == (2, 2) and padding[0] % 2 == padding[1] % 2 == 0:
        x, stride, dilation = x[:, :, ::2, ::2], (1, 1), (1, 1)
        padding = (padding[0] // 2, padding[1] // 2)
    hits = [taps(size, k, s, p, d) for size, k, s, p, d in
            zip(x.shape[2:], conv.kernel_size, stride, padding, dilation, strict=True)]
    if all(t is None for t in hits):
        return x, None, stride, padding, dilation
    (lo_h, hi_h), (lo_w, hi_w) = [t or (0, k - 1) for t, k in zip(hits, conv.kernel_size, strict=True)]
    padding = tuple(p - lo * d for p, lo, d in zip(padding, (lo_h, lo_w), dilation, strict=True))
    return x, (lo_h, hi_h, lo_w, hi_w), stride, padding, dilation


def crop_kernel(weight: torch.Tensor, crop: tuple[int, int, int, int] | None) -> torch.Tensor:
    return weight if crop is None else weight[:, :, crop[0]:crop[1] + 1, crop[2]:crop[3] + 1]


@functools.cache
def taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int] | None:
    """The first and last kernel taps (along one axis) that meet an input pixel, when cropping the
    kernel to them keeps it centred (the padding stays symmetric); else None."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    hit = [i for i in range(kernel)
           if any(0 <= o * stride - padding + i * dilation < size for o in range(out))]
    if not hit:
        return None
    lo, hi = hit[0], hit[-1]
    if (lo, hi) == (0, kernel - 1) or lo != kernel - 1 - hi:
        return None
    return lo, hi


def depthwise_matmul(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                     dilation: tuple[int, int], edge_major: bool = False) -> torch.Tensor:
    """A depthwise convolution of ``x`` (``[B, C, H, W]``) with ``weight`` (``[C * m, 1, kh, kw]``, channel
    multiplier m: PyTorch's ``groups=C``) as one matrix product per channel: each channel's conv is a linear map
    of its H * W input pixels to its H' * W' output pixels (a Toeplitz matrix built from the kernel), all
    channels in one batched matrix product. On small maps (4x4, 2x2) that is a few dense products instead of
    oneDNN's depthwise kernels, which are slow there for dilated and 5x5 kernels, multipliers and tiny maps.

    The output is channels-last, its channels in PyTorch's order (c * m + j) or, ``edge_major``, j * C + c (the
    batched engine's edge-major order, without the reorder copy a multiplier conv needs). Its backward hands
    the input's gradient back channels-last, and is made of differentiable ops (R-DARTS' Hessian). Under autocast
    it runs in the autocast dtype, as the convolution does."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
    return _DepthwiseMatmul.apply(x, weight, tuple(stride), tuple(padding), tuple(dilation), edge_major)


class _DepthwiseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, edge_major):
        batch, channels, height, width = x.shape
        m, kernel = weight.shape[0] // channels, tuple(weight.shape[2:])
        select, out_h, out_w = _selection((height, width), kernel, stride, padding, dilation, x.device, x.dtype)
        toeplitz = _toeplitz(weight, select, channels)
        # x and the weight, neither x's [C, B, Q] copy nor the Toeplitz matrices (at 8x8 maps with multiplier 4 four
        # times x's size): the ReLU before keeps x anyway, and the backward makes both again (a copy and a small
        # product), which is also what makes that backward differentiable (R-DARTS' Hessian). The digits step's
        # peak: 107.4 MiB keeping both, 95.9 as on oneDNN's multiplier convs without them.
        ctx.save_for_backward(x, weight, select)
        ctx.shape = (batch, channels, m, out_h, out_w, height, width, kernel, edge_major)
        return _from_rows(torch.bmm(_channel_rows(x), toeplitz), ctx.shape)  # [C, B, m * P] -> [B, C * m, H', W']

    @staticmethod
    def backward(ctx, grad):
        x, weight, select = ctx.saved_tensors
        batch, channels, m, out_h, out_w, height, width, kernel, edge_major = ctx.shape
        toeplitz = _toeplitz(weight, select, channels)
        rows = _to_rows(grad, ctx.shape)
        grad_x = grad_w = None
        if grad_needed(ctx, 0):  # not in a pass that asks for other leaves only (as autograd's own convs)
            gx = torch.bmm(rows, toeplitz.transpose(1, 2))  # [C, B, Q]
            grad_x = gx.view(channels, batch, height, width).permute(1, 0, 2, 3).contiguous(
                memory_format=torch.channels_last)
        if grad_needed(ctx, 1):  # the alpha step needs no weight gradient
            gt = torch.bmm(_channel_rows(x).transpose(1, 2), rows)  # [C, Q, m * P]
            gt = gt.view(channels, height * width, m, out_h * out_w).transpose(1, 2).reshape(channels * m, -1)
            grad_w = (gt @ select.view(select.shape[0], -1).t()).view(channels * m, 1, *kernel)
        return grad_x, grad_w, None, None, None, None


def _channel_rows(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` as a contiguous ``[C, B, H * W]`` (a copy). Of a channels-last ``x`` the reshape alone is a
    view whose matrices have stride 1 between them, and CPU ``bmm`` then copies each matrix (6x slower)."""
    batch, channels, height, width = x.shape
    return x.permute(1, 0, 2, 3).reshape(channels, batch, height * width).contiguous()


def _toeplitz(weight: torch.Tensor, select: torch.Tensor, channels: int) -> torch.Tensor:
    """``[C, Q, m * P]``: per channel, the matrix mapping its Q input pixels to its m * P outputs."""
    taps, q, p = select.shape
    m = weight.shape[0] // channels
    t = (weight.reshape(channels * m, taps) @ select.view(taps, q * p)).view(channels, m, q, p)
    return t.transpose(1, 2).reshape(channels, q, m * p)


def _from_rows(out: torch.Tensor, shape: tuple) -> torch.Tensor:
    """``[C, B, m * P]`` as a channels-last ``[B, C * m, H', W']`` (channel c * m + j, or j * C + c)."""
    batch, channels, m, out_h, out_w, _, _, _, edge_major = shape
    out = out.view(channels, batch, m, out_h, out_w)
    order = (1, 3, 4, 2, 0) if edge_major else (1, 3, 4, 0, 2)  # [B, H', W', m, C] or [B, H', W', C, m]
    out = out.permute(*order).contiguous().view(batch, out_h, out_w, channels * m)
    return out.permute(0, 3, 1, 2)


def _to_rows(grad: torch.Tensor, shape: tuple) -> torch.Tensor:
    """The inverse of :func:`_from_rows`: a ``[B, C * m, H', W']`` gradient as ``[C, B, m * P]`` (a copy)."""
    batch, channels, m, out_h, out_w, _, _, _, edge_major = shape
    g = grad.reshape(batch, *((m, channels) if edge_major else (channels, m)), out_h * out_w)
    g = g.permute(2, 0, 1, 3) if edge_major else g.permute(1, 0, 2, 3)  # [C, B, m, P]
    return g.reshape(channels, batch, m * out_h * out_w).contiguous()  # bmm's fast path: no per-matrix copies


@functools.cache
def _selection(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, int, int]:
    """``([kh * kw, H * W, H' * W'], H', W')``: 1 where kernel tap t carries input pixel q to output pixel p (made
    once per geometry, device and dtype)."""
    (h, w), (kh, kw) = size, kernel
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    select = torch.zeros(kh * kw, h * w, out_h * out_w)
    for i in range(kh):
        for j in range(kw):
            for oh in range(out_h):
                ih = oh * stride[0] - padding[0] + i * dilation[0]
                if not 0 <= ih < h:
                    continue
                for ow in range(out_w):
                    iw = ow * stride[1] - padding[1] + j * dilation[1]
                    if 0 <= iw < w:
                        select[i * kw + j, ih * w + iw, oh * out_w + ow] = 1.0
    return select.to(device=device, dtype=dtype), out_h, out_w


def grad_needed(ctx, index: int) -> bool:
    """Whether a custom autograd function's backward must give input ``index``'s gradient in this backward pass.
    ``ctx.needs_input_grad`` says only that the input requires a gradient; a pass that asks for some leaves
    (``torch.autograd.grad(loss, alphas)``: the search's alpha step) runs only the nodes on their paths, as
    autograd's own ops do (a conv's weight gradient is not computed in the alpha step). This asks the engine the
    same of the node the gradient would go to."""
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[index][0]
    if node is None:
        return False
    will_run = getattr(torch._C, "_will_engine_execute_node", None)  # private: a torch without it computes all
    if will_run is None or node.name() == "torch::autograd::AccumulateGrad":  # a leaf: answered for backward() only
        return True
    return will_run(node)


def flipped_input_grad(weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                       groups: int) -> bool:
    """Whether a depthwise conv takes :func:`depthwise_flipped`: stride 1, a padding that keeps the flipped conv's
    ``dilation * (kernel - 1) - padding`` at zero or more, and a conv whose backward-data kernel in oneDNN is slow:
    a kernel larger than 3x3, a dilation or a channel multiplier. An undilated 3x3 (or smaller) kernel without a
    multiplier keeps oneDNN's backward (timed alone, forward and input gradient with the flipped conv: 0.80-0.97x
    in five of the six shapes timed, 1.9x in one)."""
    kernel = tuple(weight.shape[2:])
    slow = max(kernel) > 3 or tuple(dilation) != (1, 1) or weight.shape[0] != groups
    return slow and tuple(stride) == (1, 1) and all(
        d * (k - 1) - p >= 0 for k, p, d in zip(kernel, padding, dilation, strict=True))


def depthwise_flipped(x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int], dilation: tuple[int, int],
                      groups: int, source: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, None, 1, padding, dilation, groups)`` for a depthwise ``weight`` (``[C * m, 1, kh, kw]``,
    ``groups`` = C, channel multiplier m), whose input gradient is a depthwise *forward* conv of the output
    gradient with the flipped kernel (summed over the multiplier): oneDNN's backward-data kernels for
    channels-last depthwise convs are slow for 5x5, dilated and multiplier convs, its forward ones are not. On the
    CPU, ``[16, 16, 32, 32]`` with a 5x5 kernel and multiplier 4: 7.2 against 1.7 ms; ``[16, 64, 32, 32]``, 5x5,
    dilation 2: 9.9 against 0.7 ms. The weight gradient is oneDNN's, computed only in a backward pass that
    needs it (:func:`grad_needed`: not in the alpha step). Stride 1 only; the engine's rule: :func:`flipped_input_grad`.
    Its backward is made of differentiable ops (R-DARTS' Hessian); under autocast it runs in the autocast dtype."""
    if torch.is_autocast_enabled(x.device.type):  # the conv's autocast dtype, for the backward's convs too
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        source = None if source is None else source.to(dtype)
    return _DepthwiseFlipped.apply(x, weight, tuple(padding), tuple(dilation), groups, source)


class _DepthwiseFlipped(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding, dilation, groups, source):
        ctx.save_for_backward(x if source is None else source, weight)
        ctx.conv = (padding, dilation, groups, source is not None)
        return F.conv2d(x, weight, None, 1, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        # Differentiable ops only (a forward conv, and ``convolution_backward``, which has its own derivative): with
        # create_graph (R-DARTS' Hessian) the gradient's gradient follows.
        x, weight = ctx.saved_tensors
        padding, dilation, groups, repeated = ctx.conv
        grad_x = grad_w = None
        if grad_needed(ctx, 0):
            grad_x = _flipped_conv(grad, weight, padding, dilation, groups)
        if grad_needed(ctx, 1):
            if repeated:  # x is the source: the weight gradient of the multiplier conv of it, in the edges' order
                grad_w = _multiplier_weight_grad(grad, x, weight, padding, dilation)
            else:
                grad_w = torch.ops.aten.convolution_backward(
                    grad, x, weight, None, [1, 1], list(padding), list(dilation), False, [0, 0], groups,
                    [False, True, False])[1]
        return grad_x, grad_w, None, None, None, None


def _multiplier_weight_grad(grad: torch.Tensor, source: torch.Tensor, weight: torch.Tensor,
                            padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """The weight gradient of a depthwise conv of ``source`` (``[B, C, H, W]``) repeated m times (edge-major: channel
    j * C + c), ``weight`` ``[m * C, 1, kh, kw]`` in that order, as the weight gradient of one conv of ``source`` with
    channel multiplier m (oneDNN's order c * m + j): oneDNN's multiplier-1 weight gradient of a 5x5 kernel is slow
    (8.3 ms on ``[16, 64, 32, 32]``), its multiplier-4 one of the unrepeated input is not (1.9 ms)."""
    channels, kernel = source.shape[1], weight.shape[2:]
    m = weight.shape[0] // channels
    grad_cm = swap_channel_blocks(grad, m, channels)  # channel j * C + c -> c * m + j
    # the weight's values do not enter a conv's weight gradient, only its shape [C * m, 1, kh, kw]
    g = torch.ops.aten.convolution_backward(grad_cm, source, weight, None, [1, 1], list(padding), list(dilation),
                                            False, [0, 0], channels, [False, True, False])[1]
    return g.view(channels, m, *kernel).transpose(0, 1).reshape(weight.shape)


def swap_channel_blocks(y: torch.Tensor, outer: int, inner: int) -> torch.Tensor:
    """``[B, outer * inner, H, W]`` with channel a * inner + b as channels-last ``[B, inner * outer, H, W]`` with
    channel b * outer + a (a copy): a multiplier conv's order c * m + j to the edges' j * C + c (outer C, inner m),
    and back (outer m, inner C)."""
    batch, _, height, width = y.shape
    rows = y.permute(0, 2, 3, 1).reshape(batch, height, width, outer, inner).transpose(3, 4)
    return rows.reshape(batch, height, width, inner * outer).permute(0, 3, 1, 2)


def _flipped_conv(grad: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int], dilation: tuple[int, int],
                  groups: int) -> torch.Tensor:
    """The input gradient of a stride-1 depthwise conv: ``grad`` (``[B, C * m, H', W']``) convolved with the flipped
    kernel, padded by ``dilation * (kernel - 1) - padding``, summed over the multiplier as m - 1 adds of strided
    views (a ``sum`` over the innermost m took 2-3x the conv's own time: whole published step -4.7 %);
    channels-last."""
    m = weight.shape[0] // groups
    pad = tuple(d * (k - 1) - p for k, p, d in zip(weight.shape[2:], padding, dilation, strict=True))
    z = F.conv2d(grad, weight.flip(2, 3), None, 1, pad, dilation, groups * m)
    batch, _, height, width = z.shape
    if m == 1:
        return z.contiguous(memory_format=torch.channels_last)
    rows = z.permute(0, 2, 3, 1).reshape(batch, height, width, groups, m)  # channel c * m + j -> [..., c, j]
    total = rows[..., 0] + rows[..., 1]
    for j in range(2, m):
        total = total + rows[..., j]
    return total.permute(0, 3, 1, 2)
