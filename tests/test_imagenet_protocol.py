"""The ImageNet mobile setting of the DARTS evaluation protocol as a named preset (Liu et al. 2019:
C=48, 14 cells, the ImageNet stem, batch 128, SGD 0.1, momentum 0.9, wd 3e-5, lr x 0.97 every epoch,
250 epochs, auxiliary 0.4, label smoothing 0.1, grad clip 5, no cutout, no drop path), the learning-rate
schedule as a named option checked against hand-computed sequences, and `dartboard train --dataset
imagenet` on a tiny image folder this test writes (ImageNet's layout: train/ and val/, nothing downloaded)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_cli import run_cli, run_ok
from test_final_training import N, tiny_splits

from dartboard.errors import UserInputError
from dartboard.platform.cli.train_settings import train_config as _train_config
from dartboard.spaces.catalog import resolve
from dartboard.spaces.networks import count_parameters
from dartboard.training.final import (
    IMAGENET_PROTOCOL,
    ShapeInfo,
    TrainConfig,
    network_from_files,
    network_of,
    train_genotype,
)

PUBLISHED = {"channels": 48, "layers": 14, "stem": "imagenet", "batch_size": 128, "lr": 0.1, "momentum": 0.9,
             "weight_decay": 3e-5, "lr_schedule": "step", "lr_gamma": 0.97, "lr_decay_period": 1, "epochs": 250,
             "auxiliary": True, "auxiliary_weight": 0.4, "label_smoothing": True, "label_smoothing_eps": 0.1,
             "grad_clip": 5.0, "cutout": False, "drop_path_prob": 0.0}


def lrs(**cfg) -> list[float]:
    config = TrainConfig(channels=4, layers=3, batch_size=N, seed=0, **cfg)
    return [h["lr"] for h in train_genotype(resolve("darts-v2"), tiny_splits(), config).history]


def test_the_step_schedule_decays_the_learning_rate_by_gamma_every_period():
    assert TrainConfig().lr_schedule == "cosine"  # CIFAR keeps the cosine
    # lr_e = lr * gamma ** floor(e / period), by hand
    assert lrs(epochs=4, lr=0.1, lr_schedule="step", lr_gamma=0.5) == pytest.approx([0.1, 0.05, 0.025, 0.0125],
                                                                                     abs=1e-12)
    assert lrs(epochs=4, lr=0.1, lr_schedule="step", lr_gamma=0.5, lr_decay_period=2) == pytest.approx(
        [0.1, 0.1, 0.05, 0.05], abs=1e-12)
    assert lrs(epochs=3, lr=0.1, lr_schedule="step", lr_gamma=0.97) == pytest.approx([0.1, 0.097, 0.09409],
                                                                                      abs=1e-12)
    for bad, field in (({"lr_schedule": "linear"}, "lr_schedule"), ({"lr_gamma": 1.5}, "lr_gamma"),
                       ({"lr_decay_period": 0}, "lr_decay_period"), ({"stem": "deep"}, "stem")):
        with pytest.raises(UserInputError, match=f"^{field}: "):
            TrainConfig(**bad)


def test_the_imagenet_preset_holds_the_published_values_and_every_flag_overrides_it():
    assert IMAGENET_PROTOCOL == PUBLISHED
    cfg = _train_config("imagenet", "imagenet", {"lr": None, "layers": 8, "lr_schedule": "cosine"}, seed=0)
    assert (cfg.lr, cfg.layers, cfg.lr_schedule, cfg.channels, cfg.weight_decay) == (0.1, 8, "cosine", 48, 3e-5)
    cifar = _train_config("cifar", "cifar10", {}, seed=0)  # the CIFAR protocol is unchanged
    assert (cifar.channels, cifar.layers, cifar.lr, cifar.lr_schedule, cifar.stem, cifar.label_smoothing) == (
        36, 20, 0.025, "cosine", "auto", False)


def test_the_preset_network_has_14_cells_of_c48_with_the_imagenet_stem_even_at_a_tiny_input():
    torch.manual_seed(0)
    net = network_of(resolve("darts-v2"), TrainConfig(**IMAGENET_PROTOCOL), ShapeInfo(3, 16, 5))
    assert len(net.cells) == 14 and net.C == 48
    assert [i for i, c in enumerate(net.cells) if c.reduction] == [4, 9]  # DARTS: layers // 3, 2 * layers // 3
    assert net.imagenet_stem  # 16 px would get the CIFAR stem by size: the preset names its stem
    convs = [m for m in net.stem0 if isinstance(m, torch.nn.Conv2d)] + [
        m for m in net.stem1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(3, 24, (2, 2)), (24, 48, (2, 2)),
                                                                          (48, 48, (2, 2))]
    # the stem's last conv downsamples (NetworkImageNet): the first cell reduces its s0 input
    assert type(net.cells[0].preprocess0).__name__ == "FactorizedReduce"
    assert net.aux_position == 9 and net.auxiliary_head is not None
    net.train()
    logits, aux = net(torch.randn(2, 3, 16, 16))
    assert logits.shape == aux.shape == (2, 5)
    # DARTS (V2) in the ImageNet mobile setting: 4.7M parameters (Liu et al. 2019, Table 3); the reference
    # train_imagenet.py logs "param size = 4.718752MB" (auxiliary head left out, as there)
    full = network_of(resolve("darts-v2"), TrainConfig(**IMAGENET_PROTOCOL), ShapeInfo(3, 224, 1000))
    assert count_parameters(full) == 4_718_752


def write_images(root, part: str, classes: dict[str, list[tuple[int, int, int]]]) -> None:
    for cls, colours in classes.items():
        (root / part / cls).mkdir(parents=True)
        for k, colour in enumerate(colours):
            Image.new("RGB", (12, 10), colour).save(root / part / cls / f"{k}.png")


def test_dartboard_train_uses_the_imagenet_preset_on_a_local_imagenet_folder(tmp_path, capsys):
    root = tmp_path / "imagenet"
    write_images(root, "train", {"n01": [(250, 0, 0), (200, 20, 0)], "n02": [(0, 0, 250), (0, 30, 200)]})
    write_images(root, "val", {"n01": [(240, 10, 0)], "n02": [(10, 0, 240)]})
    out = tmp_path / "out"
    stdout, _ = run_ok(["train", "darts-v2", "--dataset", "imagenet", "--data-root", str(root), "--channels", "4",
                        "--layers", "3", "--epochs", "1", "--batch-size", "4", "--image-size", "16", "--no-mlflow",
                        "--json", "--out", str(out)], capsys)
    result = json.loads(stdout)
    config = result["config"]
    overridden = {"channels": 4, "layers": 3, "epochs": 1, "batch_size": 4}
    assert {k: config[k] for k in PUBLISHED} == {**PUBLISHED, **overridden}
    assert [h["lr"] for h in result["history"]] == [0.1]
    spec = json.loads((out / "network.json").read_text())
    assert (spec["stem"], spec["input_size"], spec["num_classes"]) == ("imagenet", 16, 2)
    assert spec["preprocessing"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet's statistics
    net = network_from_files({"genotype": out / "genotype.json", "network": out / "network.json",
                              "weights": out / "weights.safetensors"})  # strict load: the same stem comes back
    assert net.imagenet_stem and len(net.cells) == 3

    code, _, err = run_cli(["train", "darts-v2", "--dataset", "imagenet", "--no-mlflow"], capsys)
    assert code == 2 and "imagenet: no --data-root given" in err
    code, _, err = run_cli(["train", "darts-v2", "--protocol", "mobile", "--no-mlflow"], capsys)
    assert code == 2 and "--protocol: expected one of cifar, imagenet, got 'mobile'" in err


def test_imagenet_data_gets_the_darts_augmentation_for_training_and_the_centre_crop_for_testing(tmp_path):
    """DARTS train_imagenet.py: random resized crop, flip, colour jitter (0.4, 0.4, 0.4, hue 0.2) for training;
    resize to 256/224 of the size and the centre crop for testing (here at 16 px: resize 18, crop 16)."""
    import torch
    from torchvision.transforms import functional as F

    from dartboard.data.catalog import load_dataset
    from dartboard.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    rng = torch.Generator().manual_seed(0)
    for part in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / part / cls).mkdir(parents=True)
            pixels = (torch.rand(30, 40, 3, generator=rng) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / part / cls / "0.png")
    splits = load_dataset("imagenet", str(tmp_path), 16)
    names = [type(t).__name__ for t in splits.train.transform.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "ToTensor", "Normalize"]
    crop, _, jitter = splits.train.transform.transforms[:3]
    assert crop.size == (16, 16) and crop.scale == (0.08, 1.0)
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4) and jitter.hue == (-0.2, 0.2)
    torch.manual_seed(1)
    first, again = splits.train[0][0], splits.train[0][0]
    assert first.shape == (3, 16, 16) and not torch.equal(first, again)  # augmented anew at every draw
    # the test image by hand: shorter side (30 px) to 18, the centre 16 x 16, normalised
    image = Image.open(tmp_path / "val" / "a" / "0.png").convert("RGB")
    by_hand = F.normalize(F.to_tensor(F.center_crop(F.resize(image, 18), [16, 16])), IMAGENET_MEAN, IMAGENET_STD)
    x, y = splits.test[0]
    assert y == 0 and torch.equal(x, by_hand) and torch.equal(splits.test[0][0], x)  # deterministic
