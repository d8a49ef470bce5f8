"""The batched engine's convolutions as matrix products, against torch's own convolution (the obviously correct
slow path here): a depthwise convolution as one matrix product per channel (dartboard.spaces.depthwise.
depthwise_matmul; also against a hand-computed value): outputs, input and weight gradients, gradients of
gradients, channel orders, layouts and autocast; a 1x1 convolution as ``F.linear`` of the channels-last pixels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dartboard.spaces.batched import CONV_PLANS, ConvPlan, matmul_depthwise
from dartboard.spaces.batched_convs import linear_1x1
from dartboard.spaces.depthwise import depthwise_flipped, depthwise_matmul

CL = torch.channels_last


def test_a_2x2_map_by_hand():
    """One channel, x = [[1, 2], [3, 4]], a 3x3 kernel 0..8 with padding 1: each output pixel sums the taps
    that land on the four input pixels, e.g. out[0, 0] = k[1,1] * 1 + k[1,2] * 2 + k[2,1] * 3 + k[2,2] * 4 =
    4 + 10 + 21 + 32 = 67."""
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    k = torch.arange(9.0).view(1, 1, 3, 3)
    out = depthwise_matmul(x, k, (1, 1), (1, 1), (1, 1))
    assert out.tolist() == [[[[67.0, 57.0], [37.0, 27.0]]]]


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", [
    (4, 3, 1, 1, 1), (4, 3, 1, 2, 2), (4, 5, 1, 2, 1), (5, 5, 2, 2, 1), (8, 5, 1, 4, 2), (3, 3, 2, 1, 1),
    (2, 3, 1, 1, 1), (6, 1, 1, 0, 1)])
@pytest.mark.parametrize("multiplier", [1, 3])
@pytest.mark.parametrize("edge_major", [False, True])
def test_equals_torchs_depthwise_conv(size, kernel, stride, padding, dilation, multiplier, edge_major):
    """Output, input gradient and weight gradient equal ``F.conv2d(..., groups=C)`` in float64; ``edge_major``
    orders the output channels j * C + c instead of PyTorch's c * m + j. Output and input gradient come back
    channels-last."""
    torch.manual_seed(size * 10 + kernel)
    channels = 4
    x = torch.randn(3, channels, size, size, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(channels * multiplier, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, None, stride, padding, dilation, channels)
    if edge_major:
        b, _, h, wd = ref.shape
        ref = ref.view(b, channels, multiplier, h, wd).transpose(1, 2).reshape(b, channels * multiplier, h, wd)
    out = depthwise_matmul(x, w, (stride, stride), (padding, padding), (dilation, dilation), edge_major)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, w), g)
    for a, b in zip(grads, torch.autograd.grad(ref, (x, w), g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert grads[0].is_contiguous(memory_format=CL)


def test_an_input_that_is_a_strided_view_and_only_one_gradient_asked_for():
    """The batched engine hands it the even pixels of a map (a strided view) and asks the alpha step for the
    input's gradient alone."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64)
    even = x[:, :, ::2, ::2]
    out = depthwise_matmul(even, w, (1, 1), (1, 1), (1, 1))
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    ref = F.conv2d(even, w, None, 1, 1, 1, 3)
    (gr,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(gx, gr)


def test_an_alpha_step_gets_no_weight_gradient_and_a_weight_step_gets_both(monkeypatch):
    """As autograd's own convs: ``torch.autograd.grad(loss, [alpha])`` leaves out the weight gradient's products (a
    weight that reaches the function through an op, as the engine's concatenated weights do), ``backward()`` computes
    both gradients, and a pass that asks for the weight alone leaves out the input gradient."""
    from dartboard.spaces import depthwise

    calls = []
    real_rows, real_bmm = depthwise._channel_rows, torch.bmm  # x's copy: made in the backward for the weight alone
    monkeypatch.setattr(depthwise, "_channel_rows", lambda t: calls.append("w") or real_rows(t))
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append("bmm") or real_bmm(*a))
    param = torch.randn(12, 1, 3, 3, requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)

    def loss():
        out = depthwise_matmul(torch.relu(x * alpha), torch.cat([param[:6], param[6:]]), (1, 1), (1, 1), (1, 1))
        calls.clear()  # the forward's own copy
        return out.square().sum()

    (ga,) = torch.autograd.grad(loss(), [alpha])
    assert calls == ["bmm"] and torch.isfinite(ga) and ga != 0  # the input gradient's product alone
    loss().backward()
    assert sorted(calls) == ["bmm", "bmm", "w"] and param.grad is not None and alpha.grad is not None
    (gw,) = torch.autograd.grad(loss(), [param])
    assert calls == ["w", "bmm"] and torch.allclose(gw, param.grad)  # the weight gradient's alone


def test_gradients_of_gradients():
    """Its backward is made of differentiable ops: R-DARTS differentiates the gradient (the Hessian)."""
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: depthwise_matmul(a, b, (1, 1), (2, 2), (2, 2), True)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w))


@pytest.mark.parametrize("way", ["matmul", "flipped"])
def test_under_autocast_it_runs_in_the_low_precision_like_the_conv(way):
    """The matrix products and the flipped-kernel conv (test_depthwise_flipped.py) under autocast: the conv's low
    precision, fp32 gradients for fp32 leaves."""
    x = torch.randn(2, 4, 4, 4).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(8, 1, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if way == "matmul":
            out = depthwise_matmul(x, w, (1, 1), (2, 2), (1, 1))
        else:
            out = depthwise_flipped(x, w, (2, 2), (1, 1), 4)
        ref = F.conv2d(x, w, None, 1, 2, 1, 4)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.05, atol=0.1)
    gx, gw = torch.autograd.grad(out.float().sum(), (x, w))
    assert gx.dtype == gw.dtype == torch.float32


def test_the_cpu_plan_takes_it_on_small_maps_and_few_channels_only():
    """The rule the CPU's plan applies (H * W * C / taps <= 64): the digits supernet's 4x4 maps and its 5x5
    kernels on 8x8 maps with 8 or 16 channels take the matrix products; the published scale's 8x8 maps with
    64 channels, where oneDNN was faster for undilated 5x5 kernels, and every 16x16 or 32x32 map keep oneDNN."""
    plan = CONV_PLANS["cpu"]
    assert matmul_depthwise(plan, (64, 16, 4, 4), (3, 3)) and matmul_depthwise(plan, (64, 32, 4, 4), (5, 5))
    assert matmul_depthwise(plan, (64, 16, 8, 8), (5, 5)) and matmul_depthwise(plan, (64, 8, 8, 8), (3, 3))
    assert not matmul_depthwise(plan, (16, 64, 8, 8), (5, 5))
    assert not matmul_depthwise(plan, (16, 16, 16, 16), (5, 5)) and not matmul_depthwise(plan, (16, 16, 32, 32), (5, 5))
    assert not matmul_depthwise(ConvPlan(), (64, 16, 4, 4), (3, 3))  # 0: never


@pytest.mark.parametrize("limit", [-1.0, float("nan")])
def test_a_conv_plan_refuses_a_matmul_limit_that_is_no_bound(limit):
    with pytest.raises(ValueError, match="matmul_limit: expected a number >= 0"):
        ConvPlan(matmul_limit=limit)


@pytest.mark.parametrize("limit", [-1.0, float("nan")])
def test_a_conv_plan_refuses_a_merge_limit_that_is_no_bound(limit):
    with pytest.raises(ValueError, match="merge_limit: expected a number >= 0"):
        ConvPlan(merge_limit=limit)


@pytest.mark.parametrize("layout", ["dense", "slice"])
def test_a_1x1_conv_as_a_linear_map_of_the_pixels(layout):
    """Output (channels-last), input and weight gradients equal a 1x1 conv's in float64, also for a channel slice of
    a wider channels-last tensor (a view F.linear cannot take as it is)."""
    torch.manual_seed(1)
    wide = torch.randn(2, 10, 3, 5, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    x = wide if layout == "dense" else wide[:, 4:]
    w = torch.randn(7, x.shape[1], 1, 1, dtype=torch.float64, requires_grad=True)
    out, ref = linear_1x1(x.permute(0, 2, 3, 1), w), F.conv2d(x, w)
    assert out.shape == ref.shape == (2, 7, 3, 5) and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (wide, w), g), torch.autograd.grad(ref, (wide, w), g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 3])
def test_a_1x1_depthwise_conv_of_a_repeated_input_as_a_per_channel_scale(n):
    """A depthwise kernel cropped to its centre (a 5x5 or dilated kernel on a 2x2 map) of the input repeated n
    times (edge-major channels): one multiply, equal to the conv of the repeated input, also on the even pixels
    of a map (a strided view)."""
    from dartboard.spaces.depthwise import channel_scale, is_scale

    torch.manual_seed(n)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(4 * n, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    even = x[:, :, ::2, ::2]
    out = channel_scale(even, w, n)
    ref = F.conv2d(even.repeat(1, n, 1, 1), w, None, 1, 0, 1, 4 * n)
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert is_scale(w, (1, 1), (0, 0)) and not is_scale(w, (2, 2), (0, 0)) and not is_scale(w, (1, 1), (1, 1))
    assert not is_scale(torch.zeros(4, 1, 3, 3), (1, 1), (0, 0))


def test_a_kernel_on_a_1x1_map_is_its_centre_times_the_input():
    """A SepConv's second depthwise conv (multiplier 1) on a 1x1 map: the batched engine's ``depthwise`` crops the
    kernel to its centre and scales the channels; equal to the full conv, gradients included."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dartboard.spaces.depthwise import depthwise

    ops = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    conv = torch.nn.Conv2d(4, 4, 5, 1, 2, groups=4, bias=False).double()
    x = torch.randn(3, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    with Ops():
        out = depthwise(x, conv.weight, conv, 4)
    assert "mul" in ops and "convolution" not in ops, ops
    ref = F.conv2d(x, conv.weight, None, 1, 2, 1, 4)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for a, b in zip(torch.autograd.grad(out.sum(), (x, conv.weight)), torch.autograd.grad(ref.sum(), (x, conv.weight)),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
