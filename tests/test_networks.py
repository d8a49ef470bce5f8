import pytest
import torch

from dartboard.spaces.catalog import GENOTYPES, SPACES, CellSpace
from dartboard.spaces.cells import DiscreteCell, MixedOp, drop_path, edge_list
from dartboard.spaces.genotype import CellGenotype, Edge
from dartboard.spaces.networks import DiscreteNetwork, SearchNetwork, count_parameters
from dartboard.spaces.ops import DARTOPTI_PRIMITIVES, OPS, make_op


def test_darts_v2_has_published_parameter_count():
    # DARTS (Liu et al. 2019) reports 3.3M for DARTS-V2 at C=36, 20 cells; the reference code prints 3.349342MB
    net = DiscreteNetwork(GENOTYPES["darts-v2"](), C=36, layers=20, auxiliary=True)
    assert count_parameters(net) == 3_349_342
    assert count_parameters(net, exclude=None) > count_parameters(net)


def test_search_supernet_has_original_size():
    # The original model_search.Network(16, 10, 8) has 1,930,618 weights (train_search "param size = 1.930618MB")
    net = SearchNetwork(normal_primitives=SPACES["darts"].normal, C=16, layers=8)
    assert count_parameters(net) == 1_930_618


@pytest.mark.parametrize("in_ch,size", [(1, 8), (3, 32), (3, 64)])
def test_stem_adapts_to_input(in_ch, size):
    net = DiscreteNetwork(GENOTYPES["darts-v1"](), C=8, layers=5, auxiliary=True, in_channels=in_ch, input_size=size)
    net.train()
    logits, aux = net(torch.randn(2, in_ch, size, size))
    assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert net(torch.randn(2, in_ch, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(set(OPS) - {"noise"}))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_keeps_channels_and_strides(name, stride):
    op = make_op(name, 8, stride, affine=True)
    out = op(torch.randn(2, 8, 8, 8))
    assert out.shape == (2, 8, 8 // stride, 8 // stride)


def test_dartopti_space_has_twelve_ops():
    assert len(DARTOPTI_PRIMITIVES) == 12 and "none" not in DARTOPTI_PRIMITIVES


def test_unknown_op_is_named():
    with pytest.raises(ValueError, match="unknown op 'conv_9x9'"):
        make_op("conv_9x9", 4, 1, True)


def test_mixed_op_is_weighted_sum_and_skips_masked_ops():
    torch.manual_seed(0)
    mixed = MixedOp(4, 1, ["skip_connect", "avg_pool_3x3", "sep_conv_3x3"]).eval()
    x = torch.randn(2, 4, 6, 6)
    w = torch.tensor([0.2, 0.3, 0.5])
    expected = sum(w[i] * mixed.ops[i](x) for i in range(3))
    assert torch.allclose(mixed(x, w), expected, atol=1e-6)
    calls = []
    mixed.ops[2].register_forward_hook(lambda *a: calls.append(1))
    mixed.active = (0, 1)
    assert torch.allclose(mixed(x, w), w[0] * x + w[1] * mixed.ops[1](x), atol=1e-6)
    assert calls == []  # the masked op never ran


def test_edge_list_is_darts_order():
    assert edge_list(2) == [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    assert len(edge_list(4)) == 14


def test_search_network_uses_per_cell_weights():
    space = CellSpace.uniform("t", ["skip_connect", "avg_pool_3x3"], steps=2)
    net = SearchNetwork(normal_primitives=space.normal, C=4, layers=3, steps=2, multiplier=2,
                        in_channels=1, input_size=8).eval()
    x = torch.randn(2, 1, 8, 8)
    w = [torch.full((5, 2), 0.5) for _ in range(3)]
    out_a = net(x, w)
    w[1] = torch.tensor([[1.0, 0.0]] * 5)
    assert not torch.allclose(out_a, net(x, w))
    with pytest.raises(ValueError, match="one tensor per cell"):
        net(x, w[:2])


def test_discrete_cell_drop_path_only_in_training():
    net = DiscreteNetwork(GENOTYPES["darts-v2"](), C=8, layers=3, in_channels=1, input_size=8, drop_path_prob=0.5)
    x = torch.randn(4, 1, 8, 8)
    net.eval()
    assert torch.equal(net(x), net(x))


def test_drop_path_zeroes_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.rand(400, 3, 2, 2) + 0.5
    out = drop_path(x, 0.25)
    kept = out.flatten(1).ne(0).all(dim=1)
    dropped = out.flatten(1).eq(0).all(dim=1)
    assert torch.equal(kept | dropped, torch.ones(400, dtype=torch.bool))  # a sample is dropped whole or not at all
    assert torch.allclose(out[kept], x[kept] / 0.75)  # survivors scaled by 1 / keep
    assert 0.18 < dropped.float().mean() < 0.32  # about drop_prob of the samples (binomial, 400 draws)


def _one_edge_cell(op: str, src: int, reduction: bool) -> DiscreteCell:
    """A cell whose only node is ``op`` applied to input ``src`` (C = 4, both inputs 4 channels)."""
    cell = DiscreteCell(CellGenotype((Edge(op, src, 2),), (2,)), 4, 4, 4, reduction, reduction_prev=False)
    return cell.train()


@pytest.mark.parametrize("op,src,reduction,dropped", [
    ("skip_connect", 0, False, False),   # a true identity: never dropped
    ("skip_connect", 1, False, False),
    ("skip_connect", 0, True, True),     # stride 2 from a cell input: a FactorizedReduce, dropped (DARTS)
    ("skip_connect", 1, True, True),
    ("sep_conv_3x3", 1, False, True),
    ("max_pool_3x3", 0, True, True),
])
def test_drop_path_in_training_spares_only_true_identities(op, src, reduction, dropped):
    torch.manual_seed(0)
    cell = _one_edge_cell(op, src, reduction)
    s0, s1 = torch.randn(16, 4, 8, 8), torch.randn(16, 4, 8, 8)
    reference = cell(s0, s1)  # drop_prob 0 (BN in training mode: batch statistics, deterministic)
    cell.drop_prob = 0.5
    out = cell(s0, s1)
    if not dropped:
        assert torch.equal(out, reference)
        return
    per_sample = out.flatten(1)
    zero = per_sample.eq(0).all(dim=1)
    assert 0 < int(zero.sum()) < 16  # some samples dropped, some kept (seeded)
    assert torch.allclose(out[~zero], reference[~zero] / 0.5)
