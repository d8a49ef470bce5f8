"""`dartboard search`, `train`, `info` and `bench speed`."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import typer

log = logging.getLogger("dartboard")


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML scalars (numbers, bools, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def search(
    config: Path = typer.Option(None, "--config", "-c", help="YAML run config (flags override it)."),
    searcher: str = typer.Option(None, help="Searcher or preset name (see `dartboard searchers`)."),
    space: str = typer.Option(None, help="Cell space (darts, darts-none, s_o, s1..s4, ...)."),
    start: str = typer.Option(None, help="DARTOpti: starting architecture (resnet18, resnet50, xception)."),
    dataset: str = typer.Option(None, help="digits (default), cifar10, cifar100, imagefolder."),
    data_root: str = typer.Option(None, help="Folder holding the local dataset."),
    epochs: int = typer.Option(None, help="Search epochs."),
    batch_size: int = typer.Option(None, help="Batch size (train and val)."),
    order: int = typer.Option(None, help="DARTS order: 1 or 2."),
    precision: str = typer.Option(None, help="fp32, bf16 or fp16."),
    seed: int = typer.Option(None, help="Seed of the run."),
    device: str = typer.Option(None, help="auto (default), cpu, cuda."),
    out: str = typer.Option(None, help="Output directory (default runs/search-...)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default sqlite:///mlflow.db)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
    set_: list[str] = typer.Option(None, "--set", help="Searcher option KEY=VALUE (repeatable)."),
) -> None:
    """Run an architecture search and write genotype.json, alpha history and cell pictures."""
    from dartboard.platform.config import SearchRunConfig, load_yaml
    from dartboard.platform.run import run_search_job

    data = load_yaml(config) if config else {}
    flags = {"searcher": searcher, "dataset": dataset, "data_root": data_root, "batch_size": batch_size,
             "seed": seed, "device": device, "out": out, "tracking_uri": tracking_uri}
    data.update({k: v for k, v in flags.items() if v is not None})
    if no_mlflow:
        data["mlflow"] = False
    options = dict(data.get("options") or {})
    options.update({k: v for k, v in {"space": space, "start": start, "epochs": epochs, "order": order,
                                      "precision": precision}.items() if v is not None})
    options.update(parse_set(set_))
    data["options"] = options
    cfg = SearchRunConfig(**data)
    result = run_search_job(cfg)
    typer.echo(f"genotype written to {result.artifacts['genotype']}")
    typer.echo(json.dumps(__import__("dartboard.spaces.genotype", fromlist=["to_dict"]).to_dict(result.genotype)))
    typer.echo(f"search took {result.seconds:.1f} s")


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
) -> None:
    """Train the network of a genotype from scratch and print its test accuracy."""
    from dartboard.platform.config import DIGITS_TRAIN_DEFAULTS, resolve_device
    from dartboard.platform.data import load_dataset
    from dartboard.platform.train import TrainConfig, train_genotype
    from dartboard.spaces.genotype import resolve

    geno = resolve(genotype)
    splits = load_dataset(dataset, data_root)
    defaults = DIGITS_TRAIN_DEFAULTS if dataset == "digits" else {}
    values = {"channels": channels, "layers": layers, "epochs": epochs, "batch_size": batch_size}
    chosen = {k: v if v is not None else defaults.get(k, getattr(TrainConfig, k)) for k, v in values.items()}
    cfg = TrainConfig(**chosen, lr=lr, auxiliary=auxiliary, drop_path_prob=drop_path, seed=seed,
                      device=resolve_device(device))
    if cfg.epochs < 1 or cfg.channels < 2 or cfg.layers < 1:
        raise ValueError(f"epochs, channels and layers must be positive "
                         f"(got {cfg.epochs}, {cfg.channels}, {cfg.layers})")
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


DATASET_SHAPES = {"digits": (1, 8, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "imagenet": (3, 224, 1000)}


def network_info(genotype: str, channels: int, layers: int, auxiliary: bool, dataset: str) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dartboard.spaces.genotype import resolve
    from dartboard.spaces.networks import DiscreteNetwork, count_parameters

    if dataset not in DATASET_SHAPES:
        raise ValueError(f"dataset: unknown dataset {dataset!r}; expected one of {', '.join(DATASET_SHAPES)}")
    in_ch, size, classes = DATASET_SHAPES[dataset]
    geno = resolve(genotype)
    if geno.kind not in ("darts", "cells"):
        raise ValueError(f"genotype {genotype!r} is a {geno.kind!r} genotype; info needs a cell network")
    net = DiscreteNetwork(geno, C=channels, layers=layers, auxiliary=auxiliary, num_classes=classes,
                          in_channels=in_ch, input_size=size).eval()
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
    dataset: str = typer.Option("cifar10", help="Input shape: digits, cifar10, cifar100, imagenet."),
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


def bench_speed(
    batch: int = typer.Option(64, help="Batch size."),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    order: int = typer.Option(1, help="1 or 2."),
    channels: int = typer.Option(16),
    layers: int = typer.Option(8),
    input_size: int = typer.Option(32),
    warmup: int = typer.Option(3),
    repeats: int = typer.Option(10),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """ms per search iteration (alpha step + weight step) of the default supernet on synthetic data."""
    result = speed_benchmark(batch, device, precision, order, channels, layers, input_size, warmup, repeats)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"device {result['device']}  precision {precision}  order {order}  batch {batch}  "
               f"C={channels} layers={layers} input {input_size}x{input_size}")
    typer.echo(f"median {result['ms_per_iter']:.1f} ms/iter (min {result['ms_min']:.1f}, max {result['ms_max']:.1f}) "
               f"over {repeats} iterations after {warmup} warm-up; {result['images_per_s']:.1f} images/s")


def speed_benchmark(batch: int, device: str, precision: str, order: int, channels: int, layers: int,
                    input_size: int, warmup: int, repeats: int) -> dict[str, Any]:
    import torch

    from dartboard.platform.config import resolve_device
    from dartboard.searchers.darts import BilevelSearcher, DartsConfig

    dev = resolve_device(device)
    cfg = DartsConfig(C=channels, layers=layers, input_size=input_size, order=order, precision=precision, device=dev)
    searcher = BilevelSearcher(cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, input_size, input_size, generator=gen).to(dev)
    y = torch.randint(0, 10, (batch,), generator=gen).to(dev)

    def sync() -> None:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        searcher.step((x, y), (x, y))
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        searcher.step((x, y), (x, y))
        sync()
        times.append(time.perf_counter() - start)
    med = statistics.median(times)
    return {"device": dev, "ms_per_iter": med * 1e3, "ms_min": min(times) * 1e3, "ms_max": max(times) * 1e3,
            "images_per_s": batch / med}


def searchers_cmd() -> None:
    """List the registered searchers and presets."""
    from dartboard.searchers.registry import SEARCHERS, _load_builtin

    _load_builtin()
    for name in sorted(SEARCHERS):
        typer.echo(f"{name:24s} {SEARCHERS[name].description}")


def register(app: typer.Typer) -> None:
    from dartboard.platform.cli import bench_app

    app.command("search")(search)
    app.command("train")(train)
    app.command("info")(info)
    app.command("searchers")(searchers_cmd)
    bench_app.command("speed")(bench_speed)
