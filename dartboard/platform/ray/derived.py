"""The ``derived`` study objective, inside a trial's rank 0: the derived architecture trained (or, for a
pruned ViT, fine-tuned) briefly on the search-train half and scored on the val half, never on the test
split (the study selects on this number). Rank 0 computes it; the worker broadcasts it to every rank."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dartboard.spaces.genotype import CELL_NETWORK_KINDS

ModelFiles = Callable[[Path], None]  # writes the scored model's files into a trial's last checkpoint
#: The genotype kinds :func:`derived_score` scores: cell networks (trained), NASiam heads (kNN), DARIO's gates
#: (the pruned ViT fine-tuned)
DERIVED_KINDS = (*CELL_NETWORK_KINDS, "mlp", "gates")


def derived_accuracy(genotype: Any, splits: Any, halves: Any, objective: dict[str, Any], cfg: Any,
                     device: torch.device, rank: int, searcher: Any) -> float:
    return derived_score(genotype, splits, halves, objective, cfg, device, rank, searcher)[0]["derived_acc"]


def derived_score(genotype: Any, splits: Any, halves: Any, objective: dict[str, Any], cfg: Any,
                  device: torch.device, rank: int, searcher: Any) -> tuple[dict[str, float], ModelFiles | None]:
    """Train the derived architecture briefly on the search-train half, score it on the val half
    (never on the test split: the study selects on this number): ``derived_acc``, with a pruned ViT's sizes
    (``parameters``, ``params_original``: the table's size axis and the registered version's tags, as ``dartboard
    prune`` records them). Rank 0 trains; the other ranks get the same keys, at 0 (the worker broadcasts rank 0's).
    Cell genotypes: accuracy of the network trained from scratch. ``mlp`` genotypes (NASiam heads):
    weighted-kNN accuracy of the backbone after a short SSL pretraining with the derived heads (the
    searcher's framework), kNN fitted on the search-train half. ``gates`` genotypes (DARIO): accuracy of
    the pruned ViT after fine-tuning its last block and head (``train_epochs``) on the search-train half; that
    ViT is the trial's product, so its files come back too (``pruned_vit_files``): the champion registered is the
    pruned ViT, pulled, evaluated and predicted with as any trained network."""
    from dartboard.data.datasets import Splits
    from dartboard.spaces.genotype import GateGenotype, MlpGenotype
    from dartboard.training.final import TrainConfig, train_genotype

    acc, files = 0.0, None
    sizes = dict.fromkeys(("parameters", "params_original"), 0.0) if isinstance(genotype, GateGenotype) else {}
    if rank == 0 and isinstance(genotype, GateGenotype):
        from dartboard.spaces.vit import count_parameters

        pruned, acc = finetuned_model(searcher, genotype, halves, objective["train_epochs"],
                                      objective["train_batch_size"], cfg.seed)
        files = pruned_vit_files(pruned, splits, cfg, searcher.device)
        sizes = {"parameters": float(count_parameters(pruned)), "params_original": float(count_parameters(
            searcher.model))}
    elif rank == 0 and isinstance(genotype, MlpGenotype):
        acc = _derived_knn(genotype, splits, halves, objective, cfg, device, searcher.objective.name)
    elif rank == 0:
        tcfg = TrainConfig(channels=objective["train_channels"], layers=objective["train_layers"],
                           epochs=objective["train_epochs"], batch_size=objective["train_batch_size"],
                           seed=cfg.seed, device=str(device))
        acc = train_genotype(genotype, Splits(halves[0], halves[1], splits.info), tcfg).test_acc
    return {"derived_acc": acc, **sizes}, files


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
    return finetuned_model(searcher, genotype, halves, epochs, batch_size, seed)[1]


def finetuned_model(searcher: Any, genotype: Any, halves: Any, epochs: int, batch_size: int, seed: int
                    ) -> tuple[torch.nn.Module, float]:
    """The fine-tuned pruned ViT of :func:`finetuned_accuracy`, and that accuracy."""
    from dartboard.data.datasets import make_loader
    from dartboard.searchers.base import seed_everything
    from dartboard.training.vit_finetune import evaluate, finetune_last_block

    seed_everything(seed)
    pruned = searcher.pruned_model(genotype)
    if genotype.blocks_kept:  # a model without blocks has no last block to fine-tune: scored as it is
        finetune_last_block(pruned, make_loader(halves[0], batch_size, shuffle=True, seed=seed), epochs,
                            device=searcher.device)
    return pruned, evaluate(pruned, make_loader(halves[1], 256, shuffle=False, seed=seed), searcher.device) / 100.0


def pruned_vit_files(pruned: torch.nn.Module, splits: Any, cfg: Any, device: Any) -> ModelFiles:
    """The fine-tuned pruned ViT's weights and its network.json (its input, the data it was fine-tuned on, its
    accuracy on the test split: a record, never a selection), as a pruned ViT of ``dartboard prune`` has them."""
    from safetensors.torch import save_file

    from dartboard.data.datasets import make_loader
    from dartboard.model_files import NETWORK_FILE, WEIGHTS_FILE
    from dartboard.platform.dario_finetune import network_of
    from dartboard.training.vit_finetune import evaluate

    test_acc = evaluate(pruned, make_loader(splits.test, 256, shuffle=False, seed=0), device) / 100.0
    network = network_of(splits.info, cfg.dataset, cfg.data_root, test_acc)
    state = {k: v.detach().cpu().contiguous() for k, v in pruned.state_dict().items()}

    def write(folder: Path) -> None:
        save_file(state, str(folder / WEIGHTS_FILE))
        (folder / NETWORK_FILE).write_text(json.dumps(network, indent=2))

    return write
