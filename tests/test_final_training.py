"""The final-training protocol of ``train_genotype`` (DARTS evaluation): the auxiliary loss weighs
0.4, gradients are clipped to norm 5, drop path ramps linearly from 0, and an 8-cell D-DARTS genotype
is deepened to 14 or 20 cells with its reduction cells at the deep network's reduction positions.

Each training check replays one epoch of one batch by hand (the same seed builds the same network,
the same loader gives the same batch) and compares every trained weight with the hand-made SGD step;
a second, wrong replay (another auxiliary weight, no clipping) must not match, so the check can tell.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from dartboard.data.datasets import DatasetInfo, Splits, make_loader
from dartboard.errors import UserInputError
from dartboard.searchers.base import seed_everything
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve
from dartboard.spaces.deepen import deepen
from dartboard.spaces.networks import DiscreteNetwork
from dartboard.training import final
from dartboard.training.final import TrainConfig, build_network, train_genotype

N = 16  # one batch per epoch


def tiny_splits(seed: int = 0) -> Splits:
    g = torch.Generator().manual_seed(seed)
    train = TensorDataset(torch.randn(N, 1, 8, 8, generator=g), torch.randint(0, 10, (N,), generator=g))
    test = TensorDataset(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
    return Splits(train, test, DatasetInfo("tiny", 1, 8, 10))


def hand_step(cfg: TrainConfig, splits: Splits, aux_weight: float, clip: float | None) -> dict[str, torch.Tensor]:
    """One SGD step (momentum and weight decay 0) written out: loss = CE + aux_weight * CE_aux, the
    gradient scaled by clip / (||g|| + 1e-6) when its norm exceeds ``clip`` (torch's clip_grad_norm_)."""
    seed_everything(cfg.seed)
    net = build_network(resolve("darts-v2"), cfg, splits)
    x, y = next(iter(make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed)))
    net.train()
    out = net(x)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = nn.functional.cross_entropy(logits, y)
    if aux is not None:
        loss = loss + aux_weight * nn.functional.cross_entropy(aux, y)
    params = [p for p in net.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    scale = 1.0
    if clip is not None:
        assert norm > clip, "the clipping case must clip"
        scale = clip / (float(norm) + 1e-6)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p -= cfg.lr * scale * g
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def trained_weights(cfg: TrainConfig, splits: Splits, tmp_path) -> dict[str, torch.Tensor]:
    result = train_genotype(resolve("darts-v2"), splits, cfg, tmp_path)
    return load_file(str(result.weights_path))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_the_defaults_are_the_darts_evaluation_protocol():
    cfg = TrainConfig()
    assert (cfg.auxiliary_weight, cfg.grad_clip, cfg.lr, cfg.momentum, cfg.weight_decay) == (0.4, 5.0, 0.025, 0.9, 3e-4)
    assert (cfg.channels, cfg.layers, cfg.epochs, cfg.batch_size) == (36, 20, 600, 96)


def test_the_auxiliary_loss_weighs_0_4(tmp_path):
    splits = tiny_splits()
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=N, lr=0.5, momentum=0.0, weight_decay=0.0,
                      grad_clip=1e9, auxiliary=True, seed=0)
    trained = trained_weights(cfg, splits, tmp_path)
    assert any("auxiliary" in k for k in trained)
    assert max_difference(trained, hand_step(cfg, splits, 0.4, None)) < 1e-5
    assert max_difference(trained, hand_step(cfg, splits, 1.0, None)) > 1e-3  # a wrong weight shows


def test_gradients_are_clipped_to_the_configured_norm(tmp_path):
    splits = tiny_splits()
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=N, lr=0.5, momentum=0.0, weight_decay=0.0,
                      grad_clip=0.05, seed=0)
    trained = trained_weights(cfg, splits, tmp_path)
    assert max_difference(trained, hand_step(cfg, splits, 0.4, 0.05)) < 1e-5
    unclipped = TrainConfig(**{**cfg.__dict__, "grad_clip": 1e9})
    assert max_difference(trained, hand_step(unclipped, splits, 0.4, None)) > 1e-3


def test_drop_path_ramps_linearly_from_zero_over_the_epochs(monkeypatch):
    """DARTS: in epoch e (from 0) of E, every cell drops paths with probability p * e / E."""
    seen: list[tuple[float, ...]] = []

    def recording_network(*args, **kwargs):
        net = build_network(*args, **kwargs)

        def record(last_cell, inputs):  # by the last cell's turn, the network has set every cell's rate
            if net.training:
                seen.append(tuple(cell.drop_prob for cell in net.cells))

        net.cells[-1].register_forward_pre_hook(record)
        return net

    monkeypatch.setattr(final, "build_network", recording_network)
    cfg = TrainConfig(channels=4, layers=3, epochs=4, batch_size=N, drop_path_prob=0.2, seed=0)
    train_genotype(resolve("darts-v2"), tiny_splits(), cfg)
    assert len(seen) == 4  # one training step per epoch
    for epoch, probs in enumerate(seen):
        assert probs == pytest.approx((0.2 * epoch / 4,) * 3)


@pytest.mark.parametrize("value", [-0.1, 1.0, 2.0])
def test_a_drop_path_probability_outside_0_1_is_refused(value):
    with pytest.raises(UserInputError, match=r"drop_path_prob: expected a probability in \[0, 1\)"):
        TrainConfig(drop_path_prob=value)


# ------------------------------------------------------------------ deepening (thesis Algorithm 2)
PAIRS = [("sep_conv_3x3", "skip_connect"), ("sep_conv_5x5", "max_pool_3x3"), ("dil_conv_3x3", "avg_pool_3x3"),
         ("dil_conv_5x5", "sep_conv_3x3"), ("max_pool_3x3", "sep_conv_5x5"), ("avg_pool_3x3", "dil_conv_5x5"),
         ("skip_connect", "dil_conv_3x3"), ("sep_conv_3x3", "sep_conv_5x5")]


def eight_cell_genotype() -> gt.CellsGenotype:
    """A D-DARTS-style genotype: 8 different cells (one op pair each), reductions at 2 and 5."""
    cells = tuple(gt.CellGenotype((gt.Edge(a, 0, 2), gt.Edge(b, 1, 2), gt.Edge(b, 2, 3)), (2, 3)) for a, b in PAIRS)
    return gt.CellsGenotype(cells, (2, 5))


@pytest.mark.parametrize("layers, reductions", [(14, (4, 9)), (20, (6, 13))])
def test_an_8_cell_genotype_deepens_with_reduction_cells_at_the_reduction_positions(layers, reductions):
    geno = eight_cell_genotype()
    net = DiscreteNetwork(geno, C=2, layers=layers, num_classes=10, in_channels=1, input_size=8)
    assert net.reductions == reductions
    mapping = deepen(8, layers)
    for i, cell in enumerate(net.cells):
        source = geno.cells[mapping[i]]
        assert tuple(cell.edges) == source.edges, f"cell {i}"
        assert cell.reduction == (i in reductions)
        assert (mapping[i] in geno.reductions) == (i in reductions), f"cell {i} copies searched cell {mapping[i]}"
    assert [mapping[r] for r in reductions] == [2, 5]
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
