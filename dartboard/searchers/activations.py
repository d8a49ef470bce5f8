"""Alpha activations: how architecture parameters become mixing weights.

Each activation maps an alpha tensor ``[n_edges, n_ops]`` to mixing weights of the same
shape, row by row. Registered by name in :data:`ACTIVATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Activation = Callable[[torch.Tensor], torch.Tensor]
ACTIVATIONS: dict[str, Activation] = {}


def register_activation(name: str) -> Callable[[Activation], Activation]:
    def wrap(fn: Activation) -> Activation:
        if name in ACTIVATIONS:
            raise ValueError(f"activation {name!r} is already registered")
        ACTIVATIONS[name] = fn
        return fn

    return wrap


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}") from None


@register_activation("softmax")
def softmax(alpha: torch.Tensor) -> torch.Tensor:
    """DARTS: w_o = exp(alpha_o) / sum_o' exp(alpha_o') over the ops of an edge."""
    return torch.softmax(alpha, dim=-1)


@register_activation("sigmoid")
def sigmoid(alpha: torch.Tensor) -> torch.Tensor:
    """FairDARTS (thesis 3.2.1): each op weighted independently by sigmoid(alpha)."""
    return torch.sigmoid(alpha)
