"""The ``derived`` study objective, inside a trial's rank 0: the derived architecture trained (or, for a
pruned ViT, fine-tuned) briefly on the search-train half and scored on the val half, never on the test
split (the study selects on this number). Rank 0 computes it; the worker broadcasts it to every rank."""

from __future__ import annotations

from typing import Any

import torch


def derived_accuracy(genotype: Any, splits: Any, halves: Any, objective: dict[str, Any], cfg: Any,
                      device: torch.device, rank: int, searcher: Any) -> float:
    """Train the derived architecture briefly on the search-train half, score it on the val half
    (never on the test split: the study selects on this number). Rank 0 trains; other ranks get 0.0.
    Cell genotypes: accuracy of the network trained from scratch. ``mlp`` genotypes (NASiam heads):
    weighted-kNN accuracy of the backbone after a short SSL pretraining with the derived heads (the
    searcher's framework), kNN fitted on the search-train half. ``gates`` genotypes (DARIO): accuracy of
    the pruned ViT after fine-tuning its last block and head (``train_epochs``) on the search-train half."""
    from dartboard.data.datasets import Splits
    from dartboard.spaces.genotype import GateGenotype, MlpGenotype
    from dartboard.training.final import TrainConfig, train_genotype

    acc = 0.0
    if rank == 0 and isinstance(genotype, GateGenotype):
        acc = finetuned_accuracy(searcher, genotype, halves, objective["train_epochs"],
                                 objective["train_batch_size"], cfg.seed)
    elif rank == 0 and isinstance(genotype, MlpGenotype):
        acc = _derived_knn(genotype, splits, halves, objective, cfg, device, searcher.objective.name)
    elif rank == 0:
        tcfg = TrainConfig(channels=objective["train_channels"], layers=objective["train_layers"],
                           epochs=objective["train_epochs"], batch_size=objective["train_batch_size"],
                           seed=cfg.seed, device=str(device))
        acc = train_genotype(genotype, Splits(halves[0], halves[1], splits.info), tcfg).test_acc
    return acc


def _derived_knn(genotype: Any, splits: Any, halves: Any, objective: dict[str, Any], cfg: Any,
                 device: torch.device, framework: str) -> float:
    from dartboard.data.catalog import load_dataset
    from dartboard.data.datasets import check_batch
    from dartboard.training import ssl_eval as E

    plain = load_dataset(E.view_datasets(cfg.dataset)[0], cfg.data_root, cfg.image_size)
    batch = objective["train_batch_size"]
    check_batch(batch, {"pretraining samples (the search-train half)": len(halves[0])}, "objective.train_batch_size")
    scfg = E.SslConfig(framework=framework, C=objective["train_channels"], epochs=objective["train_epochs"],
                       batch_size=batch, seed=cfg.seed, device=str(device),
                       objective_options={"queue_size": E.moco_queue(batch)} if framework == "moco" else None)
    info = splits.info
    _, _, metrics = E.pretrain_and_evaluate(genotype, splits.train, plain.train, halves[0].indices,
                                            halves[1].indices, (info.in_channels, info.input_size), scfg)
    return metrics["knn_acc"]


def finetuned_accuracy(searcher: Any, genotype: Any, halves: Any, epochs: int, batch_size: int, seed: int) -> float:
    """The accuracy (0..1) on the val half of the ViT pruned to ``genotype`` (``searcher.pruned_model``)
    after fine-tuning its last block, final norm and head on the search-train half (thesis 6.1.2)."""
    from dartboard.data.datasets import make_loader
    from dartboard.searchers.base import seed_everything
    from dartboard.training.vit_finetune import evaluate, finetune_last_block

    seed_everything(seed)
    pruned = searcher.pruned_model(genotype)
    if genotype.blocks_kept:  # a model without blocks has no last block to fine-tune: scored as it is
        finetune_last_block(pruned, make_loader(halves[0], batch_size, shuffle=True, seed=seed), epochs,
                            device=searcher.device)
    return evaluate(pruned, make_loader(halves[1], 256, shuffle=False, seed=seed), searcher.device) / 100.0
