"""Training a final network from a genotype (the DARTS evaluation protocol, scaled by flags).

DARTS evaluation defaults (CIFAR-10): SGD lr 0.025 cosine to 0, momentum 0.9, wd 3e-4,
grad clip 5, auxiliary weight 0.4, drop path 0.2 (linearly ramped), 600 epochs, batch 96.
On digits the defaults are smaller (``DIGITS_TRAIN_DEFAULTS``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dartboard.data.datasets import Splits, make_loader
from dartboard.searchers.base import seed_everything
from dartboard.spaces import genotype as gt
from dartboard.spaces.networks import DiscreteNetwork, count_parameters

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
    drop_path_prob: float = 0.0
    seed: int = 0
    device: str = "cpu"


@dataclass
class TrainResult:
    test_acc: float
    test_loss: float
    parameters: int
    seconds: float
    weights_path: Path | None
    weights_sha256: str | None


def build_network(genotype: gt.Genotype, cfg: TrainConfig, splits: Splits) -> nn.Module:
    return network_of(genotype, cfg, splits.info)


def network_of(genotype: gt.Genotype, cfg: TrainConfig, info) -> nn.Module:
    """The final network of a cell genotype (DiscreteNetwork) or of a ColorNAS genotype (one cell
    network per colour channel + the meta-learner, each channel's network C channels, ``layers`` cells)."""
    if isinstance(genotype, gt.ColourGenotype):
        from dartboard.spaces.colornas import ColourNetwork

        return ColourNetwork(genotype, C=cfg.channels, num_classes=info.num_classes, layers=cfg.layers,
                             auxiliary=cfg.auxiliary, in_channels=info.in_channels, input_size=info.input_size,
                             drop_path_prob=cfg.drop_path_prob)
    if not isinstance(genotype, (gt.DartsGenotype, gt.CellsGenotype)):
        raise gt.GenotypeError(f"kind: a {genotype.kind!r} genotype is not a cell network; expected darts, cells "
                               f"or colornas")
    return DiscreteNetwork(genotype, C=cfg.channels, num_classes=info.num_classes, layers=cfg.layers,
                           auxiliary=cfg.auxiliary, in_channels=info.in_channels, input_size=info.input_size,
                           drop_path_prob=cfg.drop_path_prob)


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


def train_genotype(genotype: gt.Genotype, splits: Splits, cfg: TrainConfig, out_dir: str | Path | None = None,
                   on_epoch=None) -> TrainResult:
    """Train from scratch on ``splits.train``, report accuracy on ``splits.test``; save a state_dict."""
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    net = build_network(genotype, cfg, splits).to(device)
    train_loader = make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=False)
    test_loader = make_loader(splits.test, 256, shuffle=False, seed=cfg.seed)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        net.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs  # DARTS: linear ramp
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            out = net(x)
            if isinstance(out, tuple):
                logits, aux = out
                aux_loss = nn.functional.cross_entropy(aux, y)
                loss = nn.functional.cross_entropy(logits, y) + cfg.auxiliary_weight * aux_loss
            else:
                loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch, float(loss))
    seconds = time.perf_counter() - start
    test_acc, test_loss = evaluate(net, test_loader, device)
    weights_path = sha = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        weights_path = out / "weights.safetensors"
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(weights_path))
        sha = sha256_file(weights_path)
        gt.save(genotype, out / "genotype.json")
        (out / "train.json").write_text(json.dumps({"config": asdict(cfg), "test_acc": test_acc,
                                                    "test_loss": test_loss, "weights_sha256": sha,
                                                    "parameters": count_parameters(net)}, indent=2))
    return TrainResult(test_acc, test_loss, count_parameters(net), seconds, weights_path, sha)


def load_network(genotype: gt.Genotype, weights_path: str | Path, cfg: TrainConfig, splits_info) -> nn.Module:
    """Rebuild a trained network from its genotype and a weights file (no unpickling)."""
    from safetensors.torch import load_file

    net = network_of(genotype, TrainConfig(**{**asdict(cfg), "drop_path_prob": 0.0}), splits_info)
    path = Path(weights_path)
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    net.load_state_dict(state)
    return net
