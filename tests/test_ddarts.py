"""D-DARTS (thesis ch. 4): Eq 4.2-4.5, the ablation-gradient modes, Algorithm 2, and a search on digits."""

import pytest
import torch

from dartboard.searchers.parts.ablation import ablation_loss, marginal_contributions
from dartboard.searchers.parts.regularizers import zero_one_loss
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.deepen import deepen

SHAPE = DataShape(in_channels=1, input_size=8, num_classes=10)
TINY = {"C": 4, "layers": 3, "epochs": 2}


def batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_eq_4_2_marginal_contributions():
    m = marginal_contributions(torch.tensor(2.0), torch.tensor([1.5, 2.5, 2.0]))
    assert torch.allclose(m, torch.tensor([0.5, -0.5, 0.0]))


def test_eq_4_3_ablation_loss():
    # mean = 0.3: ((0.5 - 0.3) / 0.3, (0.1 - 0.3) / 0.3, 0)
    assert torch.allclose(ablation_loss(torch.tensor([0.5, 0.1, 0.3])), torch.tensor([2 / 3, -2 / 3, 0.0]))
    assert torch.equal(ablation_loss(torch.tensor([0.5, -0.5])), torch.zeros(2))  # mean 0 -> 0


def slow_total_loss_grads(s, x, y, mode):
    """Eq 4.5 by autograd, one cell at a time: grad_alpha_i of L_CE + w01 L01^i + wAB L_AB^i."""
    zero_one, ablation = s.regularizers
    alphas = list(s.arch.parameters())
    grads = []
    for i in range(len(alphas)):
        gw = s.group_weights()
        ce = s.objective.loss(s.forward(x, gw), y)
        without = []
        for j in range(len(alphas)):
            loss = s.objective.loss(ablation.ablated_output(s.ctx, x, s.group_weights(), j), y)
            without.append(loss if mode == "full" else loss.detach())
        m = marginal_contributions(ce, torch.stack(without))
        total = ce + zero_one.weight * zero_one_loss(alphas[i]) + (
            0 if mode == "none" else ablation.weight * ablation_loss(m)[i])
        grads.append(torch.autograd.grad(total, alphas[i])[0])
    return grads


@pytest.mark.parametrize("mode", ["none", "active", "full"])
def test_eq_4_5_per_cell_gradients_match_autograd(mode):
    torch.manual_seed(0)
    s = build_searcher("ddarts", {**TINY, "ablation_grad": mode}, SHAPE)
    with torch.no_grad():  # away from the symmetric start, so every term matters
        for a in s.arch.parameters():
            a.normal_(0, 1)
    x, y = batch()
    fast = s.first_order_grads(x, y)
    slow = slow_total_loss_grads(s, x, y, mode)
    assert s.regularizers[1].metrics(s.ctx)["marginal_mean"] != 0
    for f, sl in zip(fast, slow, strict=False):
        assert torch.allclose(f, sl, atol=1e-6, rtol=1e-4)


def run_steps(name, options, n=3):
    torch.manual_seed(0)
    s = build_searcher(name, {**TINY, **options}, SHAPE)
    for k in range(n):
        s.step(batch(k), batch(100 + k))
    return s


def test_ablation_grad_none_equals_lf_and_active_differs():
    lf = run_steps("ddarts-lf", {})
    none = run_steps("ddarts", {"ablation_grad": "none"})
    active = run_steps("ddarts", {"ablation_grad": "active"})
    start = run_steps("ddarts-lf", {}, n=0)
    for a_lf, a_none in zip(lf.arch.parameters(), none.arch.parameters(), strict=False):
        assert torch.equal(a_lf, a_none)
    assert any(not torch.equal(a, b) for a, b in zip(lf.arch.parameters(), active.arch.parameters(), strict=False))
    assert any(not torch.equal(a, b) for a, b in zip(lf.arch.parameters(), start.arch.parameters(), strict=False))


def test_deactivation_modes():
    s = build_searcher("ddarts", {**TINY, "deactivation": "reference", "seed": 3}, SHAPE)
    t = build_searcher("ddarts", {**TINY, "deactivation": "reference", "seed": 3}, SHAPE)
    w = torch.zeros(14, 7)
    a, b = s.regularizers[1].deactivated_weights(w), t.regularizers[1].deactivated_weights(w)
    assert torch.equal(a, b) and (a >= 0).all() and (a < 1).all() and a.std() > 0
    u = build_searcher("ddarts", TINY, SHAPE)
    assert torch.equal(u.regularizers[1].deactivated_weights(w), torch.full((14, 7), 0.5))
    with pytest.raises(ValueError, match="ablation_grad"):
        build_searcher("ddarts", {**TINY, "ablation_grad": "some"}, SHAPE)
    with pytest.raises(ValueError, match="deactivation"):
        build_searcher("ddarts", {**TINY, "deactivation": "random"}, SHAPE)


def test_one_optimizer_per_cell_and_checkpoint_roundtrip():
    s = run_steps("ddarts", {}, n=1)
    assert len(s.arch_optimizer.optimizers) == len(s.arch_optimizer.schedulers) == 3
    assert all(len(o.param_groups[0]["params"]) == 1 for o in s.arch_optimizer.optimizers)
    s.end_epoch()
    t = build_searcher("ddarts", TINY, SHAPE)
    t.load_state_dict(s.state_dict())
    assert t.arch_optimizer.lr == s.arch_optimizer.lr < 3e-3
    for a, b in zip(s.arch.parameters(), t.arch.parameters(), strict=False):
        assert torch.equal(a, b)


def test_algorithm_2_by_hand():
    # 8 cells: m = 2, m2 = 5. 14 cells: reductions at 4 and 9.
    assert deepen(8, 14) == [0, 1, 0, 1, 2, 4, 3, 4, 3, 5, 6, 7, 6, 7]
    # 20 cells: reductions at 6 and 13.
    assert deepen(8, 20) == [0, 1, 0, 1, 0, 1, 2, 4, 3, 4, 3, 4, 3, 5, 6, 7, 6, 7, 6, 7]
    assert deepen(8, 8) == list(range(8))
    with pytest.raises(ValueError, match="n_searched"):
        deepen(4, 14)


def test_ddarts_on_digits_derives_distinct_cells_and_learns():
    from dartboard.data.catalog import load_dataset
    from dartboard.searchers.loop import run_search

    torch.manual_seed(0)
    splits = load_dataset("digits")
    xs = torch.stack([splits.train[i][0] for i in range(384)])
    ys = torch.tensor([int(splits.train[i][1]) for i in range(384)])
    train = [(xs[i:i + 32], ys[i:i + 32]) for i in range(0, 192, 32)]
    val = [(xs[i:i + 32], ys[i:i + 32]) for i in range(192, 384, 32)]
    s = build_searcher("ddarts", {"C": 4, "layers": 3, "epochs": 3, "w_lr": 0.05},
                       DataShape(splits.info.in_channels, splits.info.input_size, splits.info.num_classes))
    before = s.evaluate(val)["acc"]
    history = run_search(s, train, val, epochs=3)
    after = s.evaluate(val)["acc"]
    assert after > before + 0.1
    assert history[-1]["val_acc"] > history[0]["val_acc"]
    genotype = s.derive()
    assert len(genotype.cells) == 3 and len(set(genotype.cells)) == 3


def test_mixed_precision_step_runs():
    s = run_steps("ddarts", {"precision": "bf16", "ablation_grad": "full"}, n=1)
    assert all(torch.isfinite(a).all() for a in s.arch.parameters())
    assert any(a.abs().sum() > 0 for a in s.arch.parameters())


def test_the_cpu_peak_counts_every_allocation_and_free_in_time_order():
    """``profiled_peak_bytes`` against a hand-counted trace: 4 MB + 4 MB held, 4 MB freed, 2 MB more (peak 8 MB);
    8 MB allocated and freed inside one profiled op (a kernel's scratch buffer), which a sum of each op's own memory
    missed; memory held before the call and freed in it counts neither way."""
    from dartboard.bench.memory import profiled_peak_bytes

    def held():
        a, b = torch.empty(1_000_000), torch.empty(1_000_000)
        del a
        return b, torch.empty(500_000)

    def scratch():
        with torch.profiler.record_function("kernel"):
            t = torch.empty(2_000_000)
            del t
        return torch.empty(250_000)

    before = [torch.empty(1_000_000)]

    def frees_what_it_did_not_allocate():
        before.clear()
        return torch.empty(250_000)

    assert profiled_peak_bytes(held) == 8_000_000
    assert profiled_peak_bytes(scratch) == 8_000_000
    assert profiled_peak_bytes(frees_what_it_did_not_allocate) == 1_000_000


def test_the_profilers_unknown_block_line_is_not_the_benchmarks_output():
    """c10 writes a line to the process's stderr (once per process, hence a new one here) when a block allocated
    before profiling is freed under it, as every measured step does; ``profiled_peak_bytes`` keeps it out of
    ``bench speed`` and ``bench memory``, and lets every other line through, in order."""
    import subprocess
    import sys

    code = ("import os, sys, torch\n"
            "from dartboard.bench.memory import profiled_peak_bytes\n"
            "before = [torch.empty(1_000_000)]\n"
            "def step():\n"
            "    print('python line', file=sys.stderr)\n"
            "    before.clear()\n"
            "    os.write(2, b'native line\\n')\n"
            "print(profiled_peak_bytes(step))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert done.stderr.splitlines() == ["python line", "native line"]


def test_memory_benchmark_lt_within_25_percent_of_lf():
    from dartboard.bench import memory as bench

    setting = bench.Setting(batch=8, C=4, layers=3, input_size=8, steps=1)
    results = bench.run(setting, ["L_F", "L_T (active)", "L_T (full)"])
    assert results["L_F"]["peak_bytes"] > 0
    assert results["L_T (active)"]["ratio"] <= bench.LIMIT
    assert results["L_T (full)"]["ratio"] <= bench.LIMIT
