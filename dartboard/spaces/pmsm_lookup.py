"""A trained flux model as the look-up a motor controller evaluates: currents ``[N, 2]`` (I_d, I_q) to ``[N, 6]``
(lambda_d, lambda_q, L_dd, L_dq, L_qd, L_qq), the flux and the differential inductances ``L_xy = d lambda_x / d I_y``,
the columns ``dartboard pmsm flux`` writes to its CSV.

The training computes the Jacobian with ``torch.func`` (``vmap(jacrev)``), which neither ``torch.export`` nor the
TorchScript tracer can record with a batch of any size. Here it is forward-mode by hand: the tangents of the two
currents ride through the MLP beside its activations (a Linear layer maps a tangent by its weight, the activation
multiplies it by the activation's derivative), with each primitive's derivative written out below as torch's
backward defines it (a tie of ``max``/``min`` shares the derivative half and half, ``clamp`` passes it strictly
inside its bounds, ``abs`` is ``sign``; at a kink, x = 0 of ``max(x, 0)`` say, one one-sided slope is as right as
the other). Only elementwise ops and matrix products: ONNX, TorchScript and ``torch.export`` record it with the batch
dimension free. ``tests/test_pmsm_lookup.py`` compares it with ``vmap(jacrev)`` for every primitive.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dartboard.spaces.pmsm import ACT_MAX, BINARY_FNS, EXP_MAX, UNARY_FNS, Chain, FluxNet, guarded_exp

#: the columns of :class:`FluxLookup`'s output, in order
COLUMNS = ("lambda_d", "lambda_q", "L_dd", "L_dq", "L_qd", "L_qq")

Tensor = torch.Tensor

#: U'(x) of each unary primitive
UNARY_DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "max0": lambda x: (x > 0).to(x.dtype), "min0": lambda x: (x < 0).to(x.dtype),
    "exp": lambda x: guarded_exp(x) * (x < EXP_MAX).to(x.dtype), "tanh": lambda x: 1 - torch.tanh(x) ** 2,
    "x": torch.ones_like, "abs": torch.sign, "sin": torch.cos, "cos": lambda x: -torch.sin(x), "one": torch.zeros_like,
    "square": lambda x: 2 * x,
}


def _larger(u1: Tensor, u2: Tensor, d1: Tensor, d2: Tensor) -> Tensor:
    """The derivative of max(u1, u2): that of the larger (``torch.maximum``'s backward: a tie shares it)."""
    return torch.where(u1 > u2, d1, torch.where(u1 < u2, d2, (d1 + d2) / 2))


#: d B(u1, u2) from (u1, u2, du1, du2), for each binary primitive
BINARY_DERIVATIVES: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "add": lambda u1, u2, d1, d2: d1 + d2, "prod": lambda u1, u2, d1, d2: d1 * u2 + u1 * d2,
    "sub": lambda u1, u2, d1, d2: d1 - d2, "max": _larger, "min": lambda u1, u2, d1, d2: _larger(-u1, -u2, d1, d2),
    "mask": lambda u1, u2, d1, d2: d1,
}
assert tuple(UNARY_DERIVATIVES) == tuple(UNARY_FNS) and tuple(BINARY_DERIVATIVES) == tuple(BINARY_FNS)


class _ActivationWithDerivative(nn.Module):
    """``A(x) = clamp(B(U1(x), U2(x)), +-ACT_MAX)`` and ``A'(x)``."""

    def __init__(self, binary: str, unary1: str, unary2: str):
        super().__init__()
        self.names = (binary, unary1, unary2)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        binary, unary1, unary2 = self.names
        u1, u2 = UNARY_FNS[unary1](z), UNARY_FNS[unary2](z)
        value = BINARY_FNS[binary](u1, u2)
        slope = BINARY_DERIVATIVES[binary](u1, u2, UNARY_DERIVATIVES[unary1](z), UNARY_DERIVATIVES[unary2](z))
        inside = (value > -ACT_MAX) & (value < ACT_MAX)
        return torch.clamp(value, -ACT_MAX, ACT_MAX), slope * inside.to(z.dtype)


def _chain_with_tangents(chain: Chain, act: _ActivationWithDerivative, h: Tensor, tangents: Tensor
                         ) -> tuple[Tensor, Tensor]:
    """``chain(h)`` and the tangents ``[k, N, in]`` carried through it (``[k, N, out]``)."""
    for layer in chain.hidden:
        value, slope = act(layer(h))
        h, tangents = value, slope * (tangents @ layer.weight.T)
    return chain.out(h), tangents @ chain.out.weight.T


class FluxLookup(nn.Module):
    """The flux and differential inductances of a trained :class:`FluxNet` (its weights, shared, not copied):
    ``forward(currents [N, 2])`` -> ``[N, 6]`` in the order of :data:`COLUMNS`."""

    def __init__(self, net: FluxNet):
        super().__init__()
        self.net = net
        a = net.genotype.activation
        self.act = _ActivationWithDerivative(a.binary, a.unary1, a.unary2)

    def forward(self, currents: Tensor) -> Tensor:
        if self.net.genotype.decoupled:  # lambda_d = f2(I_d), lambda_q = f1(I_q): L_dq = L_qd = 0
            i_d, i_q = currents[:, :1], currents[:, 1:2]
            lambda_d, l_dd = _chain_with_tangents(self.net.f2, self.act, i_d, torch.ones_like(i_d).unsqueeze(0))
            lambda_q, l_qq = _chain_with_tangents(self.net.f1, self.act, i_q, torch.ones_like(i_q).unsqueeze(0))
            zero = torch.zeros_like(lambda_d)
            return torch.cat([lambda_d, lambda_q, l_dd[0], zero, zero, l_qq[0]], 1)
        one, zero = torch.ones_like(currents[:, :1]), torch.zeros_like(currents[:, :1])
        directions = torch.stack([torch.cat([one, zero], 1), torch.cat([zero, one], 1)])  # d/dI_d, d/dI_q
        flux, tangents = _chain_with_tangents(self.net.net, self.act, currents, directions)
        by_d, by_q = tangents[0], tangents[1]
        return torch.cat([flux, by_d[:, :1], by_q[:, :1], by_d[:, 1:], by_q[:, 1:]], 1)
