"""Low-cost performance proxies of thesis Table 6.1 (DARIO, section 6.1.1).

Every proxy takes ``theta``: a mapping name -> tensor of the (updated) parameters theta~, and is
differentiable through them wherever the formula is (L0 counts non-zeros, so it is piecewise
constant: its gradient is zero almost everywhere). Synflow needs a forward pass with the
absolute parameters: it takes ``forward``, a callable running the network with a given mapping
of parameters on the batch of ones. Notation: T = number of parameter tensors, N = number of
scalar parameters. The search minimises the proxy (thesis Eq 6.4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

Params = Mapping[str, Tensor]
Forward = Callable[[Params], Tensor]

# Table 6.1 composites: "c1, c2, c3 are empirical coefficients"; the thesis gives no values, so 1.0.
C1_L0_VAR = 1.0
C2_L1_VAR = 1.0
C3_L0_L1 = 1.0


def _tensors(theta: Params) -> list[Tensor]:
    tensors = [t for t in theta.values() if t.numel() > 0]
    if not tensors:
        raise ValueError("theta: expected at least one non-empty parameter tensor")
    return tensors


def l0_norm(theta: Params, forward: Forward | None = None) -> Tensor:
    """S^L0 = (1/T) sum_t ||theta~_t||_0 (Table 6.1): mean number of non-zero entries per tensor."""
    tensors = _tensors(theta)
    return torch.stack([(t != 0).sum().to(t.dtype) for t in tensors]).mean()


def l1_norm(theta: Params, forward: Forward | None = None) -> Tensor:
    """S^L1 = (1/T) sum_t ||theta~_t||_1 (Table 6.1)."""
    return torch.stack([t.abs().sum() for t in _tensors(theta)]).mean()


def l2_norm(theta: Params, forward: Forward | None = None) -> Tensor:
    """S^L2 = (1/T) sum_t ||theta~_t||_2 (Table 6.1)."""
    return torch.stack([t.norm(2) for t in _tensors(theta)]).mean()


def _synflow_sum(theta: Params, forward: Forward | None) -> tuple[Tensor, int]:
    if forward is None:
        raise ValueError("forward: synflow needs a forward pass with |theta~| (H^a of Table 6.1)")
    names = [k for k, t in theta.items() if t.numel() > 0]
    abs_theta = {}
    for k in names:
        a = theta[k].abs()
        abs_theta[k] = a if a.requires_grad else a.detach().requires_grad_(True)
    out = forward(abs_theta)  # H^a: the network with all parameters replaced by their absolute values
    create_graph = any(theta[k].requires_grad for k in names)
    grads = torch.autograd.grad(out.sum(), [abs_theta[k] for k in names], create_graph=create_graph,
                                allow_unused=True)
    terms = [(g * abs_theta[k]).sum() for k, g in zip(names, grads, strict=True) if g is not None]
    total = torch.stack(terms).sum() if terms else out.new_zeros(())
    return total, sum(theta[k].numel() for k in names)


def synflow(theta: Params, forward: Forward | None = None) -> Tensor:
    """S^s = sum_n (dH^a/dtheta (.) theta~^a)_n (Table 6.1; Tanaka et al.): not scale-invariant."""
    return _synflow_sum(theta, forward)[0]


def normalized_synflow(theta: Params, forward: Forward | None = None) -> Tensor:
    """S^ns = (1/N) sum_n (dH^a/dtheta (.) theta~^a)_n (Table 6.1)."""
    total, n = _synflow_sum(theta, forward)
    return total / n


def parameter_variance(theta: Params, forward: Forward | None = None) -> Tensor:
    """S^var = 1/(N-1) sum_n (theta~_n - mean)^2 over all N scalars (Table 6.1, Bessel-corrected).

    Two passes over the tensors (mean, then squared deviations): no concatenated copy of theta.
    """
    tensors = _tensors(theta)
    n = sum(t.numel() for t in tensors)
    if n < 2:
        raise ValueError(f"theta: the variance needs at least 2 parameters, got {n}")
    mean = torch.stack([t.sum() for t in tensors]).sum() / n
    return torch.stack([((t - mean) ** 2).sum() for t in tensors]).sum() / (n - 1)


def l0_var(theta: Params, forward: Forward | None = None, c1: float = C1_L0_VAR) -> Tensor:
    """S^{L0+var} = S^L0 - c1 S^var (Table 6.1)."""
    return l0_norm(theta) - c1 * parameter_variance(theta)


def l1_var(theta: Params, forward: Forward | None = None, c2: float = C2_L1_VAR) -> Tensor:
    """S^{L1+var} = S^L1 - c2 S^var (Table 6.1)."""
    return l1_norm(theta) - c2 * parameter_variance(theta)


def l0_l1(theta: Params, forward: Forward | None = None, c3: float = C3_L0_L1) -> Tensor:
    """S^{L0+L1} = S^L0 + c3 S^L1 (Table 6.1)."""
    return l0_norm(theta) + c3 * l1_norm(theta)


@dataclass(frozen=True)
class Proxy:
    name: str
    fn: Callable[..., Tensor]
    needs_forward: bool  # synflow runs the network with |theta~|
    differentiable: bool  # L0 is piecewise constant: no gradient to drive the search
    description: str

    def __call__(self, theta: Params, forward: Forward | None = None) -> Tensor:
        return self.fn(theta, forward)


PROXIES: dict[str, Proxy] = {}


def register_proxy(name: str, fn: Callable[..., Tensor], *, needs_forward: bool = False,
                   differentiable: bool = True, description: str = "") -> Proxy:
    if name in PROXIES:
        raise ValueError(f"proxy: {name!r} is already registered")
    PROXIES[name] = Proxy(name, fn, needs_forward, differentiable, description or (fn.__doc__ or "").split("\n")[0])
    return PROXIES[name]


def get_proxy(name: str) -> Proxy:
    if name not in PROXIES:
        raise ValueError(f"proxy: unknown proxy {name!r}; expected one of {', '.join(PROXIES)}")
    return PROXIES[name]


DEFAULT_PROXY = "parameter_variance"  # thesis 6.1.2: S^var has the highest |rho| on both models

register_proxy("l0_norm", l0_norm, differentiable=False)
register_proxy("l1_norm", l1_norm)
register_proxy("l2_norm", l2_norm)
register_proxy("synflow", synflow, needs_forward=True)
register_proxy("normalized_synflow", normalized_synflow, needs_forward=True)
register_proxy("parameter_variance", parameter_variance)
register_proxy("l0_var", l0_var)
register_proxy("l1_var", l1_var)
register_proxy("l0_l1", l0_l1)
