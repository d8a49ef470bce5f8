"""The evaluation protocol's options added for final training, each against a case computed by hand:
cutout's square (DARTS Cutout, clipped at the borders), label smoothing's loss, the cosine learning
rate per epoch, AMP's autocast dtype, and a resumed FinalTrainer (state_dict through the checkpoint
format) continuing bit-identically with drop path and cutout drawing random numbers."""

from __future__ import annotations

import math

import pytest
import torch
from test_final_training import N, tiny_splits

from dartboard.data.datasets import make_loader
from dartboard.errors import UserInputError
from dartboard.searchers.base import seed_everything
from dartboard.spaces.catalog import resolve
from dartboard.training import protocol
from dartboard.training.checkpoint import load_state, save_state
from dartboard.training.final import TrainConfig, build_network, train_genotype
from dartboard.training.protocol import FinalTrainer, cutout, cutout_mask, protocol_loss


def test_the_published_values_are_the_defaults():
    cfg = TrainConfig()
    assert (cfg.cutout_length, cfg.label_smoothing_eps, cfg.precision) == (16, 0.1, "fp32")
    assert not cfg.cutout and not cfg.label_smoothing  # switched on by flags, like the auxiliary head


def test_cutout_mask_by_hand():
    # 4x4 images, length 2: centre (0, 0) zeroes rows [-1, 1) -> [0, 1), cols [0, 1): one pixel;
    # centre (2, 3) zeroes rows [1, 3) and cols [2, 4): four pixels.
    mask = cutout_mask(4, 4, 2, torch.tensor([0, 2]), torch.tensor([0, 3]))
    expected = torch.ones(2, 4, 4)
    expected[0, 0, 0] = 0
    expected[1, 1:3, 2:4] = 0
    assert torch.equal(mask, expected)


def test_cutout_16_on_a_32_pixel_image_zeroes_a_16_by_16_square_in_every_channel():
    mask = cutout_mask(32, 32, 16, torch.tensor([16]), torch.tensor([16]))
    assert int((mask == 0).sum()) == 256 and bool((mask[0, 8:24, 8:24] == 0).all())
    x = torch.randn(5, 3, 32, 32) + 10.0  # nothing is 0 before cutout
    torch.manual_seed(3)
    ys, xs = torch.randint(32, (5,)), torch.randint(32, (5,))  # cutout draws the centres this way
    torch.manual_seed(3)
    out = cutout(x, 16)
    expected = x * cutout_mask(32, 32, 16, ys, xs)[:, None]
    assert torch.equal(out, expected)
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # the same square in every channel


def test_training_applies_cutout_only_when_switched_on(monkeypatch):
    lengths = []
    monkeypatch.setattr(protocol, "cutout", lambda x, length: lengths.append(length) or x)
    base = dict(channels=4, layers=3, epochs=1, batch_size=N, seed=0)
    train_genotype(resolve("darts-v2"), tiny_splits(), TrainConfig(**base))
    assert lengths == []
    train_genotype(resolve("darts-v2"), tiny_splits(), TrainConfig(**base, cutout=True, cutout_length=3))
    assert lengths == [3]  # one batch per epoch


def test_label_smoothing_loss_by_hand():
    # logits (0, ln 3): p = (1/4, 3/4); target 1, eps 0.1, K = 2 -> targets (0.05, 0.95):
    # -(0.05 ln 1/4 + 0.95 ln 3/4) = 0.0693147 + 0.2732980 = 0.3426127
    logits, y = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1])
    loss, _ = protocol_loss(logits, y, 0.4, 0.1)
    assert float(loss) == pytest.approx(0.3426127, abs=1e-6)
    assert float(protocol_loss(logits, y, 0.4, 0.0)[0]) == pytest.approx(-math.log(0.75), abs=1e-6)
    # the auxiliary logits are smoothed too (DARTS ImageNet), weighted 0.4: 1.4 x 0.3426127
    loss, _ = protocol_loss((logits, logits.clone()), y, 0.4, 0.1)
    assert float(loss) == pytest.approx(1.4 * 0.3426127, abs=1e-6)
    # auxiliary logits (0, 0): p = (1/2, 1/2), CE = ln 2 whatever the smoothing
    loss, _ = protocol_loss((logits, torch.zeros(1, 2)), y, 0.4, 0.1)
    assert float(loss) == pytest.approx(0.3426127 + 0.4 * math.log(2.0), abs=1e-6)


def test_the_trainer_smooths_labels_only_when_switched_on():
    splits = tiny_splits()
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=N, seed=0)
    net = build_network(resolve("darts-v2"), cfg, splits)
    assert FinalTrainer(net, cfg, torch.device("cpu")).smoothing == 0.0
    on = TrainConfig(**{**cfg.__dict__, "label_smoothing": True})
    assert FinalTrainer(net, on, torch.device("cpu")).smoothing == 0.1


def test_the_learning_rate_follows_a_cosine_to_zero():
    cfg = TrainConfig(channels=4, layers=3, epochs=4, batch_size=N, lr=0.1, seed=0)
    history = train_genotype(resolve("darts-v2"), tiny_splits(), cfg).history
    # 0.1 * (1 + cos(pi * e / 4)) / 2 for e = 0..3
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.0853553, 0.05, 0.0146447], abs=1e-7)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_amp_runs_the_forward_in_the_chosen_dtype_and_keeps_fp32_weights(precision, dtype):
    splits = tiny_splits()
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=N, seed=0, precision=precision)
    net = build_network(resolve("darts-v2"), cfg, splits)
    seen = []
    net.classifier.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    metrics = FinalTrainer(net, cfg, torch.device("cpu")).train_epoch(make_loader(splits.train, N, shuffle=True,
                                                                                  seed=0))
    assert seen == [dtype] and math.isfinite(metrics["train_loss"])
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_fp16_uses_a_gradient_scaler_and_unknown_precisions_are_refused():
    splits = tiny_splits()
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=N, seed=0, precision="fp16")
    assert FinalTrainer(build_network(resolve("darts-v2"), cfg, splits), cfg, torch.device("cpu")).scaler.is_enabled()
    with pytest.raises(UserInputError, match="precision: expected one of fp32, bf16, fp16, got 'fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(UserInputError, match="cutout_length"):
        TrainConfig(cutout_length=0)


def test_a_resumed_trainer_continues_bit_identically(tmp_path):
    """2 epochs straight == 1 epoch, state_dict saved and loaded (weights_only) into a fresh trainer, 1 epoch."""
    splits = tiny_splits()
    cfg = TrainConfig(channels=4, layers=3, epochs=2, batch_size=N // 2, seed=0, auxiliary=True, drop_path_prob=0.3,
                      cutout=True, cutout_length=3)

    def fresh() -> FinalTrainer:
        seed_everything(cfg.seed)
        return FinalTrainer(build_network(resolve("darts-v2"), cfg, splits), cfg, torch.device("cpu"))

    def loader_at(epoch: int):
        return make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)

    straight = fresh()
    for epoch in range(2):
        straight.train_epoch(loader_at(epoch))
    first = fresh()
    first.train_epoch(loader_at(0))
    save_state(first.state_dict(), tmp_path / "state.pt")
    resumed = fresh()
    torch.manual_seed(123)  # the RNG must come from the checkpoint, not from here
    resumed.load_state_dict(load_state(tmp_path / "state.pt"))
    assert resumed.epoch == 1 and len(resumed.history) == 1
    resumed.train_epoch(loader_at(1))
    for (k, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert resumed.history == straight.history
