"""R-DARTS: Hessian dominant eigenvalue by power iteration, DARTS-ES and DARTS-ADA, S1-S4."""

from __future__ import annotations

import pytest
import torch

from dartboard.searchers.parts.rdarts import dominant_eigenvalue, es_stop_index, local_average, val_hessian_eigenvalue
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.catalog import SPACES, CellSpace, get_space, register_space
from dartboard.spaces.networks import SearchNetwork

torch.set_num_threads(1)  # 2 shared cores: thread contention costs far more than it gains here

TINY = "test-rdarts-tiny"
if TINY not in SPACES:
    register_space(CellSpace.uniform(TINY, ("skip_connect", "sep_conv_3x3"), steps=2))


def tiny(name: str, **options):
    base = {"space": TINY, "steps": 2, "multiplier": 2, "C": 4, "layers": 3, "stem_multiplier": 1, "epochs": 30}
    base.update(options)
    torch.manual_seed(0)
    return build_searcher(name, base, DataShape(1, 8, 4))


def batch(seed: int = 0, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 4, (size,), generator=g)


@pytest.mark.parametrize("shift", [0.0, -6.0])
def test_power_iteration_on_quadratic_matches_eigvalsh(shift):
    torch.manual_seed(1)
    a = torch.randn(6, 6, dtype=torch.float64)
    h = a @ a.T / 6 + shift * torch.eye(6, dtype=torch.float64)  # shift < 0: dominant magnitude negative
    x = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    value = dominant_eigenvalue(lambda: 0.5 * x @ h @ x + x.sum(), [x], max_iter=2000, tol=1e-12)
    assert value == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-6)


@pytest.mark.parametrize("shift", [0.0, -6.0])
def test_unused_and_linear_parameters_add_zero_eigenvalues(shift):
    """A parameter outside the graph and one used linearly: H has zero rows/columns for them, so the
    answer is eigvalsh of the full Hessian (the zeros included), not an autograd error."""
    torch.manual_seed(1)
    a = torch.randn(4, 4, dtype=torch.float64)
    h = a @ a.T / 4 + shift * torch.eye(4, dtype=torch.float64)
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    linear = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    value = dominant_eigenvalue(lambda: 0.5 * x @ h @ x + x.sum() + 2 * linear.sum(), [x, unused, linear],
                                max_iter=2000, tol=1e-12)
    full = torch.zeros(9, 9, dtype=torch.float64)
    full[:4, :4] = h
    assert value == pytest.approx(float(torch.linalg.eigvalsh(full)[-1]), rel=1e-6, abs=1e-9)
    assert dominant_eigenvalue(lambda: 2 * linear.sum(), [unused, linear]) == 0.0


def test_hessian_eigenvalue_agrees_with_full_hessian_on_small_space():
    searcher = tiny("rdarts-es")
    searcher.supernet.double()
    with torch.no_grad():
        for a in searcher.arch:
            a.data = a.data.double().normal_()
    x, y = batch()
    x = x.double()
    value = val_hessian_eigenvalue(searcher.ctx, (x, y), max_iter=3000, tol=1e-12)
    alphas = list(searcher.arch)
    shapes = [a.shape for a in alphas]

    def loss_of(flat):
        parts, offset = [], 0
        for s in shapes:
            parts.append(flat[offset: offset + s.numel()].view(s))
            offset += s.numel()
        weights = [searcher.activation.weights(p) for p in parts]
        return searcher.objective.loss(searcher.supernet(x, weights), y)

    flat = torch.cat([a.detach().flatten() for a in alphas])
    hessian = torch.autograd.functional.hessian(loss_of, flat)
    exact = float(torch.linalg.eigvalsh((hessian + hessian.T) / 2)[-1])
    assert value == pytest.approx(exact, rel=1e-3)


# A hand-written eigenvalue trace, one evaluation every 2 epochs from epoch 1 (the reference's 0-based
# epochs 0, 2, 4, ...): evaluation i is taken after epoch 2i + 1. The curvature is flat, then rises.
TRACE = [1.0] * 9 + [1.5, 2.5, 4.0, 6.0, 8.0, 10.0, 12.0]
TRACE_EPOCHS = [2 * i + 1 for i in range(len(TRACE))]
# Trailing means of 5 evaluations: A[t] = 1 up to t = 8, A[9] = 1.1, A[10] = 1.4, A[11] = 2.0, A[12] = 3.0.
# A[t] belongs to the window's centre t - 2 and is compared with the one 4 evaluations earlier (t - 6):
#   t = 10: 1.4 / 1 > 1.3, but the architecture it would return (evaluation 4, epoch 9; reference epoch 8)
#           is before the start epoch 10: no stop;
#   t = 11 (epoch 23): 2.0 / 1 > 1.3 and evaluation 5 is epoch 11 (reference epoch 10 >= 10): stop, and
#           return the architecture after epoch 11 = current epoch 23 - 12.
FIRES_AT, RETURNS = 11, 5


def test_local_average_belongs_to_the_window_centre():
    assert local_average(TRACE, 9) == pytest.approx((1 + 1 + 1.5 + 2.5 + 4) / 5)  # TRACE[7..11]
    assert local_average(TRACE, 11) == pytest.approx((1.5 + 2.5 + 4 + 6 + 8) / 5)
    assert local_average([3.0, 6.0, 9.0, 12.0], 0) == pytest.approx(6.0)  # truncated at the start: [0..2]
    assert local_average([3.0, 6.0, 9.0, 12.0], 1) == pytest.approx(7.5)  # [0..3]


def test_es_rule_on_hand_written_trace():
    assert es_stop_index(TRACE, TRACE_EPOCHS) == (FIRES_AT, RETURNS)
    assert TRACE_EPOCHS[FIRES_AT] == 23 and TRACE_EPOCHS[RETURNS] == 11
    assert es_stop_index(TRACE[:FIRES_AT], TRACE_EPOCHS[:FIRES_AT]) is None
    # an earlier start lets the rise at t = 10 count: it returns evaluation 4 (epoch 9)
    assert es_stop_index(TRACE, TRACE_EPOCHS, start_epoch=8) == (10, 4)
    # one evaluation every epoch: the returned architecture is current - 6 epochs
    every_epoch = list(range(1, len(TRACE) + 1))
    assert es_stop_index(TRACE, every_epoch, start_epoch=0) == (10, 4)
    assert every_epoch[10] - every_epoch[4] == 6


def _run(searcher, epochs: int, trace):
    """One step per epoch; the eigenvalue of the evaluation after epoch e is trace[(e - 1) // 2]."""
    asked = []
    searcher.hooks[0].eigenvalue_fn = lambda s, b: asked.append(s.epoch) or trace[(s.epoch - 1) // 2]
    data = [batch(0), batch(1)]
    alphas_at, genotypes_at = {}, {}
    for e in range(epochs):
        searcher.step(data[e % 2], data[(e + 1) % 2])
        epoch_after = searcher.epoch + 1
        alphas_at[epoch_after] = [a.detach().clone() for a in searcher.arch]
        genotypes_at[epoch_after] = searcher.derive()
        metrics = searcher.end_epoch()
        if searcher.stop_requested or "rdarts_returned_epoch" in metrics:
            return metrics, alphas_at, genotypes_at, asked
    return None, alphas_at, genotypes_at, asked


def test_darts_es_stops_where_the_rule_says_and_returns_centre_minus_8_epochs():
    searcher = tiny("rdarts-es", arch_lr=0.05)
    metrics, alphas_at, genotypes_at, asked = _run(searcher, 30, TRACE)
    assert asked == TRACE_EPOCHS[: FIRES_AT + 1]  # first eigenvalue after 1 epoch, then every 2
    assert searcher.stop_requested
    assert metrics["rdarts_stopped_at"] == 23 and metrics["rdarts_returned_epoch"] == 11
    assert searcher.epoch == 11
    for a, b in zip(searcher.arch, alphas_at[11], strict=True):
        assert torch.equal(a.detach(), b)
    assert searcher.derive() == genotypes_at[11]
    assert not torch.equal(alphas_at[23][0], alphas_at[11][0])


def test_darts_ada_rolls_back_and_raises_weight_decay():
    searcher = tiny("rdarts-ada", arch_lr=0.05)
    assert searcher.w_optimizer.param_groups[0]["weight_decay"] == pytest.approx(3e-4)
    metrics, alphas_at, _, _ = _run(searcher, 30, TRACE)
    assert not searcher.stop_requested
    assert metrics["rdarts_returned_epoch"] == 11 and metrics["rdarts_rollbacks"] == 1
    assert searcher.epoch == 11
    for a, b in zip(searcher.arch, alphas_at[11], strict=True):
        assert torch.equal(a.detach(), b)
    assert searcher.w_optimizer.param_groups[0]["weight_decay"] == pytest.approx(3e-3)
    # parts never mutate the config: the unrolled step reads the raised value from the weight optimizer
    assert searcher.config.w_weight_decay == pytest.approx(3e-4)
    state = searcher.state_dict()  # continues: checkpoint round trip keeps the monitor state
    again = tiny("rdarts-ada", arch_lr=0.05)
    again.load_state_dict(state)
    assert again.hooks[0].rollbacks == 1 and again.w_optimizer.param_groups[0]["weight_decay"] == pytest.approx(3e-3)


def test_darts_ada_caps_the_weight_decay_at_0_03_and_at_the_cap_stops_like_es():
    """R-DARTS: wd <- min(10 wd, 0.03); once at the cap, the rule stops the search instead of rolling back."""
    searcher = tiny("rdarts-ada", arch_lr=0.05, w_weight_decay=0.005)
    metrics, _, _, _ = _run(searcher, 30, TRACE)
    assert metrics["rdarts_rollbacks"] == 1 and not searcher.stop_requested
    assert searcher.w_optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.03)  # not 0.05
    capped = tiny("rdarts-ada", arch_lr=0.05, w_weight_decay=0.03)
    metrics, _, _, _ = _run(capped, 30, TRACE)
    assert capped.stop_requested and metrics["rdarts_stopped_at"] == 23 and metrics["rdarts_returned_epoch"] == 11
    assert metrics["rdarts_rollbacks"] == 0 and capped.w_optimizer.param_groups[0]["weight_decay"] == 0.03


def test_es_start_epoch_counts_from_0_with_an_evaluation_every_epoch():
    """The returned architecture's epoch counted from 0 (the reference's) must be >= 10: with one evaluation per
    epoch, the evaluation after epoch 10 (0-based 9) is too early and the one after epoch 11 is not. Windows of 5:
    16 values, centre 13, back 9 (epoch 10): avg 8.2 against 1, fires but too early; 17 values: back 10 (epoch
    11), avg 10 against 2.8: returned."""
    from dartboard.searchers.parts.rdarts import es_returned_index

    values = [1.0] * 12 + [10.0] * 5
    assert es_returned_index(values[:16], list(range(1, 17))) is None
    assert es_returned_index(values, list(range(1, 18))) == 10


def test_rdarts_spaces():
    s1 = get_space("s1")
    assert s1.normal[0] == ("skip_connect", "dil_conv_3x3") and s1.reduce[0] == ("max_pool_3x3", "avg_pool_3x3")
    assert all(len(p) == 2 for p in s1.normal + s1.reduce)
    assert get_space("s2").normal[0] == ("skip_connect", "sep_conv_3x3")
    assert get_space("s3").normal[0] == ("none", "skip_connect", "sep_conv_3x3")
    s4 = get_space("s4")
    net = SearchNetwork(normal_primitives=s4.normal, reduce_primitives=s4.reduce, C=4, layers=3, num_classes=4,
                        in_channels=1, input_size=8)
    x = torch.randn(2, 1, 8, 8)
    noise_only = [torch.tensor([[1.0, 0.0]] * 14)] * 3
    torch.manual_seed(0)
    a = net(x, noise_only)
    torch.manual_seed(1)
    assert not torch.allclose(a, net(x, noise_only))  # the noise op ignores its input and samples N(0, 1)
    searcher = build_searcher("rdarts-es", {"space": "s1", "C": 4, "layers": 3}, DataShape(1, 8, 4))
    assert searcher.alpha_groups()[1].primitives[1] == ("max_pool_3x3", "dil_conv_3x3")
