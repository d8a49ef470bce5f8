"""A stride-1 depthwise convolution whose input gradient is a forward conv of the output gradient with the flipped
kernel (dartboard.spaces.depthwise.depthwise_flipped), against torch's own convolution in float64: outputs, input
and weight gradients, gradients of gradients, layouts (autocast: test_depthwise_matmul.py); the weight gradient
left out of a backward pass that does not need it (the alpha step), the repeated input's weight gradient from
its source, and the rule of the CPU's plan."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dartboard.spaces import depthwise
from dartboard.spaces.batched import CONV_PLANS
from dartboard.spaces.depthwise import depthwise_flipped, flipped_input_grad, grad_needed

CL = torch.channels_last


@pytest.mark.parametrize("size, kernel, padding, dilation", [
    (6, 3, 1, 1), (6, 5, 2, 1), (7, 3, 2, 2), (5, 5, 4, 2), (6, 3, 0, 1), (5, 5, 1, 1), (4, (3, 5), (1, 2), 1),
    (8, 5, 2, (1, 2))])
@pytest.mark.parametrize("multiplier", [1, 3])
def test_equals_torchs_depthwise_conv(size, kernel, padding, dilation, multiplier):
    """Same outputs and gradients as ``F.conv2d`` (float64), the input gradient channels-last like the input;
    "same" paddings and others (0, or less than the kernel's half), square and not, one dilation per axis."""
    torch.manual_seed(0)
    pad = padding if isinstance(padding, tuple) else (padding, padding)
    dil = dilation if isinstance(dilation, tuple) else (dilation, dilation)
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    channels = 3
    x = torch.randn(2, channels, size, size, dtype=torch.double).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(channels * multiplier, 1, *k, dtype=torch.double, requires_grad=True)
    out = depthwise_flipped(x, w, pad, dil, channels)
    ref = F.conv2d(x, w, None, 1, pad, dil, channels)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    got, want = torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert got[0].is_contiguous(memory_format=CL)


def test_gradients_of_gradients():
    """Its backward is made of differentiable ops (R-DARTS differentiates the gradient)."""
    x = torch.randn(2, 2, 5, 5, dtype=torch.double).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(4, 1, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: depthwise_flipped(a, b, (2, 2), (2, 2), 2), (x, w))


def test_an_alpha_step_gets_no_weight_gradient_and_a_weight_step_gets_both(monkeypatch):
    """``torch.autograd.grad(loss, [alpha])`` runs only the nodes on alpha's path: the conv's weight gradient (on a
    weight that reaches it through an op, as the engine's concatenated weights do) is not computed; ``backward()``
    computes both, and so does a pass that asks for the weight."""
    calls = []
    real = torch.ops.aten.convolution_backward
    monkeypatch.setattr(depthwise.torch.ops.aten, "convolution_backward",
                        lambda *a: calls.append(a[-1]) or real(*a), raising=False)
    param = torch.randn(6, 1, 5, 5, requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=CL)

    def loss():
        return depthwise_flipped(torch.relu(x * alpha), torch.cat([param[:3], param[3:]]), (2, 2), (1, 1), 3).sum()

    (ga,) = torch.autograd.grad(loss(), [alpha])
    assert calls == [] and torch.isfinite(ga)
    torch.autograd.grad(loss(), [param])
    assert calls == [[False, True, False]]
    loss().backward()
    assert len(calls) == 2 and param.grad is not None and alpha.grad is not None


def test_grad_needed_answers_for_leaves_and_inputs_without_gradient():
    """A leaf's node (AccumulateGrad) cannot be asked inside ``autograd.grad``: its gradient is computed; an input
    that requires none gets none."""
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, c):
            return a * b * c

        @staticmethod
        def backward(ctx, grad):
            seen.append([grad_needed(ctx, i) for i in range(3)])
            return grad, grad, grad

    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    torch.autograd.grad(Probe.apply(a, b * 1, torch.ones(2)).sum(), [a])
    assert seen == [[True, False, False]]


def test_the_cpu_plan_flips_the_kernels_whose_onednn_backward_is_slow_only():
    """5x5, dilated and multiplier depthwise convs at stride 1 take it; an undilated 3x3 kernel without a multiplier
    (oneDNN's fast kernel) does not, nor a stride-2 conv or one padded beyond the flipped conv's reach."""
    assert CONV_PLANS["cpu"].flipped_input_grad

    def rule(out_channels, kernel, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=16):
        return flipped_input_grad(torch.empty(out_channels, 1, *kernel), stride, padding, dilation, groups)

    assert rule(16, (5, 5), padding=(2, 2)) and rule(16, (3, 3), padding=(2, 2), dilation=(2, 2))
    assert rule(64, (3, 3))  # multiplier 4
    assert not rule(16, (3, 3)) and not rule(16, (1, 1), padding=(0, 0))
    assert not rule(16, (5, 5), stride=(2, 2), padding=(2, 2)) and not rule(16, (5, 5), padding=(5, 5))


@pytest.mark.parametrize("kernel, padding, dilation", [(5, 2, 1), (3, 2, 2), (5, 4, 2), (3, 1, 1)])
@pytest.mark.parametrize("edges", [1, 2, 4])
def test_on_a_repeated_input_the_weight_gradient_comes_from_the_source(kernel, padding, dilation, edges):
    """``source``: the conv's input is ``source`` repeated once per edge (edge-major channels e * C + c, the batched
    engine's repeated input); the weight gradient is that of a multiplier conv of the source, reordered to the
    edges' order. Outputs, the gradients of the source (through the repeat) and of the weight equal torch's conv of
    the repeated input (float64), and so do the gradients of gradients."""
    torch.manual_seed(1)
    channels = 3
    source = torch.randn(2, channels, 6, 6, dtype=torch.double).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(edges * channels, 1, kernel, kernel, dtype=torch.double, requires_grad=True)

    def repeated(s):
        return s.repeat(1, edges, 1, 1).contiguous(memory_format=CL)

    pad, dil = (padding, padding), (dilation, dilation)
    out = depthwise_flipped(repeated(source), w, pad, dil, edges * channels, source=source)
    ref = F.conv2d(repeated(source), w, None, 1, pad, dil, edges * channels)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, (source, w), g), torch.autograd.grad(ref, (source, w), g),
                               rtol=0, atol=1e-10)
    assert torch.autograd.gradgradcheck(
        lambda s, k: depthwise_flipped(repeated(s), k, pad, dil, edges * channels, source=s), (source, w))


def test_the_engine_takes_the_repeated_input_for_multiplier_kernels_where_no_matrix_products_run(monkeypatch):
    """With ``flipped_input_grad`` and no matrix products, the 5x5 and dilated kernels of a node run on its repeated
    input with their weight gradient from the source (no reorder copy of a multiplier conv's output), and the
    engines agree (the oracle's "multiplier, flipped" variant); the CPU's plan at the oracle's small maps takes the
    matrix products for them instead."""
    from dartboard.bench.speed import SpeedSetting, build
    from dartboard.spaces import batched, batched_convs

    sources = []
    real = batched_convs.depthwise_flipped
    monkeypatch.setattr(batched_convs, "depthwise_flipped",
                        lambda *a, **k: sources.append(k.get("source") is not None) or real(*a, **k))
    monkeypatch.setitem(batched.CONV_PLANS, "cpu", batched.ConvPlan(flipped_input_grad=True))
    searcher = build("darts", "batched", 1, SpeedSetting(batch=2, channels=4, layers=2, input_size=8))
    x = torch.randn(2, 3, 8, 8)
    searcher.step((x, torch.tensor([0, 1])), (x, torch.tensor([1, 0])))
    assert len(sources) >= 4 and all(sources), sources
    sources.clear()
    monkeypatch.setitem(batched.CONV_PLANS, "cpu", batched.ConvPlan(matmul_limit=64.0, flipped_input_grad=True))
    searcher.step((x, torch.tensor([0, 1])), (x, torch.tensor([1, 0])))
    assert sources == []


def test_without_the_engines_private_answer_every_gradient_is_computed(monkeypatch):
    """``grad_needed`` relies on ``torch._C._will_engine_execute_node``; a torch without it gets every gradient an
    input requires (correct, only slower), not an error."""
    monkeypatch.delattr(torch._C, "_will_engine_execute_node")
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=CL)
    param = torch.randn(3, 1, 5, 5, requires_grad=True)
    alpha = torch.tensor(1.5, requires_grad=True)
    (ga,) = torch.autograd.grad(depthwise_flipped(x * alpha, param[:], (2, 2), (1, 1), 3).sum(), [alpha])
    (want,) = torch.autograd.grad(F.conv2d(x * alpha, param, None, 1, 2, 1, 3).sum(), [alpha])
    torch.testing.assert_close(ga, want)
