"""The per-step pieces of the DARTS evaluation protocol and the trainer that applies them (torch only).

One training step (DARTS ``train.py``): cutout on the normalised batch, the loss
``CE(logits) + auxiliary_weight * CE(auxiliary logits)`` (both with label smoothing when it is on),
backward (scaled for fp16), gradient norm clipped to ``grad_clip``, SGD with momentum and weight decay;
per epoch the drop-path probability ramps linearly ``p * e / E`` and the learning rate follows the
``lr_schedule``: a cosine to 0 (DARTS CIFAR) or a step decay ``lr * gamma^floor(e / period)`` (DARTS
ImageNet: gamma 0.97, every epoch). :class:`FinalTrainer` holds everything a resumed training needs
(weights, optimizer, schedule, grad scaler, epoch, history, RNG) as a ``state_dict`` in the checkpoint
format of searches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dartboard.searchers.base import rng_state, set_rng_state
from dartboard.searchers.optim_imports import defer_dynamo_import

#: torch.autocast dtypes of the ``precision`` option (fp32: no autocast).
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The ``lr_schedule`` option's values (the learning rate of epoch e, 0-based, of E).
LR_SCHEDULES = ("cosine", "step")


def lr_scheduler(opt: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """cosine: lr_e = lr (1 + cos(pi e / E)) / 2 (DARTS CIFAR); step: lr_e = lr gamma^floor(e / period)
    (DARTS ImageNet ``StepLR(optimizer, 1, gamma=0.97)``)."""
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.lr_decay_period, gamma=cfg.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)


def cutout_mask(height: int, width: int, length: int, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """(N, H, W) mask, 0 inside a ``length`` x ``length`` square centred on (ys[n], xs[n]) and clipped at
    the borders, 1 elsewhere: DARTS ``Cutout`` rows ``clip(y - length // 2, 0, h) : clip(y + length // 2, 0, h)``."""
    def inside(centres: torch.Tensor, size: int) -> torch.Tensor:  # (N, size): within [c - l//2, c + l//2)
        pixels = torch.arange(size)[None]
        low, high = (centres - length // 2).clamp(0, size), (centres + length // 2).clamp(0, size)
        return (pixels >= low[:, None]) & (pixels < high[:, None])

    return (~(inside(ys, height)[:, :, None] & inside(xs, width)[:, None, :])).float()


def cutout(x: torch.Tensor, length: int) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017, as DARTS applies it after normalisation): each sample loses one
    square, centred on a pixel drawn uniformly (torch's global RNG), in every channel."""
    n, _, h, w = x.shape
    ys, xs = torch.randint(h, (n,)), torch.randint(w, (n,))
    return x * cutout_mask(h, w, length, ys, xs)[:, None].to(device=x.device, dtype=x.dtype)


def protocol_loss(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor], y: torch.Tensor, auxiliary_weight: float,
                  label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits): CE on the logits + ``auxiliary_weight`` x CE on the auxiliary logits (DARTS), each
    with targets ``(1 - eps) * one_hot + eps / K`` (label smoothing eps; DARTS ImageNet: 0.1)."""
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    if aux is not None:
        loss = loss + auxiliary_weight * nn.functional.cross_entropy(aux.float(), y, label_smoothing=label_smoothing)
    return loss, logits


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = AMP_DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class FinalTrainer:
    """SGD + the lr schedule + the protocol's step, on ``net`` (``wrap`` e.g. DistributedDataParallel for the
    forward/backward; the schedule's state, drop path and weights live on ``net`` itself)."""

    def __init__(self, net: nn.Module, cfg: Any, device: torch.device,
                 wrap: Callable[[nn.Module], nn.Module] | None = None):
        defer_dynamo_import()  # the optimizer's steps import torch._dynamo otherwise: 1.1 CPU s per process
        self.net, self.cfg, self.device = net, cfg, device
        self.model = wrap(net) if wrap is not None else net
        self.opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.sched = lr_scheduler(self.opt, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    @property
    def smoothing(self) -> float:
        return self.cfg.label_smoothing_eps if self.cfg.label_smoothing else 0.0

    def train_epoch(self, loader, advance: Callable[[], None] = lambda: None) -> dict[str, float]:
        """One epoch in train mode; the mean loss and accuracy over its samples and the epoch's lr."""
        cfg = self.cfg
        self.net.drop_path_prob = cfg.drop_path_prob * self.epoch / cfg.epochs  # DARTS: linear ramp
        lr = float(self.opt.param_groups[0]["lr"])
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            if cfg.cutout:
                x = cutout(x, cfg.cutout_length)
            self.opt.zero_grad(set_to_none=True)
            with autocast(self.device, cfg.precision):
                out = self.model(x)
            loss, logits = protocol_loss(out, y, cfg.auxiliary_weight, self.smoothing)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            loss_sum += float(loss.detach()) * y.numel()
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += y.numel()
            advance()
        self.sched.step()
        metrics = {"epoch": self.epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                   "lr": lr}
        self.epoch += 1
        self.history.append(metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "history": list(self.history),
                "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        set_rng_state(state["rng"])
