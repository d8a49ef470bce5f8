"""tiny81: the space, its 1:1 map from derived genotypes to table keys, and the shipped table."""

from __future__ import annotations

import itertools

import pytest
import torch

from dartboard.bench.table import TableProtocol, fit_val_split, load_table, train_entry
from dartboard.data.catalog import load_dataset
from dartboard.searchers.discretize import darts_parse
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.catalog import get_space
from dartboard.spaces.genotype import CellGenotype, CellsGenotype, DartsGenotype, Edge
from dartboard.spaces.tiny import (
    TINY81_OPS,
    TINY81_SEARCH_OPTIONS,
    enumerate_ops,
    genotype_key,
    genotype_of_ops,
    n_architectures,
    ops_key,
)


def test_space_is_registered_with_2_edges_of_3_ops_and_no_none():
    space = get_space("tiny81")
    assert space.steps == 1 and len(space.normal) == 2 and len(space.reduce) == 2
    assert all(tuple(p) == TINY81_OPS for p in space.normal + space.reduce)
    assert "none" not in TINY81_OPS and n_architectures() == 81


def test_enumeration_is_81_distinct_members_and_keys_round_trip():
    all_ops = enumerate_ops()
    assert len(all_ops) == 81 and len({ops_key(o) for o in all_ops}) == 81
    for ops in all_ops:
        assert genotype_key(genotype_of_ops(ops)) == ops_key(ops)


def test_every_darts_parse_outcome_is_exactly_one_member():
    """Weights peaked on (a, b) per cell parse to the member (a, b): the parse is onto and 1:1."""
    edges = [(0, 2), (1, 2)]
    prims = [TINY81_OPS, TINY81_OPS]
    for ops in enumerate_ops():
        cells = []
        for pair in (ops[:2], ops[2:]):
            w = torch.full((2, 3), 0.1)
            for e, op in enumerate(pair):
                w[e, TINY81_OPS.index(op)] = 0.8
            cells.append(darts_parse(w, edges, prims))
        assert genotype_key(DartsGenotype(*cells)) == ops_key(ops)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # arbitrary weights also land in the table
        cells = [darts_parse(torch.rand(2, 3, generator=g), edges, prims) for _ in range(2)]
        assert genotype_key(DartsGenotype(*cells)) is not None


def test_per_cell_genotypes_map_and_non_members_are_refused():
    g = genotype_of_ops(["sep_conv_3x3", "skip_connect", "max_pool_3x3", "sep_conv_3x3"])
    key = "sep_conv_3x3,skip_connect|max_pool_3x3,sep_conv_3x3"
    assert genotype_key(CellsGenotype((g.normal, g.reduce), (1,))) == key
    one_edge = CellGenotype((Edge("sep_conv_3x3", 0, 2),), (2,))  # a threshold parse dropped an edge
    assert genotype_key(DartsGenotype(one_edge, g.reduce)) is None
    assert genotype_key(CellsGenotype((g.normal, g.reduce, g.reduce), (1, 2))) is None
    other_op = CellGenotype((Edge("dil_conv_3x3", 0, 2), Edge("skip_connect", 1, 2)), (2,))
    assert genotype_key(DartsGenotype(other_op, g.reduce)) is None
    with pytest.raises(ValueError, match="ops: expected 4 ops"):
        genotype_of_ops(["sep_conv_3x3"] * 3)


def test_reductions_option_is_additive():
    default = build_searcher("darts", {"C": 4, "layers": 5, "steps": 1, "multiplier": 1, "space": "tiny81"},
                             DataShape(1, 8, 10))
    assert default.space_info["reductions"] == (1, 3)
    s = build_searcher("darts", {**TINY81_SEARCH_OPTIONS, "C": 4, "epochs": 1}, DataShape(1, 8, 10))
    assert s.space_info["reductions"] == (1,) and [c.reduction for c in s.supernet.network.cells] == [False, True]


def test_darts_searches_tiny81_and_derives_a_member():
    torch.manual_seed(0)
    s = build_searcher("darts", {**TINY81_SEARCH_OPTIONS, "C": 4, "epochs": 1, "arch_lr": 0.05},
                       DataShape(1, 8, 10))
    before = [a.detach().clone() for a in s.arch.parameters()]
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        s.step((x, y), (x, y))
    s.end_epoch()
    assert any(not torch.equal(a, b) for a, b in zip(s.arch.parameters(), before, strict=True))
    assert genotype_key(s.derive()) is not None


# ---------------------------------------------------------------- the shipped table
@pytest.fixture(scope="module")
def table():
    return load_table()


def test_shipped_table_is_complete_and_records_protocol_and_command(table):
    assert len(table.entries) == 81 and table.meta["complete"]
    assert table.meta["command"].startswith("dartboard bench build-table")
    assert len(table.protocol["seeds"]) >= 3
    TableProtocol(**table.protocol)  # the recorded protocol is a valid protocol
    for e in table.entries.values():
        assert len(e["test_acc"]) == len(table.protocol["seeds"]) and e["parameters"] > 0 and e["train_seconds"] > 0
        assert abs(e["test_mean"] - sum(e["test_acc"]) / len(e["test_acc"])) < 1e-12


def test_table_is_not_degenerate(table):
    """Best and worst differ by well more than the seed spread; seeds rank alike (Spearman reported)."""
    stats = table.meta["statistics"]
    gap = stats["best_test_mean"] - stats["worst_test_mean"]
    assert gap > 3 * stats["mean_seed_std_test"], stats
    correlations = stats["spearman_between_seeds_test"]
    assert len(correlations) >= 3 and all(rho > 0.2 for rho in correlations.values()), correlations
    assert stats["spearman_val_vs_test"] > 0.5, stats


def test_table_reproduces_two_entries_with_the_recorded_protocol(table):
    """Retrain 2 cheap entries with seed 0: inside the recorded spread (mean +- 3 std + one test sample)."""
    protocol = TableProtocol(**table.protocol)
    splits = load_dataset(protocol.dataset)
    one_sample = 1 / len(splits.test)
    torch.set_num_threads(protocol.threads)
    for ops in (("max_pool_3x3",) * 4, ("skip_connect", "max_pool_3x3", "skip_connect", "max_pool_3x3")):
        entry = table.entries[ops_key(ops)]
        seed_index = entry["seeds"].index(protocol.seeds[0])
        run = train_entry(genotype_of_ops(ops), splits, protocol, protocol.seeds[0])
        assert abs(run.test_acc - entry["test_mean"]) <= 3 * entry["test_std"] + one_sample, (run, entry)
        assert abs(run.val_acc - entry["val_mean"]) <= 3 * entry["val_std"] + one_sample, (run, entry)
        assert run.parameters == entry["parameters"]
        # On the machine that built the table the run is bit-identical; elsewhere close.
        assert abs(run.test_acc - entry["test_acc"][seed_index]) <= 0.05


def test_fit_val_split_is_fixed_and_disjoint():
    splits = load_dataset("digits")
    fit, val = fit_val_split(splits, TableProtocol())
    fit2, _ = fit_val_split(splits, TableProtocol(seeds=(5,)))
    assert fit.indices == fit2.indices and not set(fit.indices) & set(val.indices)
    assert len(val) == round(0.2 * len(splits.train))


def test_protocol_rejects_bad_values():
    with pytest.raises(ValueError, match="val_fraction"):
        TableProtocol(val_fraction=1.5)
    with pytest.raises(ValueError, match="epochs"):
        TableProtocol(epochs=0)


def test_ops_product_order_matches_itertools():
    assert enumerate_ops() == list(itertools.product(TINY81_OPS, repeat=4))
