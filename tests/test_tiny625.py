"""tiny625 (issue 19): the larger exhaustive table's space, its builder on a few members (the full build
is not run here) and its informativeness statistics against hand-computed values."""

from __future__ import annotations

import json

import pytest
import torch

from dartboard.bench.table import TableProtocol, build_table, load_table, random_k_regret, separable_pairs
from dartboard.searchers.discretize import darts_parse
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.catalog import get_space
from dartboard.spaces.genotype import DartsGenotype
from dartboard.spaces.tiny import TINY625_NAME, TINY625_OPS, TINY_SPACES, ops_key

TINY625 = TINY_SPACES[TINY625_NAME]


def test_space_has_625_members_without_none_and_every_parse_is_one():
    space = get_space(TINY625_NAME)
    assert space.steps == 1 and all(tuple(p) == TINY625_OPS for p in space.normal + space.reduce)
    assert "none" not in TINY625_OPS and TINY625.size == 625
    members = TINY625.enumerate_ops()
    assert len({ops_key(o) for o in members}) == 625
    assert all(TINY625.genotype_key(TINY625.genotype_of_ops(o)) == ops_key(o) for o in members[::37])
    g = torch.Generator().manual_seed(0)
    edges, prims = [(0, 2), (1, 2)], [TINY625_OPS, TINY625_OPS]
    for _ in range(30):  # arbitrary mixing weights parse to a member
        cells = [darts_parse(torch.rand(2, 5, generator=g), edges, prims) for _ in range(2)]
        assert TINY625.genotype_key(DartsGenotype(*cells)) is not None
    assert TINY_SPACES["tiny81"].genotype_key(TINY625.genotype_of_ops(members[1])) is None  # avg_pool: not tiny81


def test_a_searcher_searches_tiny625_and_derives_a_member():
    torch.manual_seed(0)
    s = build_searcher("gdas", {**TINY625.search_options, "C": 4, "epochs": 1}, DataShape(1, 8, 10))
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    s.step((x, y), (x, y))
    assert TINY625.genotype_key(s.derive()) is not None


def test_builder_trains_a_few_members_and_records_statistics(tmp_path):
    keys = [ops_key(o) for o in TINY625.enumerate_ops()[:3]]
    protocol = TableProtocol(epochs=1, channels=4, seeds=(0, 1))
    out = tmp_path / "tiny625.json"
    table = build_table(protocol, out, command="test", keys=keys, space=TINY625_NAME)
    data = json.loads(out.read_text())
    assert data["space"] == TINY625_NAME and data["ops"] == list(TINY625_OPS) and not data["complete"]
    assert [e["key"] for e in data["entries"]] == keys and all(len(e["test_acc"]) == 2 for e in data["entries"])
    stats = data["statistics"]
    assert set(stats) >= {"separable_pairs", "random_search_regret", "spearman_between_seeds_test"}
    assert set(stats["random_search_regret"]) == {"1"}  # k < 3 members only
    loaded = load_table(out)
    member = TINY625.genotype_of_ops(TINY625.enumerate_ops()[1])
    assert loaded.entry(member)["key"] == keys[1] and loaded.rank(member) >= 1
    assert table.regret(keys[0]) == pytest.approx(loaded.best_test - data["entries"][0]["test_mean"])


def test_informativeness_statistics_hand_values():
    entries = [{"test_mean": 0.9, "test_std": 0.01, "val_mean": 0.9}, {"test_mean": 0.8, "test_std": 0.2,
                                                                        "val_mean": 0.8},
               {"test_mean": 0.5, "test_std": 0.01, "val_mean": 0.5}]
    # pairs: 0.1 < 0.21 (overlap), 0.4 > 0.02, 0.3 > 0.21 -> 2 of 3 separable
    assert separable_pairs(entries) == pytest.approx(2 / 3)
    assert random_k_regret(entries, 3) == 0.0  # every member trained: the best on validation is the best
    assert random_k_regret(entries, 1) == pytest.approx((0.0 + 0.1 + 0.4) / 3, abs=0.02)


def test_the_quality_benchmark_searches_and_scores_in_the_tables_own_space(tmp_path):
    """A tiny625 table gives tiny625 search options and is looked up with tiny625's ops: a derived
    architecture with dil_conv_3x3 / avg_pool_3x3 (not tiny81 members) gets its row's regret and rank."""
    from dartboard.bench.quality import QualityConfig, curve_from_trial, trial_options
    from dartboard.spaces import genotype as gt

    members = TINY625.enumerate_ops()
    keys = [ops_key(o) for o in (members[1], members[7])]  # ...avg_pool_3x3, ...dil_conv_3x3
    out = tmp_path / "tiny625.json"
    build_table(TableProtocol(epochs=1, channels=4, seeds=(0,)), out, command="test", keys=keys, space=TINY625_NAME)
    table = load_table(out)
    cfg = QualityConfig(searchers=["darts"], seeds=[0], epochs=2, table=str(out))
    assert trial_options("darts", cfg, table.space)["space"] == TINY625_NAME
    assert trial_options("darts", cfg)["space"] == "tiny81"
    genotypes = [gt.to_dict(TINY625.genotype_of_ops(members[i])) for i in (1, 7)]
    curve = curve_from_trial(table, genotypes, [{"search_seconds": 1.0}, {"search_seconds": 2.0}])
    assert [c["key"] for c in curve] == keys
    for c in curve:
        assert c["tiny81_on_table"] and c["tiny81_regret"] == pytest.approx(table.regret(c["key"]))
        assert c["tiny81_rank"] == table.rank(c["key"])
