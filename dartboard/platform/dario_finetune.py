"""A pruned ViT fine-tuned on the user's own image folder (``dartboard prune MODEL --checkpoint W --data-root D``):
the folder read at the model's input size with the model's own channel statistics, the thesis protocol (6.1.2:
the last block, the final norm and the head) or every layer, and the test accuracy of the original, of the pruned
model before and after fine-tuning. Where the model's head has another number of outputs than the folder has
classes (an ImageNet model on a user's 5 classes), the pruned model gets a new head for the folder's classes
(recorded in the genotype, so that ``dartboard.load`` rebuilds it) and only its accuracy after fine-tuning means
something."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from dartboard.data.datasets import IMAGENET_MEAN, IMAGENET_STD, Splits, image_folder, make_loader
from dartboard.errors import DataError
from dartboard.platform.dario_run import PruneResult
from dartboard.searchers.base import seed_everything
from dartboard.spaces.vit import infer_input_shape
from dartboard.training.vit_finetune import FINETUNE_LR, evaluate, finetune_last_block, train_epochs

log = logging.getLogger("dartboard")
PROTOCOLS = {"last-block": "the last block, the final norm and the head (thesis 6.1.2)", "all": "every layer"}


@dataclass(frozen=True)
class Finetuning:
    """How the pruned model is fine-tuned: ``protocol`` one of :data:`PROTOCOLS`; AdamW (weight decay 0.05) at
    ``lr`` with one epoch of linear warm-up (none for a one-epoch fine-tuning), cosine decay and label smoothing
    0.1: the demo's recipe (DeiT's)."""

    epochs: int
    protocol: str = "last-block"
    lr: float = FINETUNE_LR
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--finetune: expected one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"fine-tuning: epochs and batch size must be at least 1 and the learning rate positive "
                             f"(got {self.epochs}, {self.batch_size}, {self.lr})")


def folder_for(model: nn.Module, root: str) -> Splits:
    """``root``'s train/ and test/ splits resized to ``model``'s input size and normalised with its pretrained
    configuration's mean and std (ImageNet's when it has none); an image folder is RGB: a model of another
    number of input channels is refused."""
    channels, height, width = infer_input_shape(model)
    if channels != 3:
        raise DataError(f"--data-root: an image folder's images are RGB (3 channels), the model takes {channels} "
                        "(its in_chans)")
    if height != width:
        raise DataError(f"--data-root: the model takes {height}x{width} images; image folders are read square")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    splits = image_folder(root, height, "imagefolder", mean, std)
    if splits.info.num_classes < 2:  # every label the same: the fine-tuning's cross-entropy is 0 from the first step
        raise DataError(f"--data-root: {root!r} holds one class folder in train/ ({', '.join(splits.info.classes)}); "
                        f"fine-tuning a classifier needs at least two classes")
    return splits


def network_of(info: Any, dataset: str, data_root: str | None, test_acc: float) -> dict[str, Any]:
    """network.json of a fine-tuned pruned ViT: its input (size, channels, normalisation), classes, the data
    it was fine-tuned on (so that `dartboard predict` and `dartboard evaluate` take it as a trained network's)
    and its test accuracy there (a fraction, as a trained network's)."""
    from dartboard.data.catalog import absolute_root
    from dartboard.data.preprocess import preprocessing_of

    pre = preprocessing_of(info)
    return {"kind": "pruned-vit", "in_channels": info.in_channels, "input_size": info.input_size,
            "num_classes": info.num_classes, "dataset": dataset,
            **({"data_root": absolute_root(data_root)} if data_root is not None else {}),
            **({"classes": list(info.classes)} if info.classes else {}),
            "preprocessing": pre.to_dict() if pre is not None else None, "test_acc": test_acc}


def finetune_pruned(original: nn.Module, result: PruneResult, splits: Splits, settings: Finetuning,
                    data_root: str, device: Any = "cpu") -> list[str]:
    """Fine-tune ``result.pruned`` in place on ``splits`` (read from ``data_root``; a new head first where the
    classes differ, recorded in ``result.genotype``); the accuracies go to ``result.metrics``, the network's
    record to ``result.network``; returns the lines to print."""
    classes = splits.info.classes
    test = make_loader(splits.test, 256, shuffle=False, seed=settings.seed)
    same_head = getattr(original, "num_classes", None) == len(classes)
    lines = []
    if same_head:
        result.metrics["accuracy_original"] = evaluate(original, test, device)
        result.metrics["accuracy_pruned_before_finetune"] = evaluate(result.pruned, test, device)
    else:
        log.info("prune: the model's head has %s outputs, the folder %d classes: the pruned ViT gets a new head for "
                 "them (%s)", getattr(original, "num_classes", "?"), len(classes), ", ".join(classes))
        result.pruned.reset_classifier(len(classes))
        result.pruned.to(device)
        kwargs = {**result.genotype.meta.get("create_kwargs", {}), "num_classes": len(classes)}
        result.genotype = replace(result.genotype, meta={**result.genotype.meta, "create_kwargs": kwargs})
    result.genotype = replace(result.genotype, meta={**result.genotype.meta, "classes": list(classes)})
    seed_everything(settings.seed)
    train = make_loader(splits.train, settings.batch_size, shuffle=True, seed=settings.seed)
    warmup = 1.0 if settings.epochs > 1 else 0.0
    log.info("prune: fine-tuning %s for %d epoch(s) on %d images of %d classes", PROTOCOLS[settings.protocol],
             settings.epochs, len(splits.train), len(classes))
    if settings.protocol == "last-block":
        finetune_last_block(result.pruned, train, settings.epochs, settings.lr, device, warmup, label_smoothing=0.1)
    else:
        train_epochs(result.pruned, train, settings.epochs, settings.lr, device=device, warmup_epochs=warmup,
                     label_smoothing=0.1, description="fine-tuning all layers")
    after = result.metrics["accuracy_pruned_finetuned"] = evaluate(result.pruned, test, device)
    result.network = network_of(splits.info, "imagefolder", data_root, after / 100.0)
    if same_head:
        lines.append(f"test accuracy ({len(splits.test)} images): original {result.metrics['accuracy_original']:.2f}%"
                     f"  pruned {result.metrics['accuracy_pruned_before_finetune']:.2f}% before fine-tuning, "
                     f"{after:.2f}% after ({after - result.metrics['accuracy_original']:+.2f} points)")
    else:
        lines.append(f"test accuracy ({len(splits.test)} images) of the pruned ViT with its new head, fine-tuned: "
                     f"{after:.2f}% (the original's head has other classes: no accuracy before)")
    return lines
