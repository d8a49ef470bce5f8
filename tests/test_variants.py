"""Parts of the DARTS variants (activations, regularizers, schedules, discretizers) and the
presets built from them: formula tests and end-to-end direction tests on tiny supernets."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from dartboard.data.catalog import load_dataset
from dartboard.searchers.discretize import edge_parse, genotype_mask, sigmoid_threshold_parse, sparse_parse
from dartboard.searchers.parts.activations import (
    ClippedReLU,
    project_capped_simplex,
    project_simplex,
)
from dartboard.searchers.parts.regularizers import (
    REGULARIZERS,
    admm_loss,
    beta_decay_loss,
    discrete_targets,
    l1_loss,
    proximity_loss,
    zero_one_loss,
)
from dartboard.searchers.parts.schedules import SCHEDULES, ConstantSchedule, FimtSchedule
from dartboard.searchers.presets import PRESETS, merge
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import SPACES, CellSpace, register_space
from dartboard.spaces.cells import edge_list

torch.set_num_threads(1)  # 2 shared cores: thread contention costs far more than it gains here

TINY = "test-variants-tiny"
if TINY not in SPACES:  # 2 steps (5 edges), 3 cheap ops
    register_space(CellSpace.uniform(TINY, ("skip_connect", "max_pool_3x3", "sep_conv_3x3"), steps=2))
SHAPE = DataShape(1, 8, 10)


def tiny(name: str, **options):
    base = {"space": TINY, "steps": 2, "multiplier": 2, "C": 4, "layers": 3, "stem_multiplier": 1, "epochs": 4}
    base.update(options)
    torch.manual_seed(0)
    return build_searcher(name, base, SHAPE)


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    train = load_dataset("digits").train
    return train.tensors


def batches(n: int, seed: int = 0, size: int = 16):
    """``n`` seeded batches of real digits (the bundled 8x8 images)."""
    x, y = _digits()
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    if n * size > len(y):
        idx = idx.repeat(n * size // len(y) + 1)
    idx = idx[: n * size].view(n, size)
    return [(x[i], y[i]) for i in idx]


# ----------------------------------------------------------------------------- activations
def test_crb_clamps_to_unit_interval():
    assert ClippedReLU().weights(torch.tensor([-0.5, 0.0, 0.3, 1.7])).tolist() == pytest.approx([0.0, 0.0, 0.3, 1.0])


def _slow_capped(row: torch.Tensor, capped: bool) -> torch.Tensor:
    """Projection by bisection on theta in a = max(x - theta, 0) (KKT), theta >= 0 if capped."""
    if capped and row.clamp_min(0).sum() <= 1:
        return row.clamp_min(0)
    lo, hi = float(row.min()) - 1, float(row.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if (row - mid).clamp_min(0).sum() > 1:
            lo = mid
        else:
            hi = mid
    return (row - (lo + hi) / 2).clamp_min(0)


def test_simplex_projections_match_slow_bisection():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20, 5, dtype=torch.float64) * 2, 0.1 * torch.rand(5, 5, dtype=torch.float64)])
    exact, capped = project_simplex(x), project_capped_simplex(x)
    for i in range(len(x)):
        assert torch.allclose(exact[i], _slow_capped(x[i], capped=False), atol=1e-9)
        assert torch.allclose(capped[i], _slow_capped(x[i], capped=True), atol=1e-9)
    assert torch.allclose(exact.sum(-1), torch.ones(len(x), dtype=torch.float64))
    assert (capped >= 0).all() and (capped.sum(-1) <= 1 + 1e-12).all()
    # hand value: (0.5, 0.5, -1) is above the cap -> (0.5, 0.5, 0); (0.2, -0.3) inside -> (0.2, 0)
    assert project_capped_simplex(torch.tensor([[0.9, 0.9, -1.0]])).tolist()[0] == pytest.approx([0.5, 0.5, 0.0])
    assert project_capped_simplex(torch.tensor([[0.2, -0.3]])).tolist()[0] == pytest.approx([0.2, 0.0])


# ----------------------------------------------------------------------------- regularizers
def test_regularizer_formulas_hand_values():
    # thesis Eq 3.1: sigmoid(0) = 0.5, sigmoid(log 3) = 0.75 -> -(0 + 0.0625) / 2
    assert float(zero_one_loss(torch.tensor([0.0, math.log(3.0)]))) == pytest.approx(-0.03125)
    assert float(l1_loss([torch.tensor([-1.0, 2.0]), torch.tensor([0.5])])) == pytest.approx(3.5)
    # Maile Eq 6: c=0.5, rho=0.1 -> 0.025 * ||(0.2, -0.2)|| = 0.025 * 0.28284
    value = proximity_loss([torch.tensor([[0.2, 0.8]])], [torch.tensor([[0.0, 1.0]])], c=0.5, rho=0.1)
    assert float(value) == pytest.approx(0.025 * math.sqrt(0.08))
    # Maile Eq 7: alpha - z + u = (0.5, 0) + (0.1, 0.2) -> squared norm 0.36 + 0.04
    a, z, u = [torch.tensor([0.5, 1.0])], [torch.tensor([0.0, 1.0])], [torch.tensor([0.1, 0.2])]
    assert float(admm_loss(a, z, u, rho=0.1)) == pytest.approx(0.05 * 0.40)
    assert float(admm_loss(a, z, u, rho=0.1, squared=False)) == pytest.approx(0.05 * math.sqrt(0.40))
    # beta-decay: rows (0, 0) and (log 3, 0): log 2 and log 4 -> mean 1.5 log 2
    rows = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert float(beta_decay_loss(rows)) == pytest.approx(1.5 * math.log(2.0))


def test_beta_decay_ramp_and_bad_options():
    part = REGULARIZERS.build({"name": "beta_decay"})
    assert part.weight(0) == 0.0 and part.weight(50) == pytest.approx(25.0) and part.weight(100) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="'rho'.*zero_one|zero_one.*'rho'"):
        REGULARIZERS.build({"name": "zero_one", "rho": 1})
    with pytest.raises(ValueError, match="unknown regularizer 'nope'"):
        REGULARIZERS.build("nope")


# ----------------------------------------------------------------------------- discretizers
PRIMS = [("none", "skip_connect", "sep_conv_3x3")] * 5
EDGES = edge_list(2)  # (0,2) (1,2) (0,3) (1,3) (2,3)


def test_threshold_parsers_and_fallback():
    w = torch.tensor([[0.99, 0.9, 0.95],   # (0,2): none ignored; skip 0.9, sep 0.95
                      [0.0, 0.2, 0.86],    # (1,2): sep 0.86
                      [0.0, 0.1, 0.3],     # (0,3)
                      [0.0, 0.5, 0.4],     # (1,3)  -> node 3 has nothing >= 0.85: fallback skip 1->3
                      [0.0, 0.1, 0.2]])
    sparse = sparse_parse(w, EDGES, PRIMS)
    assert [(e.op, e.src, e.dst) for e in sparse.edges] == [
        ("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 1, 2), ("skip_connect", 1, 3)]
    edge = edge_parse(w, EDGES, PRIMS)
    assert {(e.op, e.src, e.dst) for e in edge.edges} == {
        ("sep_conv_3x3", 0, 2), ("skip_connect", 0, 2), ("sep_conv_3x3", 1, 2), ("skip_connect", 1, 3)}
    top1 = sigmoid_threshold_parse(w, EDGES, PRIMS, sigma_threshold=0.85, max_inputs_per_node=1)
    assert [(e.op, e.src, e.dst) for e in top1.edges] == [("sep_conv_3x3", 0, 2), ("skip_connect", 1, 3)]
    mask = genotype_mask(sparse, EDGES, PRIMS)
    assert mask.sum() == 3 and mask[0, 2] == 1 and mask[1, 2] == 1 and mask[3, 1] == 1
    with pytest.raises(ValueError, match="sigma_threshold"):
        sparse_parse(w, EDGES, PRIMS, sigma_threshold=1.5)


def test_an_op_exactly_at_the_threshold_is_kept():
    """Thesis Algorithm 1: op >= sigma_t. 0.75 and 0.625 are exact in fp32, so the comparison meets equality."""
    w = torch.tensor([[0.0, 0.75, 0.625], [0.0, 0.625, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.2], [0.0, 0.0, 0.1]])
    edges = {(e.op, e.src, e.dst) for e in edge_parse(w, EDGES, PRIMS, sigma_threshold=0.75).edges}
    assert ("skip_connect", 0, 2) in edges and ("sep_conv_3x3", 0, 2) not in edges
    edges = {(e.op, e.src, e.dst) for e in edge_parse(w, EDGES, PRIMS, sigma_threshold=0.625).edges}
    assert {("skip_connect", 0, 2), ("sep_conv_3x3", 0, 2), ("skip_connect", 1, 2)} <= edges


# ----------------------------------------------------------------------------- schedules
def test_constant_schedule_and_split():
    cs = ConstantSchedule(10)
    due = [cs.arch_step_due() for _ in range(100)]
    assert sum(due) == 10 and due[0] and due[10] and not any(due[1:10])
    assert cs.train_fraction == pytest.approx(0.9091, abs=1e-4)
    assert SCHEDULES.build("alternate").train_fraction == 0.5
    with pytest.raises(ValueError, match="schedule 'constant' has no option 'q'"):
        SCHEDULES.build({"name": "constant", "q": 1})


def test_fimt_hand_trace():
    """Paper convention: an alpha step multiplies the threshold by factor^-(k-1), so that with a constant
    Fisher trace k-1 increases balance one decrease: k weight steps per alpha step."""
    s = FimtSchedule(k=3, ewma=0.5, threshold=1.0, factor=2.0)
    s.after_weight_step(torch.tensor(3.0))  # ewma 3 >= 1 -> no step, threshold 2
    assert not s.arch_step_due() and s.threshold == 2.0
    s.after_weight_step(torch.tensor(1.0))  # ewma 2 >= 2 -> no step, threshold 4
    assert not s.arch_step_due() and s.threshold == 4.0
    s.after_weight_step(torch.tensor(1.0))  # ewma 1.5 < 4 -> step, threshold 4 * 2^-(3-1) = 1
    assert s.arch_step_due() and s.threshold == 1.0 and s.fi_ewma == 1.5


def test_fimt_moving_average_gives_the_new_value_the_weight_0_2():
    """Maile et al. 4.1: EWMA 0.2, the new Fisher trace weighted 0.2: 0.8 * 3 + 0.2 * 1 = 2.6, then
    0.8 * 2.6 + 0.2 * 6 = 3.28 (weighting the old value 0.2 instead: 1.4, then 5.08)."""
    s = FimtSchedule(k=10)
    for fisher, expected in [(3.0, 3.0), (1.0, 2.6), (6.0, 3.28)]:
        s.after_weight_step(torch.tensor(fisher))
        assert s.fi_ewma == pytest.approx(expected, abs=1e-12)


def test_fimt_reference_convention_hand_trace():
    """DARTS-PRIME: decrease by factor^-k, and its first iteration (no Fisher trace yet) raises the
    threshold once before any comparison: the first comparison is against threshold * factor."""
    s = FimtSchedule(k=3, ewma=0.5, threshold=1.0, factor=2.0, convention="reference")
    s.after_weight_step(torch.tensor(1.5))  # ewma 1.5 < 1 * 2 -> step, threshold 2 * 2^-3 = 0.25
    assert s.arch_step_due() and s.threshold == 0.25
    paper = FimtSchedule(k=3, ewma=0.5, threshold=1.0, factor=2.0)
    paper.after_weight_step(torch.tensor(1.5))  # ewma 1.5 >= 1 -> no step, threshold 2
    assert not paper.arch_step_due() and paper.threshold == 2.0


def _alpha_step_intervals(schedule: FimtSchedule, fisher: float, n: int) -> list[int]:
    steps = []
    for i in range(n):
        if schedule.arch_step_due():
            steps.append(i)
        schedule.after_weight_step(torch.tensor(fisher))
    return [b - a for a, b in zip(steps, steps[1:], strict=False)]


def test_fimt_fisher_trace_on_a_hand_set_network():
    """Every supernet weight 0: the features are 0, the logits are the classifier bias (0), p = 1/10, and
    the only non-zero weight gradient is the bias's, mean(p - onehot(y)). Labels 0, 0, 1, 2:
    (0.1 - 0.5)^2 + 2 (0.1 - 0.25)^2 + 7 (0.1)^2 = 0.16 + 0.045 + 0.07 = 0.275."""
    searcher = tiny("darts+fimt")
    with torch.no_grad():
        for p in searcher.supernet.parameters():
            p.zero_()
    received = []
    feed = searcher.schedule.after_weight_step
    searcher.schedule.after_weight_step = lambda g: received.append(float(g)) or feed(g)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 0, 1, 2])
    searcher.step((x, y), (x, y))
    assert received == pytest.approx([0.275], rel=1e-6)


@pytest.mark.parametrize("fisher", [1e-3, 2.5, 400.0])
def test_fimt_constant_trace_k_weight_steps_per_alpha_step(fisher):
    """Maile et al. 4.1: the expected ratio is k = 10 weight steps per alpha step (the 90.91/9.09 split)."""
    intervals = _alpha_step_intervals(FimtSchedule(k=10), fisher, 3000)
    assert len(intervals) > 100 and set(intervals[-100:]) == {10}  # after the warm-in: exactly k
    assert FimtSchedule(k=10).train_fraction == pytest.approx(10 / 11)
    reference = _alpha_step_intervals(FimtSchedule(k=10, convention="reference"), fisher, 3000)
    assert set(reference[-100:]) == {11}  # the authors' code: k + 1
    with pytest.raises(ValueError, match="convention: expected 'paper' or 'reference', got 'x'"):
        FimtSchedule(convention="x")


def test_fimt_receives_the_fisher_trace_before_clipping():
    """The searcher passes FI = sum over weights of grad^2 of L_train on the training batch, before clipping:
    recomputed here by a plain forward/backward on a copy of the supernet taken just before each weight step
    (the clip is tiny, so a clipped trace would be ~1e-8 and an alpha-gradient one would differ)."""
    searcher = tiny("darts+fimt", grad_clip=1e-4)
    received, expected = [], []
    feed = searcher.schedule.after_weight_step
    searcher.schedule.after_weight_step = lambda g: received.append(float(g)) or feed(g)
    weight_step = searcher.weight_step

    def checked_weight_step(x, y):
        net = copy.deepcopy(searcher.supernet)
        with torch.no_grad():
            weights = [w.detach() for w in searcher.group_weights()]
        loss = torch.nn.functional.cross_entropy(net(x, weights), y)
        loss.backward()
        expected.append(sum(float(p.grad.double().pow(2).sum()) for p in net.parameters() if p.grad is not None))
        weight_step(x, y)

    searcher.weight_step = checked_weight_step
    data = batches(3)
    for i in range(6):
        searcher.step(data[i % 3], data[(i + 1) % 3])
    assert len(received) == len(expected) == 6
    assert received == pytest.approx(expected, rel=1e-5)
    assert min(expected) > 1e-3  # far above what a clipped gradient (norm 1e-4) would give
    clipped = sum(float(p.grad.pow(2).sum()) for p in searcher.supernet.parameters() if p.grad is not None)
    assert clipped <= 1e-8 * 1.001  # the weight step itself did clip


def test_fairdarts_zero_one_pushes_sigmoids_to_the_ends():
    searcher = tiny("fairdarts", arch_lr=0.1, regularizers=[{"name": "zero_one", "weight": 10.0}])
    data = batches(2)
    for i in range(60):
        searcher.step(data[i % 2], data[(i + 1) % 2])
    w = torch.cat([torch.sigmoid(a.detach()).flatten() for a in searcher.arch])
    outside = ((w < 0.1) | (w > 0.9)).float().mean()
    assert outside >= 0.9


def test_crb_masked_ops_never_return_and_are_skipped():
    searcher = tiny("darts+crb", arch_lr=0.05, regularizers=[{"name": "l1", "weight": 1.0}],
                    alpha_init={"name": "uniform", "scale": 0.05})
    calls: dict[tuple[int, int, int], int] = {}
    for c, cell in enumerate(searcher.supernet.network.cells):
        for e, mixed in enumerate(cell.mixed):
            for o, op in enumerate(mixed.ops):
                op.register_forward_hook(lambda m, i, out, key=(c, e, o): calls.__setitem__(key, calls.get(key, 0) + 1))
    data = batches(2)
    previous = searcher.supernet.active_ops()
    masked_ever: set[tuple[int, int, int]] = set()
    for i in range(30):
        calls.clear()
        searcher.step(data[i % 2], data[(i + 1) % 2])
        # Masked earlier: skipped by both forwards (an edge with every op masked is excepted:
        # MixedOp then calls op 0 once, times 0, for the output shape).
        now = searcher.supernet.active_ops()
        assert not any(calls.get((c, e, o), 0) for c, e, o in masked_ever if now[c][e])
        for c, cell in enumerate(now):
            for e, active in enumerate(cell):
                assert set(active) <= set(previous[c][e])  # masks only shrink
                masked_ever |= {(c, e, o) for o in set(previous[c][e]) - set(active)}
        assert all(o not in now[c][e] for c, e, o in masked_ever)  # never return
        previous = now
    assert masked_ever, "no op reached alpha <= 0"
    for c, e, o in masked_ever:  # masked alphas stay <= 0, so their weight is exactly 0
        group = searcher.supernet.cell_group[c]
        assert float(searcher.arch[group][e, o].detach()) <= 0.0
    assert searcher.end_epoch()["active_ops"] < 3 * 5 * 3


# Hand-set alphas on the tiny space (edges (0,2) (1,2) (0,3) (1,3) (2,3); ops skip, max_pool, sep_conv).
HAND_A = [[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.2, 0.2]]
# Pi_S(A), the DARTS parse: node 2 keeps both inputs (skip, sep); node 3 keeps its two strongest
# edges, (0,3) max 0.7 and (2,3) skip 0.6, and drops (1,3) (best 0.4).
HAND_PI_A = [[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0]]


def _set_alphas(searcher, rows):
    with torch.no_grad():
        for a in searcher.arch:
            a.copy_(torch.tensor(rows))


def test_proximity_ramp_and_target_by_hand():
    """Maile et al. Eq 6: (c rho_p / 2) ||alpha - Pi_S(alpha)||_2 with c = epoch / epochs, rho_p = 0.1."""
    searcher = tiny("darts+pr", epochs=4)
    prox = searcher.regularizers[0]
    _set_alphas(searcher, HAND_A)
    # ||A - Pi_S(A)||^2 per group = 0.015 + 0.06 + 0.14 + 0.34 + 0.24 = 0.795; two groups (normal, reduce)
    for epoch, c in [(0, 0.0), (1, 0.25), (3, 0.75)]:
        searcher.epoch = epoch
        value = float(prox.loss(searcher.ctx, searcher.group_weights()).detach())
        assert prox.last_c == c
        assert value == pytest.approx(c * 0.1 / 2 * math.sqrt(2 * 0.795), abs=1e-7)
    target = torch.tensor(HAND_PI_A, dtype=torch.float32)
    for got in discrete_targets(searcher.ctx, list(searcher.arch)):
        assert torch.equal(got, target)


def test_admm_z_and_u_over_two_periods_by_hand():
    """Maile et al. Eq 9 and 11 (with the u discount lambda_u): every `period` alpha steps
    z = Pi_S(alpha + u), then u = lambda_u * u + alpha - z; in between z and u stay put."""
    searcher = tiny("darts+admm", regularizers=[{"name": "admm", "period": 2, "lambda_u": 0.5, "rho": 0.1}])
    admm, ctx = searcher.regularizers[0], searcher.ctx
    _set_alphas(searcher, HAND_A)
    admm.loss(ctx, searcher.group_weights())  # z0 = Pi_S(A), u0 = 0
    admm.after_arch_step(ctx)  # alpha step 1: no update
    assert admm.updates == 0 and all(float(u.abs().sum()) == 0 for u in admm.u)
    admm.after_arch_step(ctx)  # alpha step 2, alpha = A: z1 = Pi_S(A + 0), u1 = 0.5 * 0 + A - z1
    u1 = [[-0.1, 0.05, 0.05], [0.1, 0.1, -0.2], [0.2, -0.3, 0.1], [0.3, 0.3, 0.4], [-0.4, 0.2, 0.2]]
    for z, u in zip(admm.z, admm.u, strict=True):
        assert torch.equal(z, torch.tensor(HAND_PI_A, dtype=torch.float32))
        assert torch.allclose(u, torch.tensor(u1), atol=1e-6)
    c = [[0.2, 0.1, 0.7], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05], [0.85, 0.1, 0.05]]
    _set_alphas(searcher, c)
    admm.after_arch_step(ctx)  # step 3: nothing
    assert admm.updates == 1 and torch.allclose(admm.u[0], torch.tensor(u1), atol=1e-6)
    admm.after_arch_step(ctx)  # step 4: z2 = Pi_S(C + u1), u2 = 0.5 u1 + C - z2
    # C + u1 = [.1 .15 .75; .6 .5 -.1; .3 -.2 .9; 1.2 .35 .45; .45 .3 .25]: node 2 keeps sep and skip,
    # node 3 keeps (1,3) skip 1.2 and (0,3) sep 0.9. Pi_S(C) alone would keep (2,3) (skip 0.85) instead
    # of (0,3) (0.8): u moves z, as Eq 9 says.
    z2 = [[0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]]
    u2 = [[0.15, 0.125, -0.275], [-0.45, 0.45, 0.0], [0.2, -0.05, -0.15], [0.05, 0.2, 0.25], [0.65, 0.2, 0.15]]
    assert admm.updates == 2
    for z, u in zip(admm.z, admm.u, strict=True):
        assert torch.equal(z, torch.tensor(z2, dtype=torch.float32))
        assert torch.allclose(u, torch.tensor(u2), atol=1e-6)
    # Eq 7 with these: (rho / 2) ||C - z2 + u2||^2 over both groups
    diff = torch.tensor(c) - torch.tensor(z2, dtype=torch.float32) + torch.tensor(u2)
    expected = 0.05 * 2 * float(diff.pow(2).sum())
    assert float(admm.loss(ctx, searcher.group_weights()).detach()) == pytest.approx(expected, rel=1e-6)


def test_admm_every_z_is_a_discrete_architecture():
    searcher = tiny("darts+admm", arch_lr=0.05, regularizers=[{"name": "admm", "period": 2}])
    admm = searcher.regularizers[0]
    seen = []
    original = admm.after_arch_step

    def record(s):
        before = admm.updates
        original(s)
        if admm.updates != before:
            seen.append([z.clone() for z in admm.z])

    admm.after_arch_step = record
    data = batches(2)
    for i in range(8):
        searcher.step(data[i % 2], data[(i + 1) % 2])
    assert len(seen) == 4
    for zs in seen:
        for z in zs:
            assert set(z.unique().tolist()) <= {0.0, 1.0}
            assert (z.sum(dim=1) <= 1).all()  # at most one op per edge
            for node in (2, 3):  # exactly two inputs per node, from distinct sources
                rows = [e for e, (_, dst) in enumerate(searcher.alpha_groups()[0].rows) if dst == node]
                assert float(z[rows].sum()) == 2.0
    assert any(float(u.abs().sum()) > 0 for u in admm.u)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_sparse_darts_stays_in_capped_simplex(weight):
    searcher = tiny("sparse-darts", arch_lr=0.05, regularizers=[{"name": "l1", "weight": weight}])
    data = batches(2)
    for i in range(25):
        searcher.step(data[i % 2], data[(i + 1) % 2])
        for a in searcher.arch:
            assert (a >= 0).all() and (a.sum(dim=1) <= 1 + 1e-6).all()
    zeros = sum(int((a == 0).sum()) for a in searcher.arch)
    if weight > 0:
        assert zeros > 0
        assert searcher.end_epoch()["alpha_exact_zeros"] == zeros


def test_sparse_l1_gives_more_exact_zeros_than_none():
    counts = []
    for weight in (0.0, 0.5):
        searcher = tiny("sparse-darts", arch_lr=0.05, regularizers=[{"name": "l1", "weight": weight}])
        data = batches(2)
        for i in range(15):
            searcher.step(data[i % 2], data[(i + 1) % 2])
        counts.append(sum(int((a == 0).sum()) for a in searcher.arch))
    assert counts[1] > counts[0]


# ----------------------------------------------------------------------------- presets
def test_build_searcher_darts_pr_fimt_documented_call():
    searcher = build_searcher("darts+pr+fimt", {"C": 4, "layers": 3}, DataShape(1, 8, 10))
    assert type(searcher.schedule).__name__ == "FimtSchedule"
    assert [type(r).__name__ for r in searcher.regularizers] == ["Proximity"]
    assert searcher.train_fraction == pytest.approx(10 / 11)


def test_every_preset_builds_and_user_combinations():
    for name in PRESETS:
        if name == "dartopti":  # its cells come from a handcrafted start, not the tiny space
            continue
        if PRESETS[name].dataset is not None:  # an application on its own data and space (NASiam, PMSM,
            continue  # ColorNAS): tests/test_nasiam.py, test_pmsm.py, test_colornas.py
        searcher = tiny(name)
        genotype = searcher.derive()  # a valid genotype of the tiny space: schema round trip, its ops only
        assert gt.loads(gt.dumps(genotype)) == genotype
        cells = genotype.cells if genotype.kind == "cells" else (genotype.normal, genotype.reduce)
        assert {e.op for c in cells for e in c.edges} <= {"skip_connect", "max_pool_3x3", "sep_conv_3x3"}
        assert all(c.concat for c in cells)
    combo = tiny("darts-variant", activation="crb", schedule="constant", schedule_options={"k": 4},
                 regularizers=["proximity", {"name": "admm", "squared": False}], node_bn=True)
    assert [type(r).__name__ for r in combo.regularizers] == ["Proximity", "Admm"]
    assert type(combo.activation).__name__ == "ClippedReLU"  # CRB masking comes with the activation
    assert combo.train_fraction == pytest.approx(0.8)
    assert PRESETS["darts+pr+fimt+crb"].options == merge({"regularizers": [{"name": "proximity"}]},
                                                         PRESETS["darts+fimt+crb"].options)
    with pytest.raises(ValueError, match="disagree on 'schedule'"):
        merge({"schedule": "fimt"}, {"schedule": "constant"})
    with pytest.raises(ValueError, match="unknown schedule 'weekly'"):
        build_searcher("darts-variant", {"schedule": "weekly"}, SHAPE)


def test_published_defaults_of_the_constrained_fair_and_ddarts_presets():
    """The constants of ALGORITHMS.md as the presets build them (DARTS' own: test_darts.test_published_defaults)."""
    from dartboard.searchers.discretize import SIGMA_THRESHOLD

    assert SIGMA_THRESHOLD == 0.85  # thesis 4.2.1
    fair = tiny("fairdarts")  # FairDARTS: w01 = 10; alphas Adam 3e-3, (0.9, 0.999), wd 1e-3; weights lr 0.005
    (zero_one,) = fair.regularizers
    assert type(zero_one).__name__ == "ZeroOne" and zero_one.weight == 10.0
    c = fair.config
    assert (c.arch_lr, tuple(c.arch_betas), c.arch_weight_decay, c.w_lr) == (3e-3, (0.9, 0.999), 1e-3, 0.005)
    dd = tiny("ddarts")  # D-DARTS: w01 = 7, wAB = 0.5, per-cell Adam 3e-3, (0.9, 0.999), wd 1e-3, cosine per cell
    zero_one, ablation = dd.regularizers
    assert (zero_one.weight, zero_one.per_group, ablation.weight) == (7.0, True, 0.5)
    c = dd.config
    assert (c.arch_lr, tuple(c.arch_betas), c.arch_weight_decay) == (3e-3, (0.9, 0.999), 1e-3)
    optimizer = dd.parts.arch_optimizer
    assert (optimizer.per_group, optimizer.lr_schedule) == (True, "cosine")
    (admm,) = tiny("darts+admm").regularizers  # Maile et al. 4.1: rho_a 0.1, lambda_u 0.8, every 10 alpha steps
    assert (admm.rho, admm.lambda_u, admm.period) == (0.1, 0.8, 10)
    (proximity,) = tiny("darts+pr").regularizers  # rho_p 0.1
    assert proximity.rho == 0.1
    fimt = tiny("darts+fimt").parts.schedule  # k 10, EWMA 0.2, threshold from 1.0, factor 1.05
    assert (fimt.k, fimt.ewma_factor, fimt.threshold, fimt.factor) == (10, 0.2, 1.0, 1.05)
