"""NASiam's parts (thesis ch. 5, Algorithm 4): the three Siamese objectives, the per-epoch
alternation of whole passes and AdamW for the alphas. (Derivation needs no part of its own: a
head's rows are chain edges ``(i, i + 1)``, so the DARTS parse keeps the argmax op of every layer.)

Objectives read a :class:`~dartboard.spaces.nasiam.SiameseOutput` (the labels are ignored; the
engine counts samples with them). Losses are computed in fp32.

- ``simsiam``: L = 1/2 (D(p1, sg(z2)) + D(p2, sg(z1))), D the negative cosine (thesis Eqs 5.1-5.2);
- ``simclr``: NT-Xent over the 2N projections, temperature tau (projector only);
- ``moco``: MoCo v2 with a momentum key encoder (its own backbone and projector copies, attached
  to the supernet), a queue of keys and the symmetric InfoNCE (projector only).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dartboard.searchers.parts.arch_optimizers import ARCH_OPTIMIZERS, _ArchOptimizerPart
from dartboard.searchers.parts.base import Part
from dartboard.searchers.parts.schedules import SCHEDULES, Schedule
from dartboard.searchers.parts.seams import OBJECTIVES

SIMCLR_TEMPERATURE = 0.5  # SimCLR (Chen et al. 2020), CIFAR-10: tau = 0.5
# MoCo v2 on CIFAR-10 (the MoCo authors' CIFAR demo): queue 4096, momentum 0.99, tau 0.1, symmetric loss.
MOCO_QUEUE = 4096
MOCO_MOMENTUM = 0.99
MOCO_TEMPERATURE = 0.1


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) of thesis Eq 5.2 with the stop-gradient on z, averaged over the batch."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Thesis Eq 5.1."""
    return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2N samples against the 2N - 1 others, its other view the positive."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo: the positive key ``k`` against the queue's negatives (``k`` and ``queue`` normalised)."""
    q = F.normalize(q, dim=1)
    k = k.detach()
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.detach().T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse indicator (SimSiam, Chen & He 2021, Fig 2): std over the batch of the l2-normalised
    embeddings, averaged over dimensions; about 1/sqrt(dim) when healthy, 0 when collapsed."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def _float(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


class SiameseObjective(Part):
    """Shared checks and metrics; ``needs_predictor``: SimSiam True, SimCLR/MoCo False (thesis 5.1.1:
    frameworks without a predictor search the projector only)."""

    name = "siamese"
    needs_predictor = False

    def check(self, config: Any, layout: Any) -> None:
        if not getattr(layout, "siamese", False):
            raise ValueError(f"objective {self.name!r} trains the heads of a Siamese space (nasiam-mlp, "
                             f"nasiam-mlp-reduced), not space {config.space!r}")
        if config.order != 1:
            raise ValueError(f"order: objective {self.name!r} searches first order (thesis Algorithm 4), "
                             f"got order={config.order}")
        n_pred = layout.count(1)
        if self.needs_predictor and n_pred == 0:
            raise ValueError(f"predictor_layers: {self.name} needs a predictor (1 to 4 layers), got 0")
        if not self.needs_predictor and n_pred:
            raise ValueError(f"predictor_layers: {self.name} has no predictor (thesis 5.1.1: projector only); "
                             f"set predictor_layers=0, got {n_pred}")

    def metrics(self, output: Any, y: torch.Tensor) -> dict[str, tuple[torch.Tensor, int]]:
        n = y.numel()
        return {"z_std": (embedding_std(output.z1) * n, n)}


@OBJECTIVES.register("simsiam")
class SimSiam(SiameseObjective):
    name, needs_predictor = "simsiam", True

    def loss(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        return simsiam_loss(_float(output.p1), _float(output.p2), _float(output.z1), _float(output.z2))


@OBJECTIVES.register("simclr")
class SimCLR(SiameseObjective):
    name = "simclr"

    def __init__(self, temperature: float = SIMCLR_TEMPERATURE):
        if not float(temperature) > 0:
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def loss(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        return nt_xent(output.z1.float(), output.z2.float(), self.temperature)


@OBJECTIVES.register("moco")
class MoCo(SiameseObjective):
    """MoCo v2: symmetric InfoNCE, 1/2 (L(q1, k2) + L(q2, k1)); the key encoder is attached to the
    supernet (checkpointed with it), moved after every weight step and never an alpha."""

    name = "moco"

    def __init__(self, queue_size: int = MOCO_QUEUE, momentum: float = MOCO_MOMENTUM,
                 temperature: float = MOCO_TEMPERATURE):
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 2:
            raise ValueError(f"queue_size: expected an integer >= 2, got {queue_size!r}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
        self.queue_size, self.momentum, self.temperature = queue_size, float(momentum), float(temperature)

    def attach(self, supernet: Any) -> None:
        supernet.attach_momentum_encoder(self.momentum, self.queue_size)

    def loss(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        queue = output.queue.float()
        return 0.5 * (info_nce(output.z1.float(), output.k2.float(), queue, self.temperature)
                      + info_nce(output.z2.float(), output.k1.float(), queue, self.temperature))


@SCHEDULES.register("per_epoch")
class PerEpoch(Schedule):
    """Thesis Algorithm 4: per epoch, a whole pass of alpha steps over the val split, then a whole
    pass of weight steps over the train split (the engine defers the epoch's weight steps)."""

    whole_pass = True


@ARCH_OPTIMIZERS.register("adamw")
class AdamW(_ArchOptimizerPart):
    """AdamW (decoupled weight decay): the NASiam reference's alpha optimizer."""

    def make(self, params, config):
        return torch.optim.AdamW(params, lr=config.arch_lr, betas=config.arch_betas,
                                 weight_decay=config.arch_weight_decay)
