"""Pictures people can read: the alpha history (winning op per edge, the genotype's choice), cell
pictures whose op labels overlap neither each other nor the nodes and whose nodes carry the
genotype's numbers, tied ablation variants kept visible, distance heatmap rows named apart."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dartboard.platform.cli.distance import genotype_labels
from dartboard.platform.reports.alphas import chosen_edges, plot_alpha_history, winners
from dartboard.platform.reports.figures import cell_dot, cell_figure
from dartboard.platform.reports.plots import dodge_ties
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve

pytest.importorskip("matplotlib")

# a dense cell: every intermediate node fed by both inputs and the nodes right before it
DENSE = gt.CellGenotype.from_pairs([("sep_conv_5x5", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
                                    ("sep_conv_3x3", 1), ("sep_conv_3x3", 2), ("max_pool_3x3", 2), ("dil_conv_5x5", 4)])


def test_winners_are_the_argmax_and_the_lead_over_the_runner_up():
    prims = [["a", "b", "c"], ["a", "b", "c"]]
    weights = [[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], [[0.2, 0.7, 0.1], [0.34, 0.33, 0.33]]]
    ops, leads = winners(weights, prims)
    assert ops == [["a", "b"], ["c", "a"]]
    assert leads.ravel().tolist() == pytest.approx([0.2, 0.5, 0.7, 0.01])  # [row][epoch]


def test_chosen_edges_follow_the_groups():
    darts = resolve("darts-v2")
    normal, reduce = chosen_edges(darts, ["normal", "reduce"])
    assert normal == {(e.src, e.dst, e.op) for e in darts.normal.edges}
    assert reduce == {(e.src, e.dst, e.op) for e in darts.reduce.edges}
    cells = gt.CellsGenotype((darts.normal, darts.reduce, DENSE), reductions=(1,))
    assert chosen_edges(cells, ["cell_0", "cell_2", "other"]) == [normal, {(e.src, e.dst, e.op) for e in DENSE.edges},
                                                                  None]


def _boxes(fig, prefix):
    renderer = fig.canvas.get_renderer()
    return {t.get_gid(): t.get_window_extent(renderer).expanded(1.0, 1.0)
            for t in fig.axes[0].texts if (t.get_gid() or "").startswith(prefix)}


@pytest.mark.parametrize("cell", [resolve("darts-v2").normal, resolve("darts-v2").reduce, DENSE,
                                  resolve("darts-v1").normal], ids=["v2-normal", "v2-reduce", "dense", "v1-normal"])
def test_cell_picture_labels_overlap_neither_labels_nor_nodes(cell):
    import matplotlib.pyplot as plt

    fig = cell_figure(cell, "cell")
    fig.canvas.draw()
    labels, nodes = _boxes(fig, "op "), _boxes(fig, "node ")
    try:
        assert set(labels) == {f"op {e.src}->{e.dst}" for e in cell.edges}
        assert set(nodes) == {f"node {n}" for n in range(2 + cell.n_nodes)}  # the genotype's numbers, 0..n
        for (a, box_a), (b, box_b) in itertools.combinations(labels.items(), 2):
            assert not box_a.overlaps(box_b), f"{a} and {b} overlap"
        for (a, box_a), (b, box_b) in itertools.product(labels.items(), nodes.items()):
            assert not box_a.overlaps(box_b), f"{a} overlaps {b}"
    finally:
        plt.close(fig)


def test_graphviz_source_uses_the_genotype_node_numbers():
    dot = cell_dot(DENSE, "normal")
    assert 'in0 [label="0: c_{k-2}"' in dot and 'in1 [label="1: c_{k-1}"' in dot
    assert 'n5 [label="5"' in dot and "n4 -> n5" in dot and 'label="dil_conv_5x5"' in dot


def test_alpha_history_picture_is_written(tmp_path):
    prims = [["none", "skip_connect", "sep_conv_3x3"]] * 2
    rows = [(0, 2), (1, 2)]
    history = [{"epoch": i + 1, "weights": [[[0.3, 0.3 + 0.05 * i, 0.4 - 0.05 * i], [0.2, 0.3, 0.5]]]}
               for i in range(4)]
    path = plot_alpha_history(history, [prims], rows, tmp_path / "a.png", ["normal"],
                              [{(0, 2, "skip_connect"), (1, 2, "sep_conv_3x3")}])
    assert path.stat().st_size > 5000


def test_tied_points_are_set_apart_around_their_value():
    points = {"A": [(100.0, 3.0), (200.0, 2.0)], "B": [(100.0, 3.0)], "C": [(150.0, 2.5)]}
    shown = dodge_ties(points, fraction=0.1)
    assert shown["C"] == points["C"] and shown["A"][1] == points["A"][1]
    (xa, ya), (xb, yb) = shown["A"][0], shown["B"][0]
    assert ya == yb == 3.0 and xa != xb and (xa + xb) / 2 == pytest.approx(100.0)
    assert abs(xa - xb) == pytest.approx(0.1 * 100)


def test_distance_rows_are_named_apart():
    files = [str(Path("runs/a/genotype.json")), str(Path("runs/b/genotype.json")), "darts-v2",
             str(Path("x/best.json"))]
    assert genotype_labels(files) == ["a/genotype.json", "b/genotype.json", "darts-v2", "best"]
