"""Fine-tuning of ViTs, pruned or not (torch only): DARIO's protocols (thesis 6.1.2).

- :func:`train_epochs`: cross-entropy training with AdamW, linear warm-up then cosine decay and optional
  label smoothing (DeiT's recipe: weight decay 0.05, smoothing 0.1);
- :func:`finetune_last_block`: the thesis protocol, only the last transformer block, the final norms and
  the classifier are trained;
- :func:`evaluate`: top-1 accuracy in percent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from dartboard.spaces.vit import find_blocks
from dartboard.training.progress import phase

FINETUNE_LR = 1e-3  # Adam; dartboard's choice (the thesis does not give its fine-tuning schedule)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_epochs(model: nn.Module, loader: DataLoader, epochs: int, lr: float,
                 params: Iterable[nn.Parameter] | None = None, device: str | torch.device = "cpu",
                 warmup_epochs: float = 0.0, label_smoothing: float = 0.0, description: str = "training") -> None:
    """Cross-entropy training of ``params`` (all trainable parameters when None) with AdamW, linear warm-up
    over ``warmup_epochs`` then cosine decay, optional label smoothing (DeiT's recipe: wd 0.05, smoothing 0.1)."""
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    total, warmup = max(1, epochs * len(loader)), int(warmup_epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total, warmup))
    model.train()
    with phase(description, epochs * len(loader)) as advance:
        for _ in range(epochs):
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = nn.functional.cross_entropy(model(x), y, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                advance()
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = model(x.to(device)).argmax(-1)
        correct += int((pred == y.to(device)).sum())
        total += len(y)
    return 100.0 * correct / max(1, total)


def finetune_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The last transformer block, the final norms and the classifier (thesis 6.1.2); others frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    modules: list[nn.Module] = []
    blocks = find_blocks(model)
    if blocks:
        modules.append(blocks[-1][1])
    for name in ("norm", "fc_norm", "head_drop"):
        m = getattr(model, name, None)
        if isinstance(m, nn.Module):
            modules.append(m)
    modules.append(model.get_classifier())
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def finetune_last_block(model: nn.Module, loader: DataLoader, epochs: int, lr: float = FINETUNE_LR,
                        device: str | torch.device = "cpu", warmup_epochs: float = 0.0,
                        label_smoothing: float = 0.0) -> nn.Module:
    """Thesis 6.1.2 protocol: train only the last block, the final norm and the head."""
    train_epochs(model, loader, epochs, lr, finetune_parameters(model), device, warmup_epochs, label_smoothing,
                 description="fine-tuning the last block")
    for p in model.parameters():
        p.requires_grad_(True)
    return model
