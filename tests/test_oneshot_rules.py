"""The rules of the one-shot methods against hand-computed cases (issue 19): Gumbel straight-through,
GDAS computing only the sampled op, Dirichlet statistics and KL, partial channels and edge
normalisation, SDARTS bounds and restoration, the DARTS- schedule, DARTS-PT's choice."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dartboard.searchers.discretize import darts_parse
from dartboard.searchers.parts.mixed_ops import (
    AuxSkipMixedOp,
    PartialChannelMixedOp,
    aux_coefficient,
    channel_shuffle,
    edge_softmax,
)
from dartboard.searchers.parts.oneshot_regularizers import DirichletAnchor, dirichlet_kl
from dartboard.searchers.parts.perturbations import AdversarialPerturbation, clip_weights, epsilon_at
from dartboard.searchers.parts.projection import PerturbationProjection, removal_choice
from dartboard.searchers.parts.samplers import (
    dirichlet_rsample,
    gumbel_noise,
    gumbel_softmax,
    step_generator,
    temperature,
)
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.catalog import SPACES, CellSpace, register_space
from dartboard.spaces.cells import MixedOp

torch.set_num_threads(1)

TINY = "test-oneshot-tiny"
if TINY not in SPACES:  # 2 steps (5 edges), 3 cheap ops
    register_space(CellSpace.uniform(TINY, ("skip_connect", "max_pool_3x3", "sep_conv_3x3"), steps=2))
SHAPE = DataShape(1, 8, 10)


def tiny(name: str, **options):
    base = {"space": TINY, "steps": 2, "multiplier": 2, "C": 4, "layers": 3, "stem_multiplier": 1, "epochs": 4}
    torch.manual_seed(0)
    return build_searcher(name, {**base, **options}, SHAPE)


def batch(seed: int = 0, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g)


# ----------------------------------------------------------------------------- Gumbel (GDAS, SNAS)
def test_gumbel_softmax_hand_values_and_straight_through():
    alpha = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    zero = torch.zeros(1, 2)
    # log softmax = (log 1/4, log 3/4); tau = 1 -> p = (1/4, 3/4); tau = 1/2 -> p ∝ (1/16, 9/16)
    assert torch.allclose(gumbel_softmax(alpha, zero, 1.0, hard=False), torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(gumbel_softmax(alpha, zero, 0.5, hard=False), torch.tensor([[0.1, 0.9]]))
    noise = torch.tensor([[2.0, 0.0]])  # noise flips the sample to op 0: p ∝ 0.25 e^2 > 0.75
    hard = gumbel_softmax(alpha, noise, 1.0, hard=True)
    assert hard[0, 1].item() == 0.0 and hard[0, 0].item() == pytest.approx(1.0)  # one-hot, exact zero
    upstream = torch.tensor([[0.3, -1.7]])
    (g_hard,) = torch.autograd.grad((hard * upstream).sum(), alpha)
    (g_soft,) = torch.autograd.grad((gumbel_softmax(alpha, noise, 1.0, hard=False) * upstream).sum(), alpha)
    assert torch.allclose(g_hard, g_soft) and g_soft.abs().sum() > 0  # backward = the soft gradient


def test_temperature_schedules():
    assert temperature(0, 50, 10.0, 0.1) == 10.0 and temperature(49, 50, 10.0, 0.1) == pytest.approx(0.1)
    assert temperature(5, 11, 10.0, 0.1) == pytest.approx(5.05)  # GDAS: linear
    assert temperature(5, 11, 1.0, 0.03, "exponential") == pytest.approx(math.sqrt(0.03))


def test_gumbel_draws_depend_on_seed_and_step_only():
    a = gumbel_noise(torch.Size([3, 4]), step_generator("cpu", 7, 3, 1), "cpu")
    torch.manual_seed(123)  # the global RNG plays no part
    b = gumbel_noise(torch.Size([3, 4]), step_generator("cpu", 7, 3, 1), "cpu")
    c = gumbel_noise(torch.Size([3, 4]), step_generator("cpu", 7, 4, 1), "cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)


def _count_op_calls(searcher) -> dict[tuple[int, int, int], int]:
    calls: dict[tuple[int, int, int], int] = {}
    for c, cell in enumerate(searcher.supernet.network.cells):
        for e, mixed in enumerate(cell.mixed):
            for o, op in enumerate(mixed.ops):
                op.register_forward_hook(lambda *_, key=(c, e, o): calls.__setitem__(key, calls.get(key, 0) + 1))
    return calls


def test_gdas_computes_only_the_sampled_op_and_alphas_get_gradients():
    s = tiny("gdas")
    calls = _count_op_calls(s)
    x, y = batch(0)
    s.step((x, y), batch(1))
    sample = [w.detach() for w in s.group_weights()]  # the step's one-hot per group
    for c, cell in enumerate(s.supernet.network.cells):
        w = sample[s.supernet.cell_group[c]]
        for e in range(len(cell.mixed)):
            chosen = int(w[e].argmax())
            assert calls.get((c, e, chosen)) == 2  # the alpha step's forward and the weight step's
            assert all((c, e, o) not in calls for o in range(3) if o != chosen)
    assert s.arch_steps == 1
    t = tiny("darts", engine="reference")  # the batched engine does not call the per-op modules
    calls_darts = _count_op_calls(t)
    t.step((x, y), batch(1))
    assert sum(calls_darts.values()) == 3 * sum(calls.values())  # DARTS computes all 3 ops


def test_gdas_alpha_step_moves_every_alpha_row():
    s = tiny("gdas", arch_weight_decay=0.0)
    before = [a.detach().clone() for a in s.arch_parameters()]
    s.step(batch(0), batch(1))
    for b, a in zip(before, s.arch_parameters(), strict=True):
        assert (b != a).any(dim=1).all()  # straight-through: every edge's alphas get a gradient


# ----------------------------------------------------------------------------- Dirichlet (DrNAS)
def test_dirichlet_sample_statistics_and_pathwise_gradient():
    conc = torch.tensor([2.0, 3.0, 5.0], requires_grad=True)
    samples = dirichlet_rsample(conc.expand(40000, 3), step_generator("cpu", 0, 0))
    a0 = 10.0
    assert torch.allclose(samples.mean(0), torch.tensor([0.2, 0.3, 0.5]), atol=0.005)
    var = torch.tensor([c * (a0 - c) / (a0**2 * (a0 + 1)) for c in (2.0, 3.0, 5.0)])  # 0.01455, 0.01909, 0.02273
    assert torch.allclose(samples.var(0), var, rtol=0.05)
    (grad,) = torch.autograd.grad(samples[:, 0].mean(), conc)
    # d E[w_0] / d c = ((a0 - c0) / a0^2, -c0 / a0^2, -c0 / a0^2) = (0.08, -0.02, -0.02)
    assert torch.allclose(grad, torch.tensor([0.08, -0.02, -0.02]), atol=0.004)


def test_dirichlet_kl_hand_value():
    # KL(Dir(2, 1) || Dir(1, 1)) = log B(1,1)/B(2,1) + (2 - 1)(psi(2) - psi(3)) = log 2 - 1/2
    assert dirichlet_kl(torch.tensor([[2.0, 1.0]])).item() == pytest.approx(math.log(2) - 0.5, abs=1e-6)
    reg = DirichletAnchor(weight=1.0)
    ctx = SimpleNamespace(alphas=[torch.tensor([[1.0, 0.0]])])  # elu(alpha) + 1 = (2, 1)
    assert reg.loss(ctx, []).item() == pytest.approx(math.log(2) - 0.5, abs=1e-6)
    assert DirichletAnchor(weight=1.0, kind="l2").loss(ctx, []).item() == pytest.approx(1.0)
    assert dirichlet_kl(torch.ones(3, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_drnas_derives_from_the_expected_weights():
    s = tiny("drnas")
    with torch.no_grad():
        s.arch[0].zero_()
        s.arch[0][0, 2] = 1.0  # beta = (1, 1, 2): E[w] = (1/4, 1/4, 1/2)
    assert torch.allclose(s.activation.derive_weights(s.arch[0])[0], torch.tensor([0.25, 0.25, 0.5]))
    s.step(batch(0), batch(1))
    w = s.group_weights()[0]
    assert torch.allclose(w.sum(1), torch.ones(w.shape[0])) and not torch.equal(w, s.group_weights()[0] * 0)
    assert torch.equal(w, s.group_weights()[0])  # one draw per step: the alpha and the weight step agree


# ----------------------------------------------------------------------------- PC-DARTS
def test_channel_shuffle_hand_case():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channel_output_shape_and_bypass(stride):
    torch.manual_seed(0)
    mixed = MixedOp(8, stride, ("skip_connect", "sep_conv_3x3"))
    pc = PartialChannelMixedOp(mixed, 4, edge_norm=True)
    assert pc.inner.C == 2 and all(p.shape[0] <= 2 or p.ndim == 1 for p in pc.inner.ops[1].parameters())
    x = torch.randn(2, 8, 6, 6)
    out = pc(x, torch.tensor([1.0, 0.0, 0.5]))  # skip only, edge weight 0.5
    assert out.shape == (2, 8, 6 // stride, 6 // stride)
    if stride == 1:  # identity on 2 channels + 6 bypassed, shuffled, times the edge weight
        assert torch.allclose(out, 0.5 * channel_shuffle(x, 4))


def test_edge_normalisation_scores_and_betas_are_architecture_parameters():
    rows = [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    beta = torch.tensor([0.0, math.log(3.0), 0.0, 0.0, 0.0])
    assert torch.allclose(edge_softmax(beta, rows), torch.tensor([0.25, 0.75, 1 / 3, 1 / 3, 1 / 3]))
    s = tiny("pc-darts", C=8, warmup_epochs=0)
    assert len(s.arch_parameters()) == 4 and [tuple(b.shape) for b in s.arch_extra] == [(5,), (5,)]
    with torch.no_grad():
        for a in s.arch:
            a.zero_()
            a[:, 2] = 1.0  # sep_conv everywhere, the same strength on every edge
        s.arch_extra[0].copy_(torch.tensor([0.0, 0.0, 5.0, 5.0, -5.0]))  # node 3 prefers edges (0, 3), (1, 3)...
        s.arch[0][4, 2] = 1.5  # ... over (2, 3), whose alpha alone would win
    cell = s.derive().normal
    assert {(e.src, e.dst) for e in cell.edges if e.dst == 3} == {(0, 3), (1, 3)}  # (2, 3) dropped by beta
    s.step(batch(0), batch(1))
    assert all(b.grad is None for b in s.arch_extra)  # set by the alpha step, cleared by the optimizer
    assert s.arch_extra[0].abs().sum() > 0


# ----------------------------------------------------------------------------- SDARTS
def test_sdarts_epsilon_ramp_and_clip():
    assert epsilon_at(0.0) == pytest.approx(0.03) and epsilon_at(0.5) == pytest.approx(0.165)
    assert epsilon_at(1.0) == pytest.approx(0.3)
    w = torch.tensor([[-0.2, 0.5, 0.9], [-1.0, -2.0, -0.5]])
    assert torch.allclose(clip_weights(w, "simplex"), torch.tensor([[0.0, 0.5 / 1.4, 0.9 / 1.4], [0, 0, 1.0]]))
    assert torch.equal(clip_weights(w, "box"), w.clamp(0, 1))


@pytest.mark.parametrize("name", ["sdarts-rs", "sdarts-adv"])
def test_sdarts_perturbation_bounds_and_alphas_restored(name):
    s = tiny(name, perturbation={"name": name.split("-")[1].replace("rs", "random").replace("adv", "adversarial"),
                                 "clip": "none"})
    s.epoch = 2  # progress 1/2: epsilon = 0.165
    x, y = batch(0)
    clean = [w.detach() for w in s.group_weights()]
    seen = s.perturbation.weights(s.ctx, clean, x, y)
    for c, p in zip(clean, seen, strict=True):
        assert (p - c).abs().max() <= 0.165 + 1e-6 and (p - c).abs().max() > 0.05
    alphas = [a.detach().clone() for a in s.arch_parameters()]
    s.weight_step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(alphas, s.arch_parameters(), strict=True))


def test_sdarts_adv_increases_the_training_loss():
    s = tiny("sdarts-adv")
    s.supernet.eval()
    x, y = batch(0, 32)
    clean = [w.detach() for w in s.group_weights()]
    adv = AdversarialPerturbation(0.3, 0.3, steps=7, clip="simplex", seed=0)
    with torch.no_grad():
        before = float(s.objective.loss(s.forward(x, clean), y))
        after = float(s.objective.loss(s.forward(x, adv.weights(s.ctx, clean, x, y)), y))
    assert after > before


# ----------------------------------------------------------------------------- DARTS-
def test_darts_minus_coefficient_schedule_and_aux_skip():
    assert [aux_coefficient(t) for t in (0.0, 0.5, 1.0)] == [1.0, 0.5, 0.0]
    assert aux_coefficient(0.25, decay="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    mixed = MixedOp(4, 1, ("max_pool_3x3",))
    op = AuxSkipMixedOp(mixed)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(op(x, torch.tensor([0.0, 0.3])), 0.3 * x)
    s = tiny("darts-minus", epochs=4)
    assert s.forward_weights(s.group_weights())[0][:, -1].tolist() == [1.0] * 5
    s.step(batch(0), batch(1))
    s.end_epoch()
    assert s.forward_weights(s.group_weights())[0][:, -1].tolist() == [0.75] * 5
    plain = [darts_parse(torch.softmax(a.detach(), -1), g.rows, g.primitives) for a, g in zip(s.arch, s.alpha_groups(),
                                                                                          strict=True)]
    assert s.derive() == s.supernet.genotype(plain)  # the skip is no candidate: derivation ignores it


# ----------------------------------------------------------------------------- DARTS-PT
def test_removal_choice_keeps_what_hurts_most():
    assert removal_choice([(0.9, 0.2), (0.4, 1.0), (0.4, 1.5)], [0, 1, 2]) == [2]
    assert removal_choice([(0.9, 0.2), (0.4, 1.0), (0.6, 1.5)], [3, 4, 5], keep=2) == [4, 5]


def test_darts_pt_keeps_the_op_that_matters():
    """A supernet whose only useful op is op 1 of edge 2: the logits are right iff its weight is kept."""
    y = torch.arange(4)
    right = torch.nn.functional.one_hot(y, 4).float() * 5

    def forward(x, gw):
        return right if gw[0][2, 1] > 0 else right.roll(1, dims=1)

    group = SimpleNamespace(rows=((0, 2), (1, 2), (0, 3), (1, 3), (2, 3)), primitives=(("a", "b", "c"),) * 5)
    alphas = [torch.zeros(5, 3)]
    ctx = SimpleNamespace(alphas=alphas, groups=[group], device="cpu", forward=forward,
                          loss=torch.nn.functional.cross_entropy, frozen_batchnorm=torch.no_grad,
                          reduce_mean=lambda tensors: None)
    pt = PerturbationProjection(seed=0)
    pt.start(SimpleNamespace(alphas=alphas, skip_zero_weight_ops=lambda: None))
    pt.buffer = [(torch.zeros(4, 1), y)]
    pt.queue = []
    pt.decide(ctx, ["op", 0, 2])
    assert pt.decided == {(0, 2): 1}
    assert pt.weights(alphas[0])[2].tolist() == [0.0, 1.0, 0.0]
    pt.decide(ctx, ["edge", 0, 3])  # node 3's inputs: edge 2 = (0, 3) carries the useful op and is kept
    assert (0, 2) not in pt.removed and len(pt.removed) == 1


def test_darts_pt_decision_matches_a_brute_force_search(monkeypatch):
    s = tiny("darts-pt", epochs=2, pt_start_epoch=1, pt_tune_steps=100)
    brute, decide = [], s.activation.decide

    def brute_force_first(ctx, decision):  # the supernet exactly as the first decision sees it
        if not brute:
            base = [torch.softmax(a.detach(), -1) for a in s.arch]
            accs = []
            for op in range(3):
                w = [b.clone() for b in base]
                w[decision[1]][decision[2], op] = 0.0
                with torch.no_grad(), s.ctx.frozen_batchnorm():
                    out = [(s.forward(x, w), y) for x, y in s.activation.buffer]
                accs.append((sum(float((o.argmax(1) == y).sum()) for o, y in out),
                             -sum(float(s.objective.loss(o, y)) * len(y) for o, y in out)))
            brute.append(((decision[1], decision[2]), min(range(3), key=lambda op: (accs[op], op))))
        decide(ctx, decision)

    monkeypatch.setattr(s.activation, "decide", brute_force_first)
    for i in range(4):
        s.step(batch(i, 16), batch(10 + i, 16))
    s.end_epoch()
    s.step(batch(4, 16), batch(14, 16))  # the first decisions
    ((g, e), k) = next(iter(s.activation.decided.items()))
    assert brute == [((g, e), k)]


def test_snas_resource_penalty_by_hand():
    """Expected normalised cost: skip costs 0, sep_conv_3x3 the most; rows [1, 0] and [0.5, 0.5] give
    (0 + 0.5 * c) / c = 0.5; the regularizer multiplies by its weight and sums the groups."""
    from dartboard.searchers.parts.oneshot_regularizers import Resource, op_cost, resource_cost

    prims = (("skip_connect", "sep_conv_3x3"),) * 2
    w = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert op_cost("skip_connect") == 0.0 and op_cost("sep_conv_3x3") > 0
    assert float(resource_cost(w, prims)) == pytest.approx(0.5)
    ctx = SimpleNamespace(groups=[SimpleNamespace(primitives=prims)] * 2)
    assert float(Resource(weight=2.0).loss(ctx, [w, w])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="weight"):
        Resource(weight=-1.0)
