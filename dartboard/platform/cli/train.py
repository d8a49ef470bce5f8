"""`dartboard train`: train the network of a genotype from scratch and print its test accuracy."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from dartboard.errors import UserInputError, user_input

log = logging.getLogger("dartboard")


def train(
    genotype: str = typer.Argument(..., help="Genotype JSON file or catalog name (e.g. darts-v2)."),
    channels: int = typer.Option(None, help="Initial channels C."),
    layers: int = typer.Option(None, help="Number of cells."),
    epochs: int = typer.Option(None, help="Training epochs."),
    batch_size: int = typer.Option(None, help="Batch size."),
    lr: float = typer.Option(0.025, help="SGD learning rate (cosine to 0)."),
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
) -> None:
    """Train the network of a genotype from scratch and print its test accuracy."""
    from dartboard.data.colour_digits import COLOUR_DIGITS
    from dartboard.data.datasets import load_dataset
    from dartboard.platform.config import DIGITS_TRAIN_DEFAULTS, is_small_dataset, resolve_device
    from dartboard.spaces.catalog import resolve
    from dartboard.spaces.genotype import ColourGenotype
    from dartboard.training.final import TrainConfig, train_genotype

    geno = resolve(genotype)
    dataset = dataset or (COLOUR_DIGITS if isinstance(geno, ColourGenotype) else "digits")
    splits = load_dataset(dataset, data_root)
    defaults = DIGITS_TRAIN_DEFAULTS if is_small_dataset(dataset) else {}
    values = {"channels": channels, "layers": layers, "epochs": epochs, "batch_size": batch_size}
    chosen = {k: v if v is not None else defaults.get(k, getattr(TrainConfig, k)) for k, v in values.items()}
    with user_input("device"):  # only checks that the device exists
        resolved = resolve_device(device)
    cfg = TrainConfig(**chosen, lr=lr, auxiliary=auxiliary, drop_path_prob=drop_path, seed=seed, device=resolved)
    if cfg.epochs < 1 or cfg.channels < 2 or cfg.layers < 1:
        raise UserInputError(f"epochs, channels and layers must be positive "
                         f"(got {cfg.epochs}, {cfg.channels}, {cfg.layers})")
    from dartboard.training.final import network_of

    with user_input(f"genotype {genotype!r} on {dataset}"):  # builds the network once: bad input fails before training
        network_of(geno, cfg, splits.info)
    if out is None:
        path = Path(genotype)
        out_dir = path.parent if path.is_file() else Path("runs") / f"train-{genotype}"
    else:
        out_dir = Path(out)
    log.info("train: %s, C=%d, %d cells, %d epochs on %s", genotype, cfg.channels, cfg.layers, cfg.epochs, dataset)
    result = train_genotype(geno, splits, cfg, out_dir,
                            on_epoch=lambda e, loss: log.info("epoch %3d  loss %.4f", e + 1, loss))
    if not no_mlflow:
        from dartboard.platform.tracking.runs import log_train_run

        log_train_run(tracking_uri, "dartboard", genotype, {**cfg.__dict__, "dataset": dataset}, result, out_dir)
    typer.echo(f"weights written to {result.weights_path} (sha256 {result.weights_sha256})")
    typer.echo(f"parameters {result.parameters}")
    typer.echo(f"test_acc {result.test_acc:.4f}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
