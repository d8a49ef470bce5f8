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
    lr: float = typer.Option(None, help="SGD learning rate, cosine to 0 (default 0.025; mlp heads 0.06)."),
    auxiliary: bool = typer.Option(False, help="Auxiliary head (weight 0.4)."),
    drop_path: float = typer.Option(0.0, help="Drop path probability (ramped)."),
    dataset: str = typer.Option(None, help="digits, colour-digits, cifar10, cifar100, imagefolder (default: digits; "
                                "colour-digits for a ColorNAS genotype)."),
    data_root: str = typer.Option(None, help="Folder holding the local dataset."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    out: str = typer.Option(None, help="Where weights go (default: next to the genotype file)."),
    tracking_uri: str = typer.Option(None),
    no_mlflow: bool = typer.Option(False, "--no-mlflow"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (test metrics, per-epoch "
                                                       "history, weights and their SHA-256)."),
    framework: str = typer.Option(None, help="mlp genotypes (NASiam): simsiam, simclr or moco (default: simsiam "
                                             "with a predictor, else simclr)."),
) -> None:
    """Train the network of a genotype from scratch and print its test accuracy; an mlp genotype (NASiam):
    SSL pretraining with its heads, then linear probe, kNN, collapse and retrieval mAP on held-out data."""
    from dartboard.data.datasets import check_dataset
    from dartboard.platform.config import resolve_device
    from dartboard.spaces.catalog import resolve

    geno = resolve(genotype)
    if framework is not None and geno.kind != "mlp":
        raise UserInputError(f"--framework: only for mlp genotypes (NASiam heads); {genotype!r} is a {geno.kind!r} "
                             f"genotype")
    with user_input("device"):  # only checks that the device exists
        resolved = resolve_device(device)
    if geno.kind == "mlp":
        from dartboard.platform.cli.ssl import train_heads

        result = train_heads(geno, genotype, framework=framework, channels=channels, epochs=epochs,
                             batch_size=batch_size, lr=0.06 if lr is None else lr, dataset=dataset or "digits",
                             data_root=data_root, seed=seed, device=resolved, out=out)
        typer.echo(f"weights written to {result['weights']}")
        for key in ("probe_acc", "knn_acc", "collapse_std", "retrieval_map"):
            typer.echo(f"{key} {result[key]:.4f} (held-out)")
        return
    from dartboard.data.colour_digits import COLOUR_DIGITS
    from dartboard.spaces.genotype import ColourGenotype

    dataset = dataset or (COLOUR_DIGITS if isinstance(geno, ColourGenotype) else "digits")
    check_dataset(dataset)
    _train_cells(geno, genotype, _train_config(dataset, channels, layers, epochs, batch_size,
                                               0.025 if lr is None else lr, auxiliary, drop_path, seed, resolved),
                 dataset, data_root, out, tracking_uri, no_mlflow, as_json)


def _train_config(dataset, channels, layers, epochs, batch_size, lr, auxiliary, drop_path, seed, device):
    from dartboard.platform.config import DIGITS_TRAIN_DEFAULTS, is_small_dataset
    from dartboard.training.final import TrainConfig

    defaults = DIGITS_TRAIN_DEFAULTS if is_small_dataset(dataset) else {}
    values = {"channels": channels, "layers": layers, "epochs": epochs, "batch_size": batch_size}
    chosen = {k: v if v is not None else defaults.get(k, getattr(TrainConfig, k)) for k, v in values.items()}
    try:
        return TrainConfig(**chosen, lr=lr, auxiliary=auxiliary, drop_path_prob=drop_path, seed=seed, device=device)
    except UserInputError as err:  # name the flag, not the config field
        field, _, rest = str(err).partition(":")
        raise UserInputError(f"{FLAGS.get(field, field)}:{rest}") from None


def _train_cells(geno, genotype: str, cfg, dataset: str, data_root, out, tracking_uri, no_mlflow: bool,
                 as_json: bool) -> None:
    from dartboard.data.datasets import load_dataset
    from dartboard.platform.checks import check_tracking_server, check_writable_dir
    from dartboard.training.final import network_of, train_genotype

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
    with user_input(f"genotype {genotype!r} on {dataset}"):  # builds the network once: bad input fails before training
        network_of(geno, cfg, splits.info)
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
