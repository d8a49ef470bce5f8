"""Alpha activations: how architecture parameters become mixing weights.

Each activation maps an alpha tensor ``[n_edges, n_ops]`` to mixing weights of the same
shape, row by row. Registered by name in :data:`ACTIVATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dartboard.registries import Registry

Activation = Callable[[torch.Tensor], torch.Tensor]
ACTIVATIONS: Registry[Activation] = Registry("activation")
register_activation = ACTIVATIONS.register
get_activation = ACTIVATIONS.lookup


@register_activation("softmax")
def softmax(alpha: torch.Tensor) -> torch.Tensor:
    """DARTS: w_o = exp(alpha_o) / sum_o' exp(alpha_o') over the ops of an edge."""
    return torch.softmax(alpha, dim=-1)


@register_activation("sigmoid")
def sigmoid(alpha: torch.Tensor) -> torch.Tensor:
    """FairDARTS (thesis 3.2.1): each op weighted independently by sigmoid(alpha)."""
    return torch.sigmoid(alpha)


@register_activation("crb")
def clipped_relu(alpha: torch.Tensor) -> torch.Tensor:
    """CRB (Maile et al. 3.1): clipped ReLU, w_o = min(max(alpha_o, 0), 1), each op on its own.

    Used with :class:`CrbMasking` (ops whose alpha reaches <= 0 are pruned for good) and a
    non-affine BN after each node's sum (``DartsConfig.node_bn``)."""
    return alpha.clamp(0.0, 1.0)


@register_activation("capped_simplex")
def capped_simplex_weights(alpha: torch.Tensor) -> torch.Tensor:
    """Sparse DARTS (ALGORITHMS.md, Ito): alphas lie in {a >= 0, sum a <= 1} and mix directly.

    The constraint is kept by :class:`SimplexProjection` after every alpha step (projected
    gradient), so the activation is the identity."""
    return alpha


@register_activation("simplex")
def simplex_weights(alpha: torch.Tensor) -> torch.Tensor:
    """Alphas on the exact simplex {a >= 0, sum a = 1}, mixed directly (projected gradient)."""
    return alpha


def project_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``x`` onto {a >= 0, sum a = 1}.

    Sort-based algorithm (Held et al. 1974; Duchi et al. 2008): with u sorted decreasingly,
    rho = max{j : u_j - (sum_{i<=j} u_i - 1) / j > 0}, theta = (sum_{i<=rho} u_i - 1) / rho,
    a = max(x - theta, 0)."""
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = u.cumsum(dim=-1) - 1.0
    j = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    cond = (u - css / j) > 0
    rho = cond.to(x.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last index where cond holds
    theta = css.gather(-1, rho) / (rho + 1).to(x.dtype)
    return (x - theta).clamp_min(0.0)


def project_capped_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``x`` onto {a >= 0, sum a <= 1}.

    KKT: if clamping to the orthant already gives sum <= 1 that is the projection;
    otherwise the sum constraint is active and the answer is the simplex projection."""
    clamped = x.clamp_min(0.0)
    inside = clamped.sum(dim=-1, keepdim=True) <= 1.0
    return torch.where(inside, clamped, project_simplex(x))


class _Constraint:
    """A post-alpha-step part (same protocol as a regularizer, with no loss term)."""

    def loss(self, searcher, group_weights) -> torch.Tensor:
        return torch.zeros((), device=searcher.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SimplexProjection(_Constraint):
    """Projected gradient: after every alpha step, alpha <- Pi(alpha) row by row
    (``capped``: {a >= 0, sum a <= 1}; else the exact simplex)."""

    def __init__(self, capped: bool = True):
        self.capped = capped

    def project(self, alpha: torch.Tensor) -> torch.Tensor:
        return project_capped_simplex(alpha) if self.capped else project_simplex(alpha)

    @torch.no_grad()
    def after_arch_step(self, searcher) -> None:
        for alpha in searcher.arch.alphas:
            alpha.copy_(self.project(alpha))

    def metrics(self, searcher) -> dict[str, float]:
        with torch.no_grad():
            zeros = sum(int((a == 0).sum()) for a in searcher.arch.alphas)
        return {"alpha_exact_zeros": float(zeros)}


class CrbMasking(_Constraint):
    """CRB pruning (Maile et al. 3.1): once an op's alpha is <= 0 it is masked for good
    (removed from ``MixedOp.active`` of every cell using that alpha group, so the forward
    skips it) and its alpha is held at <= 0 so its weight stays exactly 0.

    Reads the alphas on the host after each alpha step (one synchronisation)."""

    @torch.no_grad()
    def after_arch_step(self, searcher) -> None:
        masks = searcher.active_ops()
        for group, alpha in enumerate(searcher.arch.alphas):
            positive = (alpha > 0).cpu()
            for cell in searcher.arch.cells_of(group):
                for e, active in enumerate(masks[cell]):
                    masks[cell][e] = [i for i in active if bool(positive[e, i])]
            # Hold masked alphas at <= 0 (Adam momentum could otherwise lift them).
            keep = torch.zeros_like(alpha, dtype=torch.bool)
            cells = searcher.arch.cells_of(group)
            if cells:
                for e, active in enumerate(masks[cells[0]]):
                    keep[e, list(active)] = True
            alpha.copy_(torch.where(keep, alpha, alpha.clamp_max(0.0)))
        searcher.set_active_ops(masks)

    def metrics(self, searcher) -> dict[str, float]:
        return {"active_ops": float(sum(len(a) for cell in searcher.active_ops() for a in cell))}


#: Post-step constraint that goes with an activation (added by the variant builder).
ACTIVATION_CONSTRAINTS: dict[str, Callable[[], _Constraint]] = {
    "crb": CrbMasking,
    "capped_simplex": lambda: SimplexProjection(capped=True),
    "simplex": lambda: SimplexProjection(capped=False),
}
