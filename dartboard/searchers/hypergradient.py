"""The alpha gradient of the bilevel problem (thesis 2.7, Eq 2.8).

- first order: grad_alpha L_val(w, alpha) with the current w;
- second order (unrolled): w' = w - eta (m * buf + grad_w L_train + wd * w),
  grad_alpha L_val(w', alpha) - eta * grad^2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha),
  the Hessian-vector product by finite differences with R = r / ||grad_w' L_val||.

The learning rate, momentum and weight decay of the unrolled step are read from the weight
optimizer itself, so a hook that raised the weight decay (R-DARTS ADA) is honoured, also
after a resume. Under fp16 every gradient here is of the *scaled* loss (the arch scaler's S),
so the scaler's inf checks and unscaling apply to the result as to a first-order step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def grads_or_zeros(loss: torch.Tensor, inputs: Sequence[torch.Tensor], **kw) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(inputs), allow_unused=True, **kw)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads, strict=True)]


def unrolled_arch_grads(network: nn.Module, loss_fn: LossFn, alphas: Sequence[torch.Tensor],
                        group_weights: Callable[[], list[torch.Tensor]], regularization: Callable[[list], torch.Tensor],
                        w_optimizer: torch.optim.Optimizer, scale: Callable[[torch.Tensor], torch.Tensor],
                        batches: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], r: float,
                        record_val: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]) -> list[torch.Tensor]:
    """Second-order DARTS hypergradient (thesis Eq 2.8 with the finite-difference Hessian),
    of the scaled validation loss. ``loss_fn(params, x, y, weights) -> (loss, output)``."""
    x_train, y_train, x_val, y_val = batches
    named = list(network.named_parameters())  # one walk of the module tree (milliseconds on a supernet)
    names, weights = [n for n, _ in named], [p for _, p in named]
    alphas = list(alphas)
    group = w_optimizer.param_groups[0]
    eta, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
    # w' = w - eta * (momentum * buf + grad L_train(w) + wd * w)
    with torch.no_grad():
        detached = [w.detach() for w in group_weights()]
    train_loss, _ = loss_fn(dict(zip(names, weights, strict=True)), x_train, y_train, detached)
    g_train = torch.autograd.grad(train_loss, weights)
    # foreach ops: the same ops in the same order as a loop over the tensors, so the same values to the bit, in
    # a few calls (the loop made 6 per tensor here and 3 per tensor and shift below: 889 tensors at digits scale)
    with torch.no_grad():
        w_now = [w.detach() for w in weights]
        step = list(torch._foreach_add(list(g_train), torch._foreach_mul(w_now, wd)))
        bufs = [w_optimizer.state.get(p, {}).get("momentum_buffer") for p in weights]
        have = [k for k, b in enumerate(bufs) if b is not None]
        if have:  # every tensor has one after the first weight step
            moved = torch._foreach_add([step[k] for k in have], torch._foreach_mul([bufs[k] for k in have], momentum))
            for k, m in zip(have, moved, strict=True):
                step[k] = m
        unrolled = torch._foreach_sub(w_now, torch._foreach_mul(step, eta))
    unrolled = [u.requires_grad_(True) for u in unrolled]
    # grad_alpha and grad_w' of S * (L_val(w', alpha) + regularizers)
    gw = group_weights()
    val_loss, output = loss_fn(dict(zip(names, unrolled, strict=True)), x_val, y_val, gw)
    record_val(val_loss, output, y_val)
    grads = grads_or_zeros(scale(val_loss + regularization(gw)), alphas + unrolled)
    d_alpha, d_w = grads[: len(alphas)], grads[len(alphas):]
    # Finite-difference Hessian-vector product (grad_a L_train(w+) - grad_a L_train(w-)) / 2R.
    # With d_w scaled by S, R is R_true / S (the shift R * d_w is the same) and the quotient of
    # scaled gradients is S^2 * hvp: divide by S once to match the scaled d_alpha. The two
    # shifted passes run in fp32: a shift of norm r = 0.01 is below bf16/fp16 weight resolution.
    s = scale(torch.ones((), device=d_alpha[0].device))
    # R's sums stay one per tensor, added in order: torch._foreach_norm rounds otherwise (2e-7), and the finite
    # difference across ReLU kinks turned such a change into 2e-3 of FairDARTS' hypergradient on one engine
    # and 1e-7 on the other. The squares are one foreach op (x * x: what pow(x, 2) computes).
    d_w32 = [g.float() for g in d_w]
    R = r / torch.sqrt(sum(t.sum() for t in torch._foreach_mul(d_w32, d_w32))).clamp_min(1e-12)
    hvp = None
    for sign in (1.0, -1.0):
        with torch.no_grad():
            moved = torch._foreach_add(w_now, torch._foreach_mul(d_w, sign * R))
        shifted = dict(zip(names, moved, strict=True))
        loss, _ = loss_fn(shifted, x_train, y_train, group_weights(), amp=False)
        g = grads_or_zeros(scale(loss), alphas)
        hvp = g if hvp is None else [h - gi for h, gi in zip(hvp, g, strict=True)]
    return [da - eta * h / (2 * R * s) for da, h in zip(d_alpha, hvp, strict=True)]


def functional_loss(network: nn.Module, autocast: Callable, objective_loss: Callable,
                    forward_weights: Callable[[list], list] = list) -> LossFn:
    """``forward_weights``: the mixing weights as the supernet's forward takes them (the engine's).

    The network's parameters are swapped for ``params`` without PyTorch's untying of shared tensors where no tensor
    has two names (checked once here): that untying walks every module for each call, and the second-order step
    makes four calls."""
    tied = _has_tied_tensors(network)

    def loss_fn(params, x, y, weights, amp: bool = True):
        with autocast() if amp else contextlib.nullcontext():
            output = functional_call(network, params, (x, forward_weights(list(weights))), tie_weights=tied)
        return objective_loss(output, y), output

    return loss_fn


def _has_tied_tensors(network: nn.Module) -> bool:
    """Whether one parameter or buffer tensor of ``network`` has two or more names."""
    seen: set[int] = set()
    for _, t in [*network.named_parameters(remove_duplicate=False), *network.named_buffers(remove_duplicate=False)]:
        if id(t) in seen:
            return True
        seen.add(id(t))
    return False
