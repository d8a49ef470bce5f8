"""NASiam (thesis ch. 5): the MLP-head space, the three Siamese objectives, the MoCo key encoder,
derivation, the per-epoch alternation of Algorithm 4, the two-view data and a direction test."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from dartboard.data.catalog import DATASETS, SMALL_DATASETS, load_dataset
from dartboard.data.datasets import make_loader, search_split
from dartboard.searchers.loop import run_search
from dartboard.searchers.parts.siamese import info_nce, nt_xent, simsiam_loss
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces import genotype as gt
from dartboard.spaces.mlp_heads import NASIAM_REDUCED_OPS
from dartboard.spaces.nasiam import SiameseOutput

torch.set_num_threads(1)
SHAPE = DataShape(1, 8, 10)
TINY = {"C": 4, "epochs": 2, "projector_layers": 2}


def build(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    base = {**TINY, "predictor_layers": 2 if name == "nasiam-simsiam" else 0}
    return build_searcher(name, {**base, **options}, SHAPE)


def views(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# ----------------------------------------------------------------------------- losses against hand values
def test_simsiam_loss_hand_value():
    p1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])  # cos = 1/sqrt(2)
    p2, z1 = torch.tensor([[0.0, 2.0]]), torch.tensor([[3.0, 0.0]])  # cos = 0
    assert float(simsiam_loss(p1, p2, z1, z2)) == pytest.approx(-0.5 / math.sqrt(2))


def test_nt_xent_hand_value():
    # N = 2, views equal, the two images orthogonal, tau = 1: every sample has its positive at
    # similarity 1 and two negatives at 0 -> -log(e / (e + 2)).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(nt_xent(z, z.clone(), 1.0)) == pytest.approx(math.log(1 + 2 / math.e))
    # temperature 0.5 doubles the logits: -log(e^2 / (e^2 + 2))
    assert float(nt_xent(z, z.clone(), 0.5)) == pytest.approx(math.log(1 + 2 / math.e ** 2))


def test_info_nce_and_symmetric_moco_loss_hand_value():
    q, k = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    expected = math.log(1 + math.exp(-1) + math.exp(-2))  # logits [1, 0, -1]
    assert float(info_nce(q, k, queue, 1.0)) == pytest.approx(expected)
    from dartboard.searchers.parts.siamese import MoCo

    out = SiameseOutput(z1=q, z2=torch.tensor([[0.0, 1.0]]), k1=k, k2=k, queue=queue)
    other = math.log(1 + math.exp(1) + math.exp(0))  # q2 = (0, 1): logits [0, 1, 0]
    assert float(MoCo(temperature=1.0).loss(out, torch.zeros(1))) == pytest.approx(0.5 * (expected + other))


def test_stop_gradient_stops():
    z1, z2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    p1, p2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None  # the stopped branch gets nothing
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_stop_gradient_in_the_supernet_reaches_the_projector_only_through_the_predictor():
    s = build("nasiam-simsiam")
    out = s.forward(views()[0], [w.detach() for w in s.group_weights()])
    for z in (out.z1, out.z2):
        z.retain_grad()
    s.objective.loss(out, torch.zeros(8)).backward()
    # dL/dz is the gradient that flows back through the predictor only: recompute it with z as a leaf
    z1 = out.z1.detach().requires_grad_(True)
    w = [w.detach() for w in s.group_weights()]
    p1 = s.supernet._chain(s.supernet.predictor, len(s.supernet.projector), z1, w)
    (0.5 * -nn.functional.cosine_similarity(p1, out.z2.detach(), dim=-1).mean()).backward()
    assert torch.allclose(out.z1.grad, z1.grad, atol=1e-6)


# ----------------------------------------------------------------------------- the space
def test_no_batch_norm_on_the_predictors_output():
    s = build("nasiam-simsiam", predictor_layers=3)
    net = s.supernet
    has_bn = [any(isinstance(m, nn.BatchNorm1d) for m in layer.modules()) for layer in net.layers]
    assert has_bn == [True] * 4 + [False]  # 2 projector + 3 predictor layers; the last has none
    from dartboard.spaces.mlp_heads import discrete_head

    head = discrete_head(("linear_relu", "avg_pool_3"), 16, last_bn=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in head[-1].modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in head[0].modules())


def test_one_alpha_group_per_head_and_the_reduced_space():
    s = build("nasiam-simsiam", projector_layers=3, predictor_layers=2)
    assert [(g.name, len(g.rows)) for g in s.alpha_groups()] == [("projector", 3), ("predictor", 2)]
    assert [a.shape for a in s.arch_parameters()] == [(3, 7), (2, 7)]
    reduced = build("nasiam-simsiam", space="nasiam-mlp-reduced")
    assert reduced.alpha_groups()[0].primitives[0] == NASIAM_REDUCED_OPS and len(NASIAM_REDUCED_OPS) == 5
    per_layer = build("nasiam-simclr", grouping="per_cell")
    assert [g.name for g in per_layer.alpha_groups()] == ["cell_0", "cell_1"]


def test_identity_layers_vanish_on_derivation_and_the_genotype_round_trips(tmp_path):
    s = build("nasiam-simsiam", projector_layers=3, predictor_layers=2)
    ops = s.alpha_groups()[0].primitives[0]
    wanted = [("identity", "linear_silu", "identity"), ("avg_pool_3", "identity")]
    with torch.no_grad():
        for alpha, chain in zip(s.arch_parameters(), wanted, strict=True):
            alpha.zero_()
            for row, op in enumerate(chain):
                alpha[row, ops.index(op)] = 1.0
    genotype = s.derive()
    assert genotype.kind == "mlp"
    assert dict(genotype.chains) == {"projector": ("linear_silu",), "predictor": ("avg_pool_3",)}
    path = gt.save(genotype, tmp_path / "g.json")
    assert gt.load(path) == genotype
    # a threshold parse that keeps no op in a layer removes the layer
    kept = gt.CellGenotype((gt.Edge("linear_silu", 1, 2),), (2,))
    assert build("nasiam-simclr").supernet.genotype([kept]).chains == {"projector": ("linear_silu",)}
    with pytest.raises(gt.GenotypeError, match=r"chains.projector\[0\]: unknown op"):
        gt.from_dict({**gt.to_dict(genotype), "chains": {"projector": ["conv"]}}, known_ops=ops)


# ----------------------------------------------------------------------------- MoCo's key encoder
def test_moco_key_encoder_is_a_momentum_copy():
    s = build("nasiam-moco", **{"objective.momentum": 0.9, "objective.queue_size": 32})
    net = s.supernet
    enc = net.key_encoder
    query = list(net.backbone.parameters()) + list(net.projector.parameters())
    keys = list(enc.backbone.parameters()) + list(enc.projector.parameters())
    assert {id(p) for p in query}.isdisjoint(id(p) for p in keys)  # own objects, not shared
    assert all(not p.requires_grad for p in keys)
    assert {id(p) for p in keys}.isdisjoint(id(a) for a in s.arch_parameters())
    assert any(k.startswith("key_encoder.") for k in net.state_dict()) and "key_encoder.queue" in net.state_dict()
    x, y = views()
    s.weight_step(x, y)  # moves the query encoder (the key encoder was still equal to it)
    q_before = [p.detach().clone() for p in query]
    k_before = [p.detach().clone() for p in keys]
    s.weight_step(x, y)  # its forward first moves the keys: k <- m k + (1 - m) q
    for k_new, k_old, q_old in zip(keys, k_before, q_before, strict=True):
        assert torch.allclose(k_new, 0.9 * k_old + 0.1 * q_old, atol=1e-6)
    assert int(enc.queue_ptr) == 0  # 2 steps x 16 keys around a queue of 32
    frozen = [p.detach().clone() for p in keys]
    s.arch_step(x, y, x, y)  # the alpha step neither moves the key encoder nor enqueues
    assert all(torch.equal(a, b) for a, b in zip(keys, frozen, strict=True)) and int(enc.queue_ptr) == 0


def test_moco_enqueues_both_views_keys_and_the_loss_sees_the_queue_before_them():
    import copy

    s = build("nasiam-moco", **{"objective.queue_size": 48})
    x, y = views()
    net, enc = s.supernet, s.supernet.key_encoder
    before = enc.queue.clone()
    twin = copy.deepcopy(enc)  # equal to the query encoder, so the first update leaves it as it is
    w = [w.detach() for w in s.group_weights()]
    with torch.no_grad():
        expected = torch.cat([nn.functional.normalize(net._chain(twin.projector, 0, twin.backbone(x[:, v]), w), dim=1)
                              for v in (0, 1)])
    out = s.forward(x, w)  # a weight step's forward: train mode, grad on, mixing weights without grad
    assert torch.equal(out.queue, before)
    assert int(enc.queue_ptr) == 16
    assert torch.allclose(enc.queue[:16], expected, atol=1e-6) and torch.equal(enc.queue[16:], before[16:])


# ----------------------------------------------------------------------------- alternation, determinism
def test_per_epoch_alternation_runs_every_alpha_step_before_any_weight_step():
    s = build("nasiam-simsiam")
    assert type(s.schedule).__name__ == "PerEpoch"
    weights0 = [p.detach().clone() for p in s.weight_parameters()]
    alphas0 = [a.detach().clone() for a in s.arch_parameters()]
    batches = [views(seed=i) for i in range(4)]
    for i in range(2):
        s.step(batches[2 * i], batches[2 * i + 1])
    assert all(torch.equal(a, b) for a, b in zip(weights0, s.weight_parameters(), strict=True))  # no weight step yet
    assert not all(torch.equal(a, b) for a, b in zip(alphas0, s.arch_parameters(), strict=True))
    metrics = s.end_epoch()  # the whole train pass
    assert not all(torch.equal(a, b) for a, b in zip(weights0, s.weight_parameters(), strict=True))
    assert metrics["arch_steps"] == 2 and "train_loss" in metrics and not s.deferred
    per_step = build("nasiam-simsiam", schedule="alternate")
    per_step.step(batches[0], batches[1])
    assert not all(torch.equal(a, b) for a, b in zip(weights0, per_step.weight_parameters(), strict=True))


@pytest.mark.parametrize("name", ["nasiam-simsiam", "nasiam-moco"])
def test_two_engines_with_one_seed_keep_identical_alphas(name):
    """What the DDP test guards on one process: the alphas depend only on the seed and the data."""
    batches = [views(seed=i) for i in range(4)]
    engines = [build(name, seed=3), build(name, seed=3)]
    for s in engines:
        for _ in range(2):
            for i in range(2):
                s.step(batches[2 * i], batches[2 * i + 1])
            s.end_epoch()
    for a, b in zip(engines[0].arch_parameters(), engines[1].arch_parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(isinstance(a, nn.Parameter) for a in engines[0].arch_parameters())  # not plain tensors


# ----------------------------------------------------------------------------- data and direction
def test_two_view_digits_are_registered_small_and_the_ablation_is_explicit():
    assert {"digits-views", "digits-views-noaug"} <= set(DATASETS) <= set(DATASETS)
    assert {"digits-views", "digits-views-noaug"} <= SMALL_DATASETS
    torch.manual_seed(0)
    x, y = load_dataset("digits-views").train[0]
    assert x.shape == (2, 1, 8, 8) and not torch.equal(x[0], x[1])
    x, _ = load_dataset("digits-views-noaug").train[0]
    assert torch.equal(x[0], x[1])
    from dartboard.platform.config import SearchRunConfig

    assert SearchRunConfig(searcher="nasiam-simsiam").dataset == "digits-views"


@pytest.mark.parametrize("schedule", ["per_epoch", "alternate"])
def test_search_on_identical_views_moves_the_predictor_to_parameter_free_ops(schedule):
    """With augmentations off the two views agree, so the predictor minimises the loss by passing z
    through: the alphas of its parameter-free ops (identity, pools) rise above every linear op's."""
    torch.manual_seed(0)
    splits = load_dataset("digits-views-noaug")
    train, val = search_split(Subset(splits.train, range(256)), 0)
    s = build("nasiam-simsiam", C=8, epochs=3, arch_lr=0.01, schedule=schedule)
    history = run_search(s, make_loader(train, 32, shuffle=True, seed=0, drop_last=True),
                         make_loader(val, 32, shuffle=True, seed=1, drop_last=True), 3)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    ops = s.alpha_groups()[1].primitives[0]
    free = [ops.index(o) for o in ("identity", "max_pool_3", "avg_pool_3")]
    linear = [i for i in range(len(ops)) if i not in free]
    for row in s.group_weights()[1].detach():
        assert row[free].min() > row[linear].max()
        assert row[ops.index("identity")] > 1 / len(ops)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_give_one_clear_error():
    with pytest.raises(ValueError, match="projector_layers: expected an integer from 1 to 6"):
        build("nasiam-simsiam", projector_layers=7)
    with pytest.raises(ValueError, match="predictor_layers: expected an integer from 0 to 4"):
        build("nasiam-simsiam", predictor_layers=5)
    with pytest.raises(ValueError, match="predictor_layers: simclr has no predictor"):
        build("nasiam-simclr", predictor_layers=2)
    with pytest.raises(ValueError, match="predictor_layers: simsiam needs a predictor"):
        build("nasiam-simsiam", predictor_layers=0)
    with pytest.raises(ValueError, match="order: objective 'simsiam' searches first order"):
        build("nasiam-simsiam", order=2)
    with pytest.raises(ValueError, match="objective 'classification'"):
        build("nasiam-simsiam", objective="classification")
    with pytest.raises(ValueError, match="objective 'simsiam' trains the heads of a Siamese space"):
        build_searcher("darts", {"objective": "simsiam", "C": 4, "layers": 2}, SHAPE)
    s = build("nasiam-moco", **{"objective.queue_size": 40})
    with pytest.raises(ValueError, match="queue_size: 40 is not divisible by the 16 keys"):
        s.weight_step(*views())
    with pytest.raises(ValueError, match=r"expected a batch of two views .* digits-views"):
        build("nasiam-simclr").weight_step(torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    from dartboard.training.final import build_network  # an mlp genotype is not a cell network

    with pytest.raises(gt.GenotypeError, match="'mlp' genotype is not a cell network"):
        build_network(gt.MlpGenotype({"projector": ("identity",)}), None, None)
