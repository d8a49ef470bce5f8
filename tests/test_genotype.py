import json

import pytest

from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import GENOTYPES, home_folder, resolve


def test_darts_v2_pairs_map_to_steps():
    g = GENOTYPES["darts-v2"]()
    edges = g.normal.edges
    # entries 2k and 2k+1 are the two inputs of step k (node k+2)
    assert [e.dst for e in edges] == [2, 2, 3, 3, 4, 4, 5, 5]
    assert edges[7] == gt.Edge("dil_conv_3x3", 2, 5)
    assert g.reduce.edges[3] == gt.Edge("max_pool_3x3", 1, 3)
    assert g.normal.concat == (2, 3, 4, 5)


@pytest.mark.parametrize("name", ["darts-v1", "darts-v2"])
def test_round_trip(name, tmp_path):
    g = GENOTYPES[name]()
    path = gt.save(g, tmp_path / "g.json")
    assert gt.load(path) == g
    assert json.loads(path.read_text())["version"] == gt.VERSION


def test_cells_mlp_gates_round_trip():
    cell = gt.CellGenotype.from_pairs([("skip_connect", 0), ("sep_conv_3x3", 1)], concat=(2,))
    cells = gt.CellsGenotype((cell, cell, cell), reductions=(1,), types=(0, 1, 0))
    mlp = gt.MlpGenotype({"projector": ("linear_relu", "identity")}, {"framework": "simsiam"})
    gates = gt.GateGenotype("vit_tiny", (0, 2), {0: (1, 2), 2: (0,)}, n_blocks=3, n_heads=3)
    for g in (cells, mlp, gates):
        assert gt.loads(gt.dumps(g)) == g


def _base():
    return gt.to_dict(GENOTYPES["darts-v2"]())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["normal"]["edges"][3].__setitem__(0, "sep_conv_9x9"),
         "normal.edges[3].op: unknown op 'sep_conv_9x9'"),
        (lambda d: d["reduce"]["edges"][2].__setitem__(1, 4), "reduce.edges[2]: edge 4->3 goes into an earlier node"),
        (lambda d: d["normal"].pop("concat"), "normal.concat: missing field"),
        (lambda d: d.pop("reduce"), "reduce: missing field"),
        (lambda d: d.__setitem__("version", 99), "version: unknown version 99"),
        (lambda d: d.__setitem__("kind", "graph"), "kind: unknown genotype kind 'graph'"),
        (lambda d: d["normal"]["edges"][0].__setitem__(2, 1), "normal.edges[0].dst: node 1 is a cell input"),
        (lambda d: d["normal"]["edges"][0].__setitem__(1, "zero"), "normal.edges[0].src: expected an integer"),
    ],
)
def test_validation_names_the_field(mutate, message):
    data = _base()
    mutate(data)
    with pytest.raises(gt.GenotypeError) as err:
        gt.from_dict(data)
    assert message in str(err.value)


def test_never_evals_python(tmp_path):
    bad = tmp_path / "g.txt"
    bad.write_text("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=range(2, 6))")
    with pytest.raises(gt.GenotypeError, match="not valid JSON"):
        gt.load(bad)


def test_resolve_name_or_path(tmp_path):
    assert resolve("darts-v1") == GENOTYPES["darts-v1"]()
    p = gt.save(GENOTYPES["darts-v2"](), tmp_path / "x.json")
    assert resolve(str(p)) == GENOTYPES["darts-v2"]()
    with pytest.raises(gt.GenotypeError, match="neither a file nor a catalog name"):
        resolve("darts-v9")


def test_a_folder_holding_genotype_json_resolves_to_it(tmp_path):
    """A search's output folder names its genotype; outputs made from it go into that folder."""
    run = tmp_path / "search-out"
    gt.save(GENOTYPES["darts-v1"](), run / gt.GENOTYPE_FILE)
    assert resolve(run) == GENOTYPES["darts-v1"]() and resolve(f"{run}/") == GENOTYPES["darts-v1"]()
    assert home_folder(run) == run and home_folder(run / gt.GENOTYPE_FILE) == run
    assert home_folder("darts-v1") is None and home_folder(tmp_path / "nothing") is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(gt.GenotypeError, match=r"'.*empty' is a folder without genotype\.json"):
        resolve(tmp_path / "empty")
