"""Table 6.1 proxies against hand computations on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dartboard.searchers.dario import proxies
from dartboard.searchers.dario.proxies import PROXIES, get_proxy


def tiny_theta() -> dict[str, torch.Tensor]:
    # two tensors, T = 2, N = 5 scalars: [1, -2, 0] and [[3], [0.5]]
    return {"a": torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64),
            "b": torch.tensor([[3.0], [0.5]], dtype=torch.float64)}


def test_norms_by_hand():
    theta = tiny_theta()
    assert proxies.l0_norm(theta).item() == pytest.approx((2 + 2) / 2)
    assert proxies.l1_norm(theta).item() == pytest.approx((3 + 3.5) / 2)
    assert proxies.l2_norm(theta).item() == pytest.approx((math.sqrt(5) + math.sqrt(9.25)) / 2)


def test_parameter_variance_by_hand():
    values = [1.0, -2.0, 0.0, 3.0, 0.5]
    mean = sum(values) / 5  # 0.5
    expected = sum((v - mean) ** 2 for v in values) / 4  # Bessel: 1/(N-1)
    assert expected == pytest.approx(13.0 / 4)
    assert proxies.parameter_variance(tiny_theta()).item() == pytest.approx(expected)


def test_composites_by_hand():
    theta = tiny_theta()
    l0, l1, var = 2.0, 3.25, 13.0 / 4
    assert proxies.l0_var(theta).item() == pytest.approx(l0 - proxies.C1_L0_VAR * var)
    assert proxies.l1_var(theta).item() == pytest.approx(l1 - proxies.C2_L1_VAR * var)
    assert proxies.l0_l1(theta).item() == pytest.approx(l0 + proxies.C3_L0_L1 * l1)
    assert proxies.l1_var(theta, c2=2.0).item() == pytest.approx(l1 - 2 * var)


def test_synflow_by_hand_on_a_two_layer_linear_net():
    # H(x) = W2 (W1 x) with x = ones(2): with |W|, dH^a/d|W1|_ij = (sum_k |W2|_k) * x_j and the synflow
    # score sum(|W| * grad) of a linear chain equals (number of layers) * H^a(ones).
    w1 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    w2 = torch.tensor([[-1.0, 2.0]], dtype=torch.float64)
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)).double()
    theta = {"0.weight": w1, "1.weight": w2}
    x = torch.ones(1, 2, dtype=torch.float64)

    def forward(params):
        return torch.func.functional_call(net, params, (x,))

    h_abs = (w2.abs() @ (w1.abs() @ torch.ones(2, dtype=torch.float64))).sum().item()  # = 1*3 + 2*3.5 = 10
    assert h_abs == pytest.approx(10.0)
    by_hand = 0.0
    for i in range(2):
        for j in range(2):
            by_hand += abs(w2[0, i].item()) * 1.0 * abs(w1[i, j].item())  # grad wrt |W1_ij| times |W1_ij|
    for i in range(2):
        by_hand += (abs(w1[i, 0].item()) + abs(w1[i, 1].item())) * abs(w2[0, i].item())
    assert by_hand == pytest.approx(2 * h_abs)
    assert proxies.synflow(theta, forward).item() == pytest.approx(by_hand)
    assert proxies.normalized_synflow(theta, forward).item() == pytest.approx(by_hand / 6)


def test_synflow_needs_forward():
    with pytest.raises(ValueError, match="forward"):
        proxies.synflow(tiny_theta())


def test_proxies_are_differentiable_through_theta():
    theta = {k: v.clone().requires_grad_(True) for k, v in tiny_theta().items()}
    g = torch.autograd.grad(proxies.parameter_variance(theta), [theta["a"]])[0]
    # d var / d theta_n = 2 (theta_n - mean) / (N - 1)
    assert torch.allclose(g, 2 * (theta["a"].detach() - 0.5) / 4)


def test_registry_holds_every_table_6_1_proxy():
    assert set(PROXIES) == {"l0_norm", "l1_norm", "l2_norm", "synflow", "normalized_synflow",
                            "parameter_variance", "l0_var", "l1_var", "l0_l1"}
    assert not PROXIES["l0_norm"].differentiable
    assert PROXIES["synflow"].needs_forward
    with pytest.raises(ValueError, match="unknown proxy 'nope'"):
        get_proxy("nope")
