"""The one-shot presets end to end on tiny data (issue 19): each search moves in its method's
direction, and two data-parallel replicas (arch gradients averaged as ``reduce_arch_grads`` does
under DDP) fed different batches keep identical alphas and draw identical samples."""

from __future__ import annotations

import functools
import threading

import pytest
import torch

from dartboard.data.catalog import load_dataset
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.catalog import SPACES, CellSpace, register_space

torch.set_num_threads(1)

TINY = "test-oneshot-search"
if TINY not in SPACES:  # 2 steps (5 edges), 3 cheap ops
    register_space(CellSpace.uniform(TINY, ("skip_connect", "max_pool_3x3", "sep_conv_3x3"), steps=2))
SHAPE = DataShape(1, 8, 10)
ONESHOT = ["gdas", "snas", "drnas", "pc-darts", "sdarts-rs", "sdarts-adv", "darts-minus", "darts-pt"]
OWN = {"pc-darts": {"warmup_epochs": 1}, "darts-pt": {"pt_tune_steps": 2}}


def tiny(name: str, seed: int = 0, **options):
    base = {"space": TINY, "steps": 2, "multiplier": 2, "C": 4, "layers": 3, "stem_multiplier": 1, "epochs": 3,
            **OWN.get(name, {})}
    torch.manual_seed(seed)
    return build_searcher(name, {**base, **options}, SHAPE)


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    return load_dataset("digits").train.tensors


def batches(n: int, seed: int = 0, size: int = 32):
    x, y = _digits()
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: n * size].view(n, size)
    return [(x[i], y[i]) for i in idx]


def run(s, epochs: int, steps: int = 6, seed: int = 0) -> list[dict[str, float]]:
    out = []
    for epoch in range(epochs):
        data = batches(2 * steps, seed + epoch)
        for i in range(steps):
            s.step(data[2 * i], data[2 * i + 1])
        out.append(s.end_epoch())
    return out


# ----------------------------------------------------------------------------- direction on digits
@pytest.mark.parametrize("name", ONESHOT)
def test_search_learns_and_moves_its_architecture(name):
    s = tiny(name)
    before = [a.detach().clone() for a in s.arch_parameters()]
    history = run(s, 3, steps=4)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    moved = [float((a - b).abs().max()) for a, b in zip(s.arch_parameters(), before, strict=True)]
    assert min(moved) > 0  # every alpha group (and PC-DARTS's betas) moved
    assert s.derive().kind == "darts"


def test_gdas_anneals_its_temperature():
    s = tiny("gdas", epochs=3)
    taus = [m["gumbel_tau"] for m in run(s, 3, steps=2)]
    assert taus == pytest.approx([10.0, 5.05, 0.1])


def test_snas_updates_alphas_on_the_training_batch_only():
    """Single level: the validation batch is never read (NaN images there change nothing)."""
    s, t = tiny("snas"), tiny("snas")
    train = batches(2, 0)
    nan_val = (torch.full_like(train[1][0], float("nan")), train[1][1])
    for i in range(2):
        s.step(train[i], train[1 - i])
        t.step(train[i], nan_val)
    assert all(torch.equal(a, b) for a, b in zip(s.arch_parameters(), t.arch_parameters(), strict=True))
    assert all(torch.isfinite(a).all() for a in t.arch_parameters())


def test_drnas_kl_pulls_concentrations_to_the_anchor():
    """With a strong anchor the concentrations elu(alpha) + 1 move towards 1, i.e. alpha towards 0."""
    strong, free = tiny("drnas", kl_weight=50.0, arch_lr=0.05), tiny("drnas", kl_weight=0.0, arch_lr=0.05)
    for s in (strong, free):
        with torch.no_grad():
            for a in s.arch:
                a.fill_(1.0)
        run(s, 1, steps=4)
    dist = [sum(float((a - 0).abs().mean()) for a in s.arch) for s in (strong, free)]
    assert dist[0] < dist[1] and dist[0] < 2 * 0.8


def test_pc_darts_warms_up_then_moves_its_betas():
    s = tiny("pc-darts", warmup_epochs=1)
    betas = [b.detach().clone() for b in s.arch_extra]
    first = run(s, 1, steps=3)[0]
    assert first["arch_steps"] == 0 and all(torch.equal(a, b) for a, b in zip(betas, s.arch_extra, strict=True))
    run(s, 1, steps=3)
    assert s.arch_steps == 3 and all(not torch.equal(a, b) for a, b in zip(betas, s.arch_extra, strict=True))


def test_darts_minus_coefficient_decays_over_the_search():
    s = tiny("darts-minus")
    coefficients = []
    for _ in range(3):
        run(s, 1, steps=1)
        coefficients.append(float(s.forward_weights(s.group_weights())[0][0, -1]))
    assert coefficients == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_darts_pt_projects_every_edge_and_derives_its_choices():
    s = tiny("darts-pt", pt_start_epoch=1, pt_tune_steps=0, epochs=2, **{"activation.val_batches": 1})
    history = run(s, 2, steps=12)
    # before the projection starts every decision is pending: 5 edges x 2 groups, then node 3 of each group (was -1)
    assert history[0]["pt_pending"] == 12.0 and history[-1]["pt_pending"] == 0.0
    assert history[-1]["pt_decided_edges"] == 10.0  # 5 edges x 2 groups
    assert history[-1]["pt_removed_edges"] == 2.0  # node 3 of each group keeps 2 of its 3 inputs
    for cell, g in zip((s.derive().normal, s.derive().reduce), (0, 1), strict=True):
        chosen = {(e.src, e.dst): e.op for e in cell.edges}
        rows = s.alpha_groups()[g].rows
        assert chosen == {rows[e]: s.alpha_groups()[g].primitives[e][k] for (gg, e), k in s.activation.decided.items()
                          if gg == g and (g, e) not in s.activation.removed}



def decision_steps(s, monkeypatch) -> list[int]:
    """The search step at which each DARTS-PT decision is made (the step being taken, counted from 0)."""
    steps, decide = [], s.activation.decide

    def recorded(ctx, decision):
        steps.append(ctx.global_step)
        decide(ctx, decision)

    monkeypatch.setattr(s.activation, "decide", recorded)
    return steps


def test_darts_pt_fits_its_decisions_into_the_steps_left(monkeypatch):
    # 12 decisions, 8 steps left and 10 fine-tuning steps asked between decisions: two at once while fewer steps
    # than decisions are left, then one a step; the projection ends with the search, not 9 decisions short
    s = tiny("darts-pt", pt_start_epoch=1, pt_tune_steps=10, epochs=2, **{"activation.val_batches": 1})
    steps = decision_steps(s, monkeypatch)
    history = run(s, 2, steps=8)
    assert steps == [8, 8, 9, 9, 10, 10, 11, 11, 12, 13, 14, 15]
    assert history[-1]["pt_pending"] == 0.0 and history[-1]["pt_decided_edges"] == 10.0


def test_darts_pt_keeps_its_fine_tuning_where_the_steps_left_hold_it(monkeypatch):
    # 28 steps left for 12 decisions: 1 fine-tuning step between them fits (24 steps): one decision every 2 steps
    s = tiny("darts-pt", pt_start_epoch=1, pt_tune_steps=1, epochs=3, **{"activation.val_batches": 1})
    steps = decision_steps(s, monkeypatch)
    run(s, 3, steps=14)
    assert steps == [14 + 2 * i for i in range(12)]


def test_darts_pt_started_in_the_first_epoch_finishes_when_the_search_closes(monkeypatch):
    # one epoch: the projection starts at epoch 0 (half of 1), before the epoch's length is known; the decisions
    # the fine-tuning pace leaves pending are made when the last epoch closes
    s = tiny("darts-pt", pt_tune_steps=10, epochs=1, **{"activation.val_batches": 1})
    steps = decision_steps(s, monkeypatch)
    history = run(s, 1, steps=6)
    assert steps[:1] == [0] and steps[1:] == [6] * 11
    assert history[-1]["pt_pending"] == 0.0 and history[-1]["pt_removed_edges"] == 2.0


def test_darts_pt_refuses_a_projection_that_would_never_start():
    with pytest.raises(ValueError, match=r"\(pt_start_epoch\): the projection would start at epoch 3 of a search of 3"):
        tiny("darts-pt", pt_start_epoch=3, epochs=3)


# ----------------------------------------------------------------------------- data-parallel replicas
class PairReducer:
    """Two ranks in two threads: each rank's arch gradients become the mean of both (an all-reduce)."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=60)
        self.slots: list[list[torch.Tensor] | None] = [None, None]

    def hook(self, rank: int):
        def reduce(grads):
            self.slots[rank] = [g.detach().clone() for g in grads]
            self.barrier.wait()
            mean = [(a + b) / 2 for a, b in zip(self.slots[0], self.slots[1], strict=True)]
            self.barrier.wait()
            for g, m in zip(grads, mean, strict=True):
                g.copy_(m)

        return reduce


@pytest.mark.parametrize("name", ONESHOT)
def test_two_replicas_keep_identical_alphas_and_samples(name):
    reducer = PairReducer()
    replicas = [tiny(name, seed=0) for _ in range(2)]  # one run seed, as every rank of a DDP run
    samples: list[list[list[torch.Tensor]]] = [[], []]
    errors: list[BaseException] = []

    def rank_loop(rank: int) -> None:
        try:
            s = replicas[rank]
            s.distribute(lambda m: m, reducer.hook(rank))
            data = batches(8, seed=100 + rank, size=16)  # each rank its own shard
            for epoch in range(2):
                for i in range(2):
                    torch.rand(rank + 1)  # the global RNG is consumed differently on each rank
                    s.step(data[4 * epoch + 2 * i], data[4 * epoch + 2 * i + 1])
                    samples[rank].append([w.detach().clone() for w in s.group_weights()])
                s.end_epoch()
        except BaseException as err:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(err)
            reducer.barrier.abort()

    threads = [threading.Thread(target=rank_loop, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    a, b = replicas
    assert all(torch.equal(x, y) for x, y in zip(a.arch_parameters(), b.arch_parameters(), strict=True))
    for step_a, step_b in zip(*samples, strict=True):  # the same sample drawn on both ranks at every step
        assert all(torch.equal(x, y) for x, y in zip(step_a, step_b, strict=True))
    assert a.derive() == b.derive()
    assert any(not torch.equal(x, y) for x, y in zip(a.weight_parameters(), b.weight_parameters(), strict=True))


@pytest.mark.parametrize("name", ["gdas", "snas", "drnas", "pc-darts"])
def test_the_history_and_entropy_read_the_weights_the_genotype_is_derived_from(name):
    # Before: the history's weights (alpha_history.png, alpha_history.json) and alpha_entropy were those of the
    # last step's forward: a sampler's sample (one-hot rows and an entropy of 0 for GDAS, whatever the alphas said),
    # PC-DARTS' op weights without its edge weights, next to a genotype derived from softmax(alpha) (times the edge
    # weights).
    from dartboard.searchers.base import mixing_entropy

    s = tiny(name)
    metrics = run(s, 1, steps=2)[0]
    expected = [w.detach() for w in s.derive_weights()]
    if name == "pc-darts":
        edges = s.mixed_op.edge_weights(list(s.arch_extra))
        assert all(torch.allclose(w, torch.softmax(a, -1).detach() * e.detach().unsqueeze(1))
                   for w, a, e in zip(expected, s.arch, edges, strict=True))
    forward = [w.detach() for w in s.group_weights()]
    assert not all(torch.allclose(w, e) for w, e in zip(forward, expected, strict=True))  # the forward's differ
    got = [torch.tensor(w) for w in s.history[-1]["weights"]]
    assert all(torch.allclose(g, e.float()) for g, e in zip(got, expected, strict=True))
    assert metrics["alpha_entropy"] == pytest.approx(mixing_entropy(expected))
    assert metrics["alpha_entropy"] > 0.5  # near uniform after two steps (GDAS' one-hot sample: 0)
