"""`dartboard info`: parameter count and multiply-adds of a genotype's network."""

from __future__ import annotations

import json
from typing import Any

import typer

from dartboard.errors import UserInputError

DATASET_SHAPES = {"digits": (1, 8, 10), "colour-digits": (3, 8, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100),
                  "imagenet": (3, 224, 1000)}


def network_info(genotype: str, channels: int, layers: int, auxiliary: bool, dataset: str) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dartboard.data.datasets import DatasetInfo
    from dartboard.spaces.catalog import resolve
    from dartboard.spaces.networks import count_parameters
    from dartboard.training.final import TrainConfig, network_of

    if dataset not in DATASET_SHAPES:
        raise UserInputError(f"dataset: unknown dataset {dataset!r}; expected one of {', '.join(DATASET_SHAPES)}")
    in_ch, size, classes = DATASET_SHAPES[dataset]
    geno = resolve(genotype)
    if geno.kind not in ("darts", "cells", "colornas"):
        raise UserInputError(f"genotype {genotype!r} is a {geno.kind!r} genotype; info needs a cell network")
    cfg = TrainConfig(channels=channels, layers=layers, auxiliary=auxiliary)
    try:  # a ColorNAS genotype on a grayscale shape, an auxiliary head it does not have
        net = network_of(geno, cfg, DatasetInfo(dataset, in_ch, size, classes)).eval()
    except ValueError as err:
        raise UserInputError(f"genotype {genotype!r} on {dataset}: {err}") from None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, in_ch, size, size))
    return {"genotype": genotype, "channels": channels, "layers": layers, "dataset": dataset,
            "parameters": count_parameters(net), "parameters_with_auxiliary": count_parameters(net, None),
            "multiply_adds": counter.get_total_flops() // 2}


def info(
    genotype: str = typer.Argument(..., help="Genotype JSON file or catalog name."),
    channels: int = typer.Option(36, help="Initial channels C."),
    layers: int = typer.Option(20, help="Number of cells."),
    auxiliary: bool = typer.Option(False, help="Build the auxiliary head too."),
    dataset: str = typer.Option("cifar10", help="Input shape: digits, colour-digits, cifar10, cifar100, imagenet."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Parameter count (without / with the auxiliary head) and multiply-adds of a genotype's network."""
    result = network_info(genotype, channels, layers, auxiliary, dataset)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{genotype}: C={channels}, {layers} cells, {dataset} input")
    typer.echo(f"parameters (without auxiliary head): {result['parameters']:,} ({result['parameters'] / 1e6:.2f}M)")
    if auxiliary:
        typer.echo(f"parameters (with auxiliary head):    {result['parameters_with_auxiliary']:,} "
                   f"({result['parameters_with_auxiliary'] / 1e6:.2f}M)")
    typer.echo(f"multiply-adds per input: {result['multiply_adds']:,} ({result['multiply_adds'] / 1e6:.1f}M)")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
