"""Training a final network from a genotype (the DARTS evaluation protocol, scaled by flags).

DARTS evaluation defaults (CIFAR-10): SGD lr 0.025 cosine to 0, momentum 0.9, wd 3e-4,
grad clip 5, auxiliary weight 0.4, drop path 0.2 (linearly ramped), 600 epochs, batch 96.
On digits the defaults are smaller (``DIGITS_TRAIN_DEFAULTS``); the ImageNet mobile setting is the
named preset :data:`IMAGENET_PROTOCOL`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from dartboard.data.datasets import Splits, make_loader
from dartboard.errors import DataError, UserInputError
from dartboard.model_files import GENOTYPE_FILE, TRAIN_FILE, WEIGHTS_FILE
from dartboard.searchers.base import seed_everything
from dartboard.spaces import genotype as gt
from dartboard.spaces.colour_genotype import ColourGenotype
from dartboard.spaces.limits import check_network_size
from dartboard.spaces.networks import STEMS, DiscreteNetwork, count_parameters
from dartboard.training.progress import phase
from dartboard.training.protocol import AMP_DTYPES, LR_SCHEDULES, FinalTrainer

log = logging.getLogger("dartboard")


@dataclass
class TrainConfig:
    channels: int = 36  # DARTS evaluation: C=36, 20 cells
    layers: int = 20
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary: bool = False
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.0  # DARTS CIFAR: 0.2 (``--drop-path 0.2``), ramped linearly from 0
    cutout: bool = False
    cutout_length: int = 16  # DARTS CIFAR: --cutout --cutout_length 16
    label_smoothing: bool = False
    label_smoothing_eps: float = 0.1  # DARTS ImageNet: CrossEntropyLabelSmooth(0.1)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler)
    lr_schedule: str = "cosine"  # cosine (DARTS CIFAR: to 0 over the epochs) | step (DARTS ImageNet)
    lr_gamma: float = 0.97  # step: lr x gamma every lr_decay_period epochs (DARTS ImageNet: 0.97, every epoch)
    lr_decay_period: int = 1
    stem: str = "auto"  # auto (ImageNet stem above 32 px) | cifar | imagenet (DARTS NetworkImageNet)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        """Refuse values that would train nonsense (drop path 2.0 trains to chance) before any work."""
        check_network_size(self.channels, self.layers)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise UserInputError(f"drop_path_prob: expected a probability in [0, 1), got {self.drop_path_prob}")
        if not self.grad_clip > 0:
            raise UserInputError(f"grad_clip: expected a positive number, got {self.grad_clip}")
        if not self.lr >= 0:  # lr 0 trains nothing but is a valid (evaluation) setting
            raise UserInputError(f"lr: expected a number >= 0, got {self.lr}")
        for name in ("momentum", "weight_decay", "auxiliary_weight"):
            if not getattr(self, name) >= 0:
                raise UserInputError(f"{name}: expected a number >= 0, got {getattr(self, name)}")
        self._check_protocol_options()

    def _check_protocol_options(self) -> None:
        if self.cutout_length < 1:
            raise UserInputError(f"cutout_length: expected a positive number of pixels, got {self.cutout_length}")
        if not 0.0 <= self.label_smoothing_eps < 1.0:
            raise UserInputError(f"label_smoothing_eps: expected a number in [0, 1), got {self.label_smoothing_eps}")
        if self.precision not in AMP_DTYPES:
            raise UserInputError(f"precision: expected one of {', '.join(AMP_DTYPES)}, got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserInputError(f"lr_schedule: expected one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise UserInputError(f"lr_gamma: expected a factor in (0, 1], got {self.lr_gamma}")
        if self.lr_decay_period < 1:
            raise UserInputError(f"lr_decay_period: expected a positive number of epochs, got {self.lr_decay_period}")
        if self.stem not in STEMS:
            raise UserInputError(f"stem: expected one of {', '.join(STEMS)}, got {self.stem!r}")


def check_cutout(cfg: TrainConfig, input_size: int, name: str = "cutout_length") -> None:
    """A cutout square of twice the images' side or more covers the whole image wherever it is centred: the network
    would train on blank images and learn nothing. Refused (``name``: the setting as the user gave it)."""
    if cfg.cutout and cfg.cutout_length >= 2 * input_size:
        raise UserInputError(f"{name}: a {cfg.cutout_length}-px cutout square blanks the whole of every "
                             f"{input_size}-px training image, wherever it is centred; give at most "
                             f"{2 * input_size - 1} px (DARTS: 16 on CIFAR's 32-px images), or turn cutout off")


#: The ImageNet mobile setting of the DARTS evaluation protocol (Liu et al. 2019, 5.2 and the
#: reference ``train_imagenet.py``): C=48, 14 cells, the ImageNet stem, batch 128, SGD lr 0.1,
#: momentum 0.9, weight decay 3e-5, lr x 0.97 every epoch, 250 epochs, auxiliary weight 0.4, label
#: smoothing 0.1, grad clip 5; no cutout, no drop path.
IMAGENET_PROTOCOL: dict[str, object] = {
    "channels": 48, "layers": 14, "stem": "imagenet", "batch_size": 128, "lr": 0.1, "momentum": 0.9,
    "weight_decay": 3e-5, "lr_schedule": "step", "lr_gamma": 0.97, "lr_decay_period": 1, "epochs": 250,
    "auxiliary": True, "auxiliary_weight": 0.4, "label_smoothing": True, "label_smoothing_eps": 0.1,
    "grad_clip": 5.0, "cutout": False, "drop_path_prob": 0.0,
}


@dataclass
class TrainResult:
    test_acc: float
    test_loss: float
    parameters: int
    seconds: float
    weights_path: Path | None
    weights_sha256: str | None
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: mean train loss and accuracy


def build_network(genotype: gt.Genotype, cfg: TrainConfig, splits: Splits) -> nn.Module:
    return network_of(genotype, cfg, getattr(splits, "info", None))  # the kind is checked before the shape


def network_of(genotype: gt.Genotype, cfg: TrainConfig, info) -> nn.Module:
    """The final network of a cell genotype (DiscreteNetwork) or of a ColorNAS genotype (one cell
    network per colour channel + the meta-learner, each channel's network C channels, ``layers`` cells)."""
    if info is not None and info.num_classes < 2:  # every label the same: the cross-entropy is 0 from the first step
        raise DataError(f"{getattr(info, 'name', 'network')}: the data has {info.num_classes} class; a classifier "
                        f"needs at least two (an image folder: one subfolder of images per class in train/)")
    if isinstance(genotype, ColourGenotype):
        from dartboard.spaces.colornas import ColourNetwork

        return ColourNetwork(genotype, C=cfg.channels, num_classes=info.num_classes, layers=cfg.layers,
                             auxiliary=cfg.auxiliary, in_channels=info.in_channels, input_size=info.input_size,
                             drop_path_prob=cfg.drop_path_prob)
    if not isinstance(genotype, (gt.DartsGenotype, gt.CellsGenotype)):
        kind = getattr(genotype, "kind", None)
        if not isinstance(kind, str) or isinstance(genotype, Mapping):
            raise gt.GenotypeError(f"not a genotype: {type(genotype).__name__} (a genotype's dict is read with "
                                   f"genotype.from_dict, a catalog name or file with catalog.resolve)")
        raise gt.GenotypeError(f"kind: a {kind!r} genotype is not a cell network; expected "
                               f"{', '.join(gt.CELL_NETWORK_KINDS[:-1])} or {gt.CELL_NETWORK_KINDS[-1]}")
    return DiscreteNetwork(genotype, C=cfg.channels, num_classes=info.num_classes, layers=cfg.layers,
                           auxiliary=cfg.auxiliary, in_channels=info.in_channels, input_size=info.input_size,
                           drop_path_prob=cfg.drop_path_prob, stem=cfg.stem)


@torch.no_grad()
def evaluate(net: nn.Module, loader, device: torch.device) -> tuple[float, float]:
    net.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = net(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += y.numel()
    return correct / max(total, 1), loss_sum / max(total, 1)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EpochCheckpoint(Protocol):
    """Where an in-process training keeps its state after each epoch (``platform/train_checkpoint.py``)."""

    def restore(self, trainer: FinalTrainer, loader: DataLoader) -> float:
        """Load the last saved state into ``trainer`` and ``loader``'s shuffling generator (nothing when there is
        none); the training seconds spent before it."""

    def save(self, trainer: FinalTrainer, loader: DataLoader, seconds: float) -> None: ...

    def remove(self) -> None:
        """The model files are written: the checkpoint is no longer needed."""


def train_genotype(genotype: gt.Genotype, splits: Splits, cfg: TrainConfig, out_dir: str | Path | None = None,
                   on_epoch=None, checkpoint: EpochCheckpoint | None = None) -> TrainResult:
    """Train from scratch on ``splits.train``, report accuracy on ``splits.test`` (in eval mode: BatchNorm's
    running statistics, no drop path); save a state_dict. ``on_epoch(epoch, {"train_loss", "train_acc"})``
    gets the epoch's means over its samples (train mode). With a ``checkpoint`` the training continues from
    its saved state (the epochs after it are those of an uninterrupted training, bit for bit) and saves its
    state after every epoch."""
    check_cutout(cfg, splits.info.input_size)
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    net = build_network(genotype, cfg, splits).to(device)
    train_loader = make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=False)
    test_loader = make_loader(splits.test, 256, shuffle=False, seed=cfg.seed)
    trainer = FinalTrainer(net, cfg, device)
    before = checkpoint.restore(trainer, train_loader) if checkpoint is not None else 0.0
    start = time.perf_counter()
    with phase("training", (cfg.epochs - trainer.epoch) * len(train_loader)) as advance:
        for epoch in range(trainer.epoch, cfg.epochs):
            metrics = trainer.train_epoch(train_loader, advance)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if checkpoint is not None:
                checkpoint.save(trainer, train_loader, before + time.perf_counter() - start)
    seconds = before + time.perf_counter() - start
    test_acc, test_loss = evaluate(net, test_loader, device)
    weights_path = sha = None
    if out_dir is not None:
        weights_path, sha = save_trained(net, genotype, cfg, out_dir, {"test_acc": test_acc, "test_loss": test_loss,
                                                                      "history": trainer.history})
    if checkpoint is not None:
        checkpoint.remove()
    return TrainResult(test_acc, test_loss, count_parameters(net), seconds, weights_path, sha, trainer.history)


def save_trained(net: nn.Module, genotype: gt.Genotype, cfg: TrainConfig, out_dir: str | Path,
                 results: Mapping) -> tuple[Path, str]:
    """weights.safetensors, genotype.json and train.json (config, results, SHA-256, parameter count)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(weights_path))
    sha = sha256_file(weights_path)
    if not gt.holds(out / GENOTYPE_FILE, genotype):  # a folder's own genotype (a search's, a pulled one) kept as it is
        gt.save(genotype, out / GENOTYPE_FILE)
    (out / TRAIN_FILE).write_text(json.dumps({"config": asdict(cfg), **results, "weights_sha256": sha,
                                                "parameters": count_parameters(net)}, indent=2))
    return weights_path, sha


def load_network(genotype: gt.Genotype, weights_path: str | Path, cfg: TrainConfig, splits_info) -> nn.Module:
    """Rebuild a trained network from its genotype and a weights file (no unpickling)."""
    from safetensors.torch import load_file

    net = network_of(genotype, TrainConfig(**{**asdict(cfg), "drop_path_prob": 0.0}), splits_info)
    path = Path(weights_path)
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    net.load_state_dict(state)
    return net


@dataclass(frozen=True)
class ShapeInfo:
    """A data set's shape, as recorded in a registered model's network.json."""

    in_channels: int
    input_size: int
    num_classes: int


def network_from_files(files: Mapping[str, str | os.PathLike]):
    """Rebuild a network from genotype.json + network.json + weights (loaded without unpickling); a
    DARIO gates genotype + weights: the pruned timm ViT; the genotype alone without network.json or weights."""
    genotype = gt.load(files["genotype"])
    if isinstance(genotype, gt.GateGenotype) and "weights" in files:  # a DARIO-pruned ViT: the smaller timm model
        from safetensors.torch import load_file

        from dartboard.spaces.vit import rebuild_pruned

        return rebuild_pruned(genotype, pruned_state=load_file(str(files["weights"]))).eval()
    if genotype.kind == "flux_mlp" and "weights" in files:  # a PMSM flux model (`pmsm compare`, registered)
        from safetensors.torch import load_file

        from dartboard.spaces.pmsm import FluxNet

        net = FluxNet(genotype)
        net.load_state_dict(load_file(str(files["weights"])))
        return net.eval()
    if "network" not in files or "weights" not in files:
        return genotype
    cfg, info = recorded_network(json.loads(Path(files["network"]).read_text()))
    return load_network(genotype, files["weights"], cfg, info).eval()


def recorded_network(spec: Mapping) -> tuple[TrainConfig, ShapeInfo]:
    """The size (channels, cells, auxiliary head, stem) and input shape a network.json records."""
    cfg = TrainConfig(channels=int(spec["channels"]), layers=int(spec["layers"]),
                      auxiliary=bool(spec.get("auxiliary", False)), stem=str(spec.get("stem", "auto")))
    return cfg, ShapeInfo(int(spec["in_channels"]), int(spec["input_size"]), int(spec["num_classes"]))
