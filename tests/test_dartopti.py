"""DARTOpti (thesis 4.1.4, 4.2.4): handcrafted starts, shared type alphas, warm-up, distance and early stop."""

import pytest
import torch

from dartboard.searchers.loop import run_search
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.catalog import resolve
from dartboard.spaces.distance import architecture_distance
from dartboard.spaces.genotype import from_dict, to_dict
from dartboard.spaces.networks import DiscreteNetwork

SHAPE = DataShape(in_channels=1, input_size=8, num_classes=10)


def test_handcrafted_catalog_entries():
    r18, r50, xc = resolve("resnet18"), resolve("resnet50"), resolve("xception")
    assert len(r18.cells) == 4 and r18.reductions == (1, 2, 3) and r18.types == (0, 0, 0, 0)
    assert {(e.op, e.src, e.dst) for e in r18.cells[0].edges} == {
        ("simple_conv_3x3", 0, 2), ("simple_conv_3x3", 2, 3), ("skip_connect", 0, 3),
        ("simple_conv_3x3", 3, 4), ("simple_conv_3x3", 4, 5), ("skip_connect", 3, 5)}
    assert r50.types == (0, 1, 2, 0) and [c.n_nodes for c in r50.cells] == [3, 4, 6, 3]
    assert xc.types == (0,) * 3 + (1,) * 8 + (0, 2) and xc.reductions == (1, 2, 11, 12)
    for g in (r18, r50, xc):
        assert from_dict(to_dict(g)) == g
        net = DiscreteNetwork(g, C=4, layers=len(g.cells), in_channels=1, input_size=8)
        assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("start", ["resnet18", "resnet50", "xception"])
def test_derive_before_search_is_the_handcrafted_network(start):
    s = build_searcher("dartopti", {"start": start, "C": 4, "epochs": 2}, SHAPE)
    assert s.derive() == resolve(start)
    assert architecture_distance(s.derive(), resolve(start)) == 0.0
    n_types = len(set(resolve(start).types))
    assert len(s.arch) == len(s.arch_optimizer.optimizers) == n_types  # one set of alphas per cell type
    assert {float(v) for a in s.arch for v in a.detach().unique()} == {0.0, 10.0}


def digits_batches(n_train=2, n_val=2, size=32):
    from dartboard.data.catalog import load_dataset

    splits = load_dataset("digits")
    n = (n_train + n_val) * size
    xs = torch.stack([splits.train[i][0] for i in range(n)])
    ys = torch.tensor([int(splits.train[i][1]) for i in range(n)])
    batches = [(xs[i:i + size], ys[i:i + size]) for i in range(0, n, size)]
    return batches[:n_train], batches[n_train:]


def test_warmup_then_search_moves_away_from_resnet18():
    torch.manual_seed(0)
    train, val = digits_batches()
    s = build_searcher("dartopti", {"start": "resnet18", "C": 4, "epochs": 4, "warmup_epochs": 1,
                                    "arch_lr": 0.5, "early_stop": False}, SHAPE)
    start_alphas = [a.detach().clone() for a in s.arch]
    run_search(s, train, val, epochs=1)  # warm-up: weights only
    assert all(torch.equal(a, b) for a, b in zip(s.arch, start_alphas, strict=False))
    assert s.history[-1]["metrics"]["arch_steps"] == 0
    history = run_search(s, train, val, epochs=4, start_epoch=1)
    moved = architecture_distance(s.derive(), resolve("resnet18"))
    assert moved > 0 and history[-1]["distance_to_start"] == pytest.approx(moved)  # Eq 4.8 to the start


def test_early_stop_when_the_distance_stays_flat():
    train, val = digits_batches(n_train=1, n_val=1, size=8)
    s = build_searcher("dartopti", {"start": "resnet18", "C": 4, "epochs": 20, "warmup_epochs": 1, "arch_lr": 0.0,
                                    "stop_min_epoch": 4, "stop_patience": 2}, SHAPE)
    history = run_search(s, train, val, epochs=20)
    # alphas frozen (lr 0): flat from the first searched epoch (2), streak 2 after epoch 3, min epoch 4
    assert s.stop_requested and len(history) == 4
    assert history[-1]["distance_step"] == 0.0 and history[-1]["distance_to_start"] == 0.0


def test_bad_options():
    with pytest.raises(ValueError, match="layers"):
        build_searcher("dartopti", {"start": "resnet18", "layers": 8}, SHAPE)
    with pytest.raises(ValueError, match="start"):
        build_searcher("dartopti", {"start": "darts-v1"}, SHAPE)


def test_a_step_counts_as_flat_only_under_the_tolerance(monkeypatch):
    """Thesis 4.2.4: stop once M between consecutive architectures stays under 1e-3 for `patience` epochs; a step
    of exactly the tolerance is not flat and ends the streak."""
    from types import SimpleNamespace

    from dartboard.searchers.parts import hooks

    steps = iter([5e-4, 1e-3, 9.9e-4, 5e-4])
    monkeypatch.setattr(hooks, "architecture_distance", lambda a, b: next(steps))
    stop = hooks.DistanceStop(patience=2, min_epoch=0)
    assert stop.tolerance == 1e-3
    stopped = []
    ctx = SimpleNamespace(derive=lambda: object(), start=None, epoch=0, warmup_epochs=0,
                          request_stop=lambda: stopped.append(ctx.epoch))
    flat = []
    for epoch in range(1, 6):
        ctx.epoch = epoch
        flat.append(stop.end_epoch(ctx)["flat_epochs"])
    assert flat == [0, 1, 0, 1, 2] and stopped == [5]
