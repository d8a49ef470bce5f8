"""NASiam evaluation (thesis 5.2): SSL pretraining of a backbone with the heads of an ``mlp``
genotype (or hand-designed ones), then, on frozen backbone features, a linear probe and a weighted
kNN, a collapse indicator and retrieval mAP (thesis 5.1.3, Eq 5.5).

Held-out protocol: the train part is split (with the seed) into a fit part (SSL pretraining,
probe and kNN fitting, the retrieval gallery) and a held-out part (probe learning rate chosen
and every number reported there; the retrieval queries). The test split is never read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from dartboard.data.datasets import check_batch, make_loader
from dartboard.spaces import genotype as gt
from dartboard.spaces.mlp_heads import NASIAM_OPS
from dartboard.spaces.nasiam import HEAD_NAMES, HeadLayout, NasiamSupernet

HELD_OUT_FRACTION = 0.2
KNN_K = 20  # Wu et al. 2018 use k = 200 on 50k images; 20 on ~1.1k digits
KNN_TEMPERATURE = 0.07  # Wu et al. 2018 (InstDisc), the weighted kNN monitor of SimSiam/MoCo
PROBE_LRS = (0.01, 0.1, 1.0)  # chosen on the held-out part
PROBE_EPOCHS = 100  # thesis 5.2: linear classifier on frozen features for 100 epochs
COSINE_EPS = 1e-8  # thesis Eq 5.5
RETRIEVAL_TAU = 0.0  # thesis 5.1.3 sets tau "arbitrarily" and gives no value: 0 keeps every positive match
# Hand-designed heads in the op set: SimSiam's 3-layer projector and 2-layer predictor (no BN on its
# output), SimCLR's and MoCo v2's 2-layer projection MLPs (all with ReLU, equal dimensions).
HAND_DESIGNED: dict[str, dict[str, tuple[str, ...]]] = {
    "simsiam": {"projector": ("linear_relu",) * 3, "predictor": ("linear_relu",) * 2},
    "simclr": {"projector": ("linear_relu",) * 2},
    "moco": {"projector": ("linear_relu",) * 2},
}


def check_mlp(genotype: gt.Genotype) -> gt.MlpGenotype:
    if not isinstance(genotype, gt.MlpGenotype):
        raise gt.GenotypeError(f"kind: a {genotype.kind!r} genotype is not a Siamese head network; expected mlp "
                               f"(a NASiam search's genotype)")
    unknown = sorted(set(genotype.chains) - set(HEAD_NAMES))
    if unknown or "projector" not in genotype.chains:
        raise gt.GenotypeError(f"chains: expected projector (and optionally predictor), got {sorted(genotype.chains)}")
    for name, ops in genotype.chains.items():
        for i, op in enumerate(ops):
            if op not in NASIAM_OPS:
                raise gt.GenotypeError(f"chains.{name}[{i}]: unknown op {op!r}; known ops: {', '.join(NASIAM_OPS)}")
    return genotype


def head_network(genotype: gt.Genotype, in_channels: int, C: int) -> tuple[NasiamSupernet, list[torch.Tensor]]:
    """The network of a derived genotype: one op per layer with weight 1 (an empty chain is one identity)."""
    genotype = check_mlp(genotype)
    chains = [tuple(genotype.chains[name]) or ("identity",) for name in HEAD_NAMES if name in genotype.chains]
    types = tuple(t for t, chain in enumerate(chains) for _ in chain)
    layout = HeadLayout(tuple((op,) for chain in chains for op in chain), types, HEAD_NAMES[: len(chains)])
    net = NasiamSupernet(layout, types, layout.type_names, in_channels=in_channels, C=C)
    return net, [torch.ones(len(chain), 1) for chain in chains]


@dataclass
class SslConfig:
    framework: str = "simsiam"
    C: int = 16
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.06  # NASiam/SimSiam CIFAR: SGD 0.06, momentum 0.9, wd 5e-4, cosine
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    objective_options: Mapping[str, Any] | None = None  # e.g. MoCo's queue_size


def view_datasets(dataset: str) -> tuple[str, str]:
    """(plain data for evaluation, two-view data for pretraining) of ``dataset``."""
    for suffix in ("-views-noaug", "-views"):
        if dataset.endswith(suffix):
            return dataset[: -len(suffix)], dataset
    return dataset, f"{dataset}-views"


def moco_queue(batch_size: int) -> int:
    """MoCo's queue for a short pretraining: 4 steps of keys (a multiple of the 2 x batch keys per step)."""
    return 4 * 2 * batch_size


def pretrain_and_evaluate(genotype: gt.Genotype, views_train: Dataset, plain_train: Dataset,
                          fit: Sequence[int], held: Sequence[int], shape: tuple[int, int], cfg: SslConfig
                          ) -> tuple[nn.Module, list, dict[str, float]]:
    """SSL pretraining with the genotype's heads on the ``fit`` samples of ``views_train``, then the
    held-out metrics of the frozen backbone on ``plain_train`` (the same samples as single images):
    fitted on ``fit``, reported on ``held``. The network, the loss per epoch and the metrics."""
    if len(views_train) != len(plain_train):
        raise ValueError(f"views and plain data differ in size ({len(views_train)} vs {len(plain_train)}): "
                         "they must be the same training samples")
    net, history = pretrain(genotype, Subset(views_train, list(fit)), shape, cfg)
    return net, history, evaluate_backbone(net.backbone, plain_train, cfg.seed, cfg.device, fit, held)


def fit_held_out(n: int, seed: int) -> tuple[list[int], list[int]]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(n * (1 - HELD_OUT_FRACTION))
    return perm[:cut], perm[cut:]


def pretrain(genotype: gt.Genotype, views: Dataset, shape: tuple[int, int], cfg: SslConfig) -> tuple[nn.Module, list]:
    """SSL pretraining on ``views`` (two-view samples); returns the network and the loss per epoch."""
    from dartboard.searchers.parts.siamese import OBJECTIVES  # importing it registers the Siamese objectives

    check_batch(cfg.batch_size, {"pretraining samples": len(views)})  # the loader drops a last partial batch
    torch.manual_seed(cfg.seed)
    net, weights = head_network(genotype, shape[0], cfg.C)
    objective = OBJECTIVES.build({"name": cfg.framework, **dict(cfg.objective_options or {})})
    if cfg.framework == "simsiam" and not net.predictor:
        raise gt.GenotypeError("chains.predictor: simsiam needs a predictor; this genotype has none")
    if hasattr(objective, "attach"):
        objective.attach(net)
    device = torch.device(cfg.device)
    net.to(device)
    weights = [w.to(device) for w in weights]
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, momentum=0.9,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    loader = make_loader(views, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    history = []
    for _ in range(cfg.epochs):
        total, count = 0.0, 0
        net.train()
        for x, y in loader:
            x = x.to(device)
            loss = objective.loss(net(x, weights), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(y), count + len(y)
        sched.step()
        history.append(total / max(count, 1))
    return net, history


@torch.no_grad()
def embed(module: nn.Module, dataset: Dataset, device: str = "cpu", batch_size: int = 256
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of single images (``[C, H, W]`` samples) with ``module`` in eval mode."""
    was = module.training
    module.eval()
    feats, labels = [], []
    for x, y in make_loader(dataset, batch_size, shuffle=False, seed=0):
        feats.append(module(x.to(device)).float().cpu())
        labels.append(y)
    module.train(was)
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> float:
    """Weighted kNN (Wu et al. 2018): the k most cosine-similar training samples vote for their class
    with weight exp(s / T)."""
    sim = F.normalize(test_f, dim=1) @ F.normalize(train_f, dim=1).T
    top, idx = sim.topk(min(k, len(train_y)), dim=1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    votes = torch.zeros(len(test_y), classes).scatter_add_(1, train_y[idx], (top / temperature).exp())
    return float((votes.argmax(dim=1) == test_y).float().mean())


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, val_f: torch.Tensor, val_y: torch.Tensor,
                 lrs: Sequence[float] = PROBE_LRS, epochs: int = PROBE_EPOCHS, seed: int = 0) -> tuple[float, float]:
    """A linear classifier on frozen (standardised) features, full-batch SGD; (best held-out accuracy,
    its learning rate)."""
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6
    xt, xv = (train_f - mean) / std, (val_f - mean) / std
    classes = int(max(train_y.max(), val_y.max())) + 1
    best = (-1.0, 0.0)
    for lr in lrs:
        torch.manual_seed(seed)
        clf = nn.Linear(xt.shape[1], classes)
        opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9)
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(clf(xt), train_y).backward()
            opt.step()
        with torch.no_grad():
            acc = float((clf(xv).argmax(1) == val_y).float().mean())
        best = max(best, (acc, lr))
    return best


def collapse_std(features: torch.Tensor) -> float:
    """Std over samples of the l2-normalised embeddings, mean over dimensions (0: collapsed;
    about 1/sqrt(dim) when healthy)."""
    return float(F.normalize(features.float(), dim=1).std(dim=0).mean())


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = COSINE_EPS) -> torch.Tensor:
    """Thesis Eq 5.5 for every pair: x1.x2 / max(||x1|| ||x2||, eps); ``[len(a), len(b)]``."""
    return (a @ b.T) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1)[None]).clamp_min(eps)


def average_precision(relevant: Sequence[bool], n_relevant: int) -> float:
    """AP of one ranked list: the mean over all ``n_relevant`` relevant items of the precision at
    the rank where each is retrieved (0 for those never retrieved)."""
    if n_relevant == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, rel in enumerate(relevant, start=1):
        if rel:
            hits += 1
            total += hits / rank
    return total / n_relevant


def retrieval_map(query_f: torch.Tensor, query_g: Sequence[Any], gallery_f: torch.Tensor, gallery_g: Sequence[Any],
                  tau: float = RETRIEVAL_TAU) -> float:
    """Thesis 5.1.3: per query, the gallery items with similarity above ``tau`` ranked by it; relevant:
    same group (class). mAP over the queries that have a relevant item in the gallery."""
    if len(query_g) == 0 or len(gallery_g) == 0:
        raise ValueError("retrieval: the query set and the gallery must not be empty")
    sim = cosine_similarity(query_f.float(), gallery_f.float())
    aps = []
    for i, group in enumerate(query_g):
        n_rel = sum(1 for g in gallery_g if g == group)
        if n_rel == 0:
            continue
        order = [int(j) for j in sim[i].argsort(descending=True, stable=True) if float(sim[i, j]) > tau]
        aps.append(average_precision([gallery_g[j] == group for j in order], n_rel))
    return sum(aps) / len(aps) if aps else 0.0


def evaluate_backbone(backbone: nn.Module, plain_train: Dataset, seed: int, device: str = "cpu",
                      fit_index: Sequence[int] | None = None, held_index: Sequence[int] | None = None
                      ) -> dict[str, float]:
    """Linear probe, weighted kNN, collapse indicator and retrieval mAP of frozen ``backbone``
    features, on the fit / held-out split of ``plain_train``."""
    if fit_index is None or held_index is None:
        fit_index, held_index = fit_held_out(len(plain_train), seed)
    fit_f, fit_y = embed(backbone, Subset(plain_train, list(fit_index)), device)
    held_f, held_y = embed(backbone, Subset(plain_train, list(held_index)), device)
    probe, lr = linear_probe(fit_f, fit_y, held_f, held_y, seed=seed)
    return {"probe_acc": probe, "probe_lr": lr, "knn_acc": knn_accuracy(fit_f, fit_y, held_f, held_y),
            "collapse_std": collapse_std(held_f), "retrieval_map": retrieval_map(held_f, held_y.tolist(), fit_f,
                                                                                 fit_y.tolist())}
