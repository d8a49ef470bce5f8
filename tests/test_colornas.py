"""ColorNAS (thesis appendix A): colour models against hand-computed pixels, the colour-digits data,
the colornas space on the one engine (groups per channel, meta-learner input, gradients per channel,
direction of the search), its genotype kind, the final network and the bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dartboard.data.catalog import load_dataset
from dartboard.data.colour_digits import INK, INKS, NOISE
from dartboard.searchers.base import seed_everything
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces import genotype as gt
from dartboard.spaces.colour import ColourModel, rgb_to_rb, rgb_to_rgby
from dartboard.spaces.colour_genotype import ColourGenotype

RGB = DataShape(3, 8, 10)
TINY = {"C": 2, "layers": 3, "epochs": 2}
#: Each channel's cells from the tiny81 space (1 node, 2 edges, 3 ops): the same code, a fraction of the cost.
FAST = {**TINY, "space_options.cell_space": "tiny81", "steps": 1, "multiplier": 1}


# ----------------------------------------------------------------------------- colour models
def _image() -> torch.Tensor:
    """One 3 x 1 x 3 RGB image: pixels (R, G, B) = (0.2, 0.5, 0.3), (0.9, 0.1, 0.7), (0.6, 0.6, 0.0)."""
    return torch.tensor([[[0.2, 0.9, 0.6]], [[0.5, 0.1, 0.6]], [[0.3, 0.7, 0.0]]])


def test_algorithm6_rb_deletes_channel_1():
    out = rgb_to_rb(_image())
    assert out.shape == (2, 1, 3)
    assert torch.equal(out, torch.tensor([[[0.2, 0.9, 0.6]], [[0.3, 0.7, 0.0]]]))


def test_algorithm7_printed_and_min_yellow_by_hand():
    # pixel 1: min(R, G) = 0.2 -> R' = 0, G' = 0.3; printed Y = R' + G' = 0.3 = |R - G|; min Y = 0.2
    # pixel 2: min = 0.1 -> R' = 0.8, G' = 0; printed Y = 0.8; min Y = 0.1
    # pixel 3 (yellow, R = G = 0.6): R' = G' = 0; printed Y = 0 (the yellow vanishes); min Y = 0.6
    printed = rgb_to_rgby(_image())
    expected = torch.tensor([[[0.0, 0.8, 0.0]], [[0.3, 0.0, 0.0]], [[0.3, 0.7, 0.0]], [[0.3, 0.8, 0.0]]])
    assert printed.shape == (4, 1, 3)
    assert torch.allclose(printed, expected, atol=1e-6)
    minimum = rgb_to_rgby(_image(), yellow="min")
    assert torch.allclose(minimum[:3], expected[:3], atol=1e-6)  # R', G', B do not depend on the yellow form
    assert torch.allclose(minimum[3], torch.tensor([[0.2, 0.1, 0.6]]), atol=1e-6)


def test_colour_models_take_batches_and_refuse_non_rgb():
    batch = torch.stack([_image(), 1.0 - _image()])
    assert torch.equal(ColourModel("rgby")(batch)[1], rgb_to_rgby(1.0 - _image()))
    assert torch.equal(ColourModel("rgb")(batch), batch)
    assert ColourModel("rb")(batch).shape == (2, 2, 1, 3)
    with pytest.raises(ValueError, match=r"colour model 'rgby': expected RGB images .* got shape \[1, 8, 8\]"):
        rgb_to_rgby(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="colour_model: unknown colour model 'cmyk'"):
        ColourModel("cmyk")
    with pytest.raises(ValueError, match="yellow: expected one of printed, min, got 'max'"):
        ColourModel("rgby", yellow="max")


# ----------------------------------------------------------------------------- the colour data
def test_colour_digits_is_deterministic_and_colour_carries_the_class():
    a, b = load_dataset("colour-digits"), load_dataset("colour-digits")
    digits = load_dataset("digits")
    assert a.info.in_channels == 3 and a.info.input_size == 8 and len(a.train) == len(digits.train)
    x = torch.stack([a.train[i][0] for i in range(len(a.train))])
    y = torch.stack([a.train[i][1] for i in range(len(a.train))])
    assert torch.equal(x, torch.stack([b.train[i][0] for i in range(len(b.train))]))
    assert torch.equal(y, torch.stack([digits.train[i][1] for i in range(len(digits.train))]))  # same split
    for label in range(10):
        ink = INKS[label % 4]
        peak = x[y == label].amax(dim=(0, 2, 3))  # per channel, over the class's images
        for c in range(3):
            assert (peak[c] > NOISE + 0.5 * INK) == bool(ink[c]), (label, c)  # the digit only in its ink's channels
    green, yellow = x[y == 1], x[y == 3]
    assert float(rgb_to_rb(green).max()) <= NOISE  # RB: a green digit is noise only
    assert float(rgb_to_rgby(yellow).max()) <= NOISE  # printed RGBY: a yellow digit is noise only
    assert float(rgb_to_rgby(yellow, "min")[:, 3].max()) > NOISE + 0.5 * INK  # Y = min(R, G) keeps it


# ----------------------------------------------------------------------------- the space on the engine
def test_every_channel_has_its_own_normal_and_reduce_alphas():
    s = build_searcher("colornas-rgby", TINY, RGB)
    names = [g.name for g in s.alpha_groups()]
    assert names == [f"{ch}_{k}" for ch in "RGBY" for k in ("normal", "reduce")]
    assert len(s.arch_parameters()) == 8  # 2|C| sets of alphas (thesis A.2.1)
    assert s.supernet.cells_of(names.index("G_reduce")) == [4, 5]  # G's cells are 3..5; reductions at 1, 2
    assert all(g.primitives[0] == s.alpha_groups()[0].primitives[0] for g in s.alpha_groups())
    assert "none" not in s.alpha_groups()[0].primitives[0]  # beta-DARTS: the DARTS ops without none
    per_cell = build_searcher("colornas-rb", {**FAST, "grouping": "per_cell"}, RGB)
    assert [g.name for g in per_cell.alpha_groups()] == [f"cell_{i}" for i in range(6)]


def test_the_meta_learner_receives_exactly_the_concatenated_channel_features():
    seed_everything(0)
    s = build_searcher("colornas-rgby", {**FAST, "yellow": "min"}, RGB)
    net = s.supernet.eval()
    x = torch.rand(5, 3, 8, 8)
    seen = []
    hook = net.meta.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        gw = s.group_weights()
        logits = net(x, gw)
        channels = rgb_to_rgby(x, "min")
        per_channel = [net.channels[c](channels[:, c:c + 1], [gw[2 * c], gw[2 * c + 1]]) for c in range(4)]
    hook.remove()
    width = per_channel[0].shape[1]
    assert seen[0].shape == (5, 4 * width) and logits.shape == (5, 10)
    assert torch.equal(seen[0], torch.cat(per_channel, dim=1))


def _colour_batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("colour-digits").train
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([data[i][0] for i in idx]), torch.stack([data[i][1] for i in idx])


def test_each_channel_gets_alpha_gradients_only_from_its_own_channel():
    """Every group's alphas get a gradient of L_val on colour-digits; when the B channel is blank (all
    zero: the stem, every batch norm and every op then output 0, whatever the alphas), exactly B's
    alphas get none. Were a channel's network fed another channel, its alphas would get one."""
    seed_everything(0)
    s = build_searcher("colornas-rgb", {**FAST, "regularizers": []}, RGB)
    x, y = _colour_batch()
    grads = s.first_order_grads(x, y)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    flat = x.clone()
    flat[:, 2] = 0.0
    grads = s.first_order_grads(flat, y)
    norms = [float(g.abs().sum()) for g in grads]
    assert norms[0] > 0 and norms[2] > 0  # R_normal, G_normal
    assert norms[4] == 0.0 and norms[5] == 0.0  # B_normal, B_reduce


def test_direction_search_on_colour_digits_improves_accuracy_and_moves_every_channels_alphas():
    """Direction: on colour-digits the search's validation accuracy (the alpha steps' batches) rises
    over three short epochs, well above chance, and every channel's normal and reduce alphas move."""
    seed_everything(0)
    s = build_searcher("colornas-rgb", {**FAST, "C": 4, "epochs": 3, "arch_lr": 3e-3}, RGB)
    data = load_dataset("colour-digits").train
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(384)), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    alphas0 = [a.detach().clone() for a in s.arch_parameters()]
    accs = []
    for _ in range(3):
        batches = list(loader)
        for i in range(0, len(batches) - 1, 2):
            s.step(batches[i], batches[i + 1])
        accs.append(s.end_epoch()["val_acc"])
    assert accs[-1] > accs[0] + 0.2 and accs[-1] > 0.35, accs
    moved = [float((a.detach() - a0).abs().max()) for a, a0 in zip(s.arch_parameters(), alphas0, strict=True)]
    assert all(m > 1e-2 for m in moved), dict(zip([g.name for g in s.alpha_groups()], moved, strict=True))


# ----------------------------------------------------------------------------- genotypes
def test_genotype_round_trip_records_one_cell_pair_per_channel_and_the_meta_learner():
    s = build_searcher("colornas-rgby", {**TINY, "yellow": "min", "meta_hidden": [32, 16]}, RGB)
    geno = s.derive()
    assert isinstance(geno, ColourGenotype) and geno.colour_model == "rgby" and geno.yellow == "min"
    assert len(geno.channels) == 4 and all(isinstance(c, gt.DartsGenotype) for c in geno.channels)
    assert geno.meta_hidden == (32, 16)
    data = json.loads(gt.dumps(geno))
    assert [c["name"] for c in data["channels"]] == ["R", "G", "B", "Y"]
    assert data["meta_learner"] == {"hidden": [32, 16]}
    assert gt.loads(gt.dumps(geno)) == geno


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["channels"].pop(), r"channels: colour model 'rgby' has 4 channels \(R, G, B, Y\), got 3 channels"),
    (lambda d: d.__setitem__("colour_model", "rb"), r"channels: colour model 'rb' has 2 channels \(R, B\), got 4"),
    (lambda d: d.__setitem__("colour_model", "hsv"), "colour_model: unknown colour model 'hsv'"),
    (lambda d: d["channels"][1].__setitem__("name", "Y"),
     r"channels\[1\]: expected a darts or cells genotype named 'G'"),
    (lambda d: d["channels"][2]["normal"]["edges"][0].__setitem__(0, "conv_9x9"),
     r"channels\[2\] \(B\).normal.edges\[0\].op: unknown op 'conv_9x9'"),
    (lambda d: d["meta_learner"].__setitem__("hidden", [0]), "meta_learner.hidden: expected widths >= 1"),
    (lambda d: d.__setitem__("yellow", "max"), "yellow: expected one of printed, min"),
])
def test_a_bad_colornas_genotype_is_refused_naming_the_field(edit, message):
    data = gt.to_dict(build_searcher("colornas-rgby", FAST, RGB).derive())
    edit(data)
    with pytest.raises(gt.GenotypeError, match=message):
        gt.from_dict(data)


# ----------------------------------------------------------------------------- final network, bad input
def test_final_network_trains_from_the_genotype_with_drop_path(tmp_path):
    from dartboard.data.datasets import Splits
    from dartboard.training.final import TrainConfig, load_network, train_genotype

    geno = build_searcher("colornas-rb", FAST, RGB).derive()
    splits = load_dataset("colour-digits")
    small = Splits(torch.utils.data.Subset(splits.train, range(64)), torch.utils.data.Subset(splits.test, range(32)),
                   splits.info)
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=32, drop_path_prob=0.3)
    result = train_genotype(geno, small, cfg, tmp_path)
    net = load_network(gt.load(tmp_path / "genotype.json"), result.weights_path, cfg, splits.info).eval()
    assert result.parameters == sum(p.numel() for p in net.parameters())
    x = torch.rand(3, 3, 8, 8)
    seen = []
    net.meta.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        net(x)
        rb = rgb_to_rb(x)
        expected = torch.cat([net.channels[c](rb[:, c:c + 1]) for c in range(2)], dim=1)
    assert torch.equal(seen[0], expected)
    net.drop_path_prob = 0.25
    assert all(c.drop_path_prob == 0.25 for c in net.channels)


def test_bad_input_is_one_clear_error_before_anything_trains():
    from dartboard.training.final import TrainConfig, network_of

    with pytest.raises(ValueError, match=r"colour_model: 'rgby' converts RGB images \(3 channels\), but the data "
                                         r"has 1 channel\(s\)"):
        build_searcher("colornas-rgby", TINY, DataShape(1, 8, 10))
    geno = build_searcher("colornas-rgby", FAST, RGB).derive()
    digits = load_dataset("digits").info
    with pytest.raises(ValueError, match="but the data has 1 channel"):
        network_of(geno, TrainConfig(channels=4, layers=3), digits)
    bad = ColourGenotype("rgby", geno.channels[:3], geno.meta_hidden)
    with pytest.raises(gt.GenotypeError, match="colour model 'rgby' has 4 channels .* the genotype 3"):
        network_of(bad, TrainConfig(channels=4, layers=3), load_dataset("colour-digits").info)
    with pytest.raises(ValueError, match="grouping: the colornas space has 9 cells"):
        build_searcher("colornas-rgb", {**TINY, "grouping": "normal_reduce"}, RGB)
    with pytest.raises(ValueError, match="space_options: space 'colornas' has no option 'colour'"):
        build_searcher("colornas-rgb", {**TINY, "space_options.colour": "rgb"}, RGB)
    with pytest.raises(ValueError, match="space_options.meta_hidden: expected a list of widths >= 1"):
        build_searcher("colornas-rgb", {**TINY, "meta_hidden": [0]}, RGB)
    with pytest.raises(ValueError, match="space_options: the cell space 'darts' takes no options"):
        build_searcher("darts", {**TINY, "space_options": {"colour_model": "rgb"}}, RGB)


def test_threshold_parse_keeps_at_most_two_inputs_per_node_above_0_7():
    """The presets' parse (thesis A.3.1): per node the ops whose softmax weight is >= 0.7, at most two;
    a node with none keeps its strongest op (with softmax at most one op per edge can pass 0.7)."""
    from dartboard.searchers.discretize import build_discretizer
    from dartboard.searchers.presets import PRESETS

    parse = build_discretizer(PRESETS["colornas-rgb"].options["discretizer"])
    ops = ("sep_conv_3x3", "skip_connect", "max_pool_3x3")
    edges = [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    w = torch.tensor([[0.8, 0.1, 0.1], [0.05, 0.75, 0.2], [0.4, 0.3, 0.3], [0.08, 0.2, 0.72], [0.9, 0.05, 0.05]])
    cell = parse(w, edges, [ops] * 5)
    assert {(e.op, e.src, e.dst) for e in cell.edges} == {("sep_conv_3x3", 0, 2), ("skip_connect", 1, 2),
                                                          ("max_pool_3x3", 1, 3), ("sep_conv_3x3", 2, 3)}
    w[3] = torch.tensor([0.1, 0.2, 0.69])
    w[4] = torch.tensor([0.5, 0.3, 0.2])
    cell = parse(w, edges, [ops] * 5)
    assert [(e.op, e.src) for e in cell.inputs_of(3)] == [("max_pool_3x3", 1)]  # none passes: the strongest, 0.69


def test_presets_search_the_colour_data_by_default():
    from dartboard.platform.config import SearchRunConfig

    for model in ("rb", "rgb", "rgby"):
        cfg = SearchRunConfig(searcher=f"colornas-{model}")
        assert cfg.dataset == "colour-digits"
        assert cfg.searcher_options() == {"C": 4, "layers": 5, "epochs": 10}
    assert np.isclose(SearchRunConfig(searcher="darts").searcher_options()["C"], 8)
