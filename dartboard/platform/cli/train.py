"""`dartboard train`: train the network of a genotype from scratch and print its test accuracy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from dartboard.errors import UserInputError, user_input

log = logging.getLogger("dartboard")
#: TrainConfig's fields as the flags that set them (errors name the flag the user typed).
FLAGS = {"channels": "--channels", "layers": "--layers", "epochs": "--epochs", "batch_size": "--batch-size",
         "lr": "--lr", "drop_path_prob": "--drop-path"}


def train(
    genotype: str = typer.Argument(..., help="Genotype JSON file or catalog name (e.g. darts-v2)."),
    channels: int = typer.Option(None, help="Initial channels C."),
    layers: int = typer.Option(None, help="Number of cells."),
    epochs: int = typer.Option(None, help="Training epochs."),
    batch_size: int = typer.Option(None, help="Batch size."),
    lr: float = typer.Option(0.025, help="SGD learning rate (cosine to 0)."),
    auxiliary: bool = typer.Option(False, help="Auxiliary head (weight 0.4)."),
    drop_path: float = typer.Option(0.0, help="Drop path probability (ramped)."),
    dataset: str = typer.Option("digits", help="digits, cifar10, cifar100, imagefolder."),
    data_root: str = typer.Option(None, help="Folder holding the local dataset."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    out: str = typer.Option(None, help="Where weights go (default: next to the genotype file)."),
    tracking_uri: str = typer.Option(None),
    no_mlflow: bool = typer.Option(False, "--no-mlflow"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (test metrics, per-epoch "
                                                       "history, weights and their SHA-256)."),
) -> None:
    """Train the network of a genotype from scratch and print its test accuracy."""
    from dartboard.data.datasets import check_dataset, load_dataset
    from dartboard.platform.checks import check_tracking_server, check_writable_dir
    from dartboard.platform.config import DIGITS_TRAIN_DEFAULTS, resolve_device
    from dartboard.spaces.catalog import resolve
    from dartboard.training.final import TrainConfig, train_genotype

    check_dataset(dataset)
    defaults = DIGITS_TRAIN_DEFAULTS if dataset == "digits" else {}
    values = {"channels": channels, "layers": layers, "epochs": epochs, "batch_size": batch_size}
    chosen = {k: v if v is not None else defaults.get(k, getattr(TrainConfig, k)) for k, v in values.items()}
    with user_input("device"):  # only checks that the device exists
        resolved = resolve_device(device)
    try:
        cfg = TrainConfig(**chosen, lr=lr, auxiliary=auxiliary, drop_path_prob=drop_path, seed=seed, device=resolved)
    except UserInputError as err:  # name the flag, not the config field
        field, _, rest = str(err).partition(":")
        raise UserInputError(f"{FLAGS.get(field, field)}:{rest}") from None
    geno = resolve(genotype)
    if out is None:
        path = Path(genotype)
        out_dir = path.parent if path.is_file() else Path("runs") / f"train-{genotype}"
    else:
        out_dir = Path(out)
    check_writable_dir(out_dir, "--out")  # before training, not after it
    if not no_mlflow:
        from dartboard.platform.tracking.runs import tracking_uri as resolved_uri

        check_tracking_server(resolved_uri(tracking_uri))
    splits = load_dataset(dataset, data_root)
    log.info("train: %s, C=%d, %d cells, %d epochs on %s", genotype, cfg.channels, cfg.layers, cfg.epochs, dataset)
    result = train_genotype(geno, splits, cfg, out_dir, on_epoch=lambda e, m: log.info(
        "epoch %3d  train_loss %.4f  train_acc %.4f  (means over the epoch, train mode)", e + 1, m["train_loss"],
        m["train_acc"]))
    if not no_mlflow:
        from dartboard.platform.tracking.runs import log_train_run

        log_train_run(tracking_uri, "dartboard", genotype, {**cfg.__dict__, "dataset": dataset}, result, out_dir)
    if as_json:
        typer.echo(json.dumps({"genotype": genotype, "dataset": dataset, "test_acc": result.test_acc,
                               "test_loss": result.test_loss, "parameters": result.parameters,
                               "seconds": round(result.seconds, 3), "weights": str(result.weights_path),
                               "weights_sha256": result.weights_sha256, "history": result.history,
                               "config": {k: v for k, v in cfg.__dict__.items()}}, indent=1))
        return
    typer.echo(f"weights written to {result.weights_path} (sha256 {result.weights_sha256})")
    typer.echo(f"parameters {result.parameters}")
    typer.echo(f"test_loss {result.test_loss:.4f}  (eval mode: BatchNorm running statistics)")
    typer.echo(f"test_acc {result.test_acc:.4f}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
