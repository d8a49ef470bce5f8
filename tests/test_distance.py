"""Distance metric M (thesis 4.1.5): Algorithm 3, Hausdorff (Eq 4.6-4.7), M (Eq 4.8)."""

import random
from pathlib import Path

import pytest

from dartboard.spaces.catalog import resolve
from dartboard.spaces.distance import (
    OP_WEIGHTS,
    architecture_distance,
    cell_distance,
    distance_matrix,
    edge_distance,
    hausdorff,
)
from dartboard.spaces.genotype import CellGenotype, CellsGenotype, Edge
from dartboard.spaces.ops import DARTOPTI_PRIMITIVES


def cell(*edges):
    edges = tuple(Edge(op, s, d) for op, s, d in edges)
    return CellGenotype(edges, tuple(sorted({e.dst for e in edges})))


def test_edge_distance_algorithm_3_by_hand():
    # differ at indices 0 and 2: (0.5 + 0.3) / 3
    assert edge_distance([1, 0, 0], [0, 0, 1], [0.5, 0.2, 0.3]) == pytest.approx(0.8 / 3)
    assert edge_distance([1, 1, 0], [1, 1, 0], [0.5, 0.2, 0.3]) == 0.0


def test_table_4_1_weights():
    assert len(OP_WEIGHTS) == 12 and set(OP_WEIGHTS) == set(DARTOPTI_PRIMITIVES)
    assert OP_WEIGHTS["sep_conv_5x5"] == pytest.approx(0.8487)
    assert OP_WEIGHTS["skip_connect"] == pytest.approx(0.8215)


def test_hausdorff_by_hand():
    w = [1.0, 2.0, 3.0]
    xs, ys = [(1, 0, 0)], [(1, 0, 0), (0, 0, 1)]
    # sup_x d(x, Y) = 0; sup_y d(X, y) = d((0,0,1), (1,0,0)) = (1 + 3) / 3
    assert hausdorff(xs, ys, w) == pytest.approx(4 / 3)
    assert hausdorff(ys, xs, w) == pytest.approx(4 / 3)


def test_cell_distance_by_hand():
    a = cell(("skip_connect", 0, 2), ("sep_conv_3x3", 1, 2))
    b = cell(("skip_connect", 0, 2), ("sep_conv_5x5", 1, 2))
    # A->B: max(0, min(d(sep3, skip), d(sep3, sep5))) = (83.19 + 82.15) / 1200
    # B->A: min(d(sep5, skip), d(sep5, sep3)) = (84.87 + 82.15) / 1200 -> the max
    assert cell_distance(a, b) == pytest.approx((0.8487 + 0.8215) / 12)
    assert cell_distance(a, a) == 0.0


def test_architecture_distance_is_the_mean_over_cells():
    a = cell(("skip_connect", 0, 2))
    b = cell(("max_pool_3x3", 0, 2))
    g1 = CellsGenotype((a, a, a), (1,))
    g2 = CellsGenotype((a, b, a), (1,))
    d = (0.8215 + 0.8296) / 12
    assert architecture_distance(g1, g2) == pytest.approx(d / 3)
    with pytest.raises(ValueError, match="cells"):
        architecture_distance(g1, CellsGenotype((a, a), ()))
    with pytest.raises(ValueError, match="none"):
        cell_distance(cell(("none", 0, 2)), a)


def random_genotype(rng: random.Random, n_cells: int = 3) -> CellsGenotype:
    cells = []
    for _ in range(n_cells):
        edges = []
        for node in range(2, 2 + rng.randint(1, 4)):
            for src in rng.sample(range(node), k=min(node, rng.randint(1, 2))):
                for op in rng.sample(DARTOPTI_PRIMITIVES, k=rng.randint(1, 2)):
                    edges.append((op, src, node))
        cells.append(cell(*edges))
    return CellsGenotype(tuple(cells), (1,))


def test_metric_properties_on_random_genotypes():
    rng = random.Random(0)
    gs = [random_genotype(rng) for _ in range(12)]
    m = distance_matrix(gs)
    for i in range(len(gs)):
        assert architecture_distance(gs[i], gs[i]) == 0.0
        for j in range(len(gs)):
            assert m[i][j] == pytest.approx(m[j][i])
            assert m[i][j] == pytest.approx(architecture_distance(gs[i], gs[j]))
            for k in range(len(gs)):
                assert m[i][j] <= m[i][k] + m[k][j] + 1e-12
    assert any(v > 0 for row in m for v in row)


def test_handcrafted_and_darts_genotypes():
    r18, v1, v2 = resolve("resnet18"), resolve("darts-v1"), resolve("darts-v2")
    assert architecture_distance(r18, r18) == 0.0
    assert architecture_distance(v1, v2) > 0
    assert architecture_distance(v1, r18) == pytest.approx(architecture_distance(r18, v1))


def test_distance_command_prints_matrix_and_draws_heatmap(tmp_path, capsys):
    from dartboard.platform.cli.distance import distance

    out = tmp_path / "m.png"
    distance(["resnet18", "resnet18", "darts-v1"], out=out)
    text = capsys.readouterr().out
    assert "resnet18" in text and "0.0000" in text and out.stat().st_size > 0
    with pytest.raises(ValueError, match="at least two"):
        distance(["resnet18"], out=None)


def _write(folder, name, genotype):
    import json

    path = folder / name
    path.write_text(json.dumps({"schema": "dartboard.genotype", "version": 1, **genotype}))
    return str(path)


def test_what_m_cannot_compare_is_refused_naming_the_genotype(tmp_path):
    from dartboard.spaces.genotype import GenotypeError

    v2, r50, x = resolve("darts-v2"), resolve("resnet50"), resolve("xception")  # resnet50: 4 cells; xception: 13
    with pytest.raises(GenotypeError, match="genotypes 'r50' and 'x' have 4 and 13 cells"):
        distance_matrix([v2, x, r50], names=["v2", "x", "r50"])
    with pytest.raises(GenotypeError, match="genotype 'flux' is of kind 'flux_mlp'"):
        distance_matrix([v2, resolve("pmsm-thesis")], names=["v2", "flux"])
    noise = CellsGenotype((cell(("noise", 0, 2), ("sep_conv_3x3", 1, 2)),), ())  # an R-DARTS S4 op
    with pytest.raises(GenotypeError, match="genotype '#2': op 'noise' has no distance weight"):
        distance_matrix([v2, noise])


@pytest.mark.parametrize("args, message", [
    (["nasiam", "darts-v1"], "genotype 'heads.json' is of kind 'mlp'; M (thesis Eq 4.8) compares cell genotypes"),
    (["darts-v1", "xception", "resnet50"], "genotypes 'resnet50' and 'xception' have 4 and 13 cells: M compares"),
    (["s4", "darts-v1"], "genotype 's4.json': op 'noise' has no distance weight (thesis Table 4.1)"),
], ids=["mlp", "cell-counts", "op-without-weight"])
def test_the_distance_command_refuses_in_one_line(args, message, tmp_path, capsys, monkeypatch):
    from test_cli_bad_input import refused, refused_here

    files = {"nasiam": _write(tmp_path, "heads.json", {"kind": "mlp", "chains": {"projector": ["linear_relu"],
                                                                                  "predictor": ["identity"]},
                                                        "meta": {"space": "nasiam-mlp", "dim": 8}}),
             "s4": _write(tmp_path, "s4.json", {"kind": "darts", "normal": {"edges": [["noise", 0, 2]], "concat": [2]},
                                                "reduce": {"edges": [["max_pool_3x3", 0, 2]], "concat": [2]}})}
    args = ["distance", *(Path(files[a]).name if a in files else a for a in args)]
    line = refused_here(args, tmp_path, capsys, monkeypatch)
    assert message in line
    if args[1] == "heads.json":  # once through the installed console script too
        assert refused(args, tmp_path) == line


def test_a_colornas_genotype_is_compared_by_its_channels_cells(tmp_path, capsys):
    """One row per colour channel (NAME/R, ...): M between the cells of each channel's network, the same value as
    M between those cell genotypes given as files; a ColorNAS genotype alone compares its channels."""
    from dartboard.platform.cli.distance import distance
    from dartboard.spaces import genotype as gt
    from dartboard.spaces.colour_genotype import ColourGenotype

    v1, v2 = resolve("darts-v1"), resolve("darts-v2")
    gt.save(ColourGenotype("rb", (v1, v2), (16,)), tmp_path / "rb.json")
    gt.save(v2, tmp_path / "v2.json")
    distance([str(tmp_path / "rb.json"), str(tmp_path / "v2.json")], out=None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rb/R", "rb/B", "v2"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:]}
    expected = architecture_distance(v1, v2)
    assert expected > 0 and rows["rb/R"] == pytest.approx([0.0, expected, expected], abs=5e-5)
    assert rows["rb/B"] == pytest.approx([expected, 0.0, 0.0], abs=5e-5) and rows["v2"] == rows["rb/B"]
    distance([str(tmp_path / "rb.json")], out=None)  # its channels against one another
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["rb/R", "rb/B"]
