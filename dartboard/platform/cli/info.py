"""`dartboard info`: parameter count and multiply-adds of a genotype's network."""

from __future__ import annotations

import json
from typing import Any

import typer

from dartboard.errors import UserInputError, refuse_with

#: The genotype kinds whose network has a size of its own (info's cell-network flags do not apply), in words.
SIZED = {"mlp": "an mlp genotype (NASiam heads) lists its chains", "flux_mlp": "a PMSM flux model has its own layers "
         "and width, and (I_d, I_q) for its input"}
DATASET_SHAPES = {"digits": (1, 8, 10), "colour-digits": (3, 8, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100),
                  "imagenet": (3, 224, 1000)}


def network_info(genotype: str, channels: int, layers: int, auxiliary: bool, dataset: str) -> dict[str, Any]:
    from dartboard.spaces.limits import check_network_size

    check_network_size(channels, layers)  # before torch is imported: a bad size fails at once
    from dartboard.data.datasets import DatasetInfo
    from dartboard.spaces.catalog import resolve
    from dartboard.spaces.genotype import CELL_NETWORK_KINDS
    from dartboard.spaces.networks import count_parameters, multiply_adds
    from dartboard.training.final import TrainConfig, network_of

    geno = resolve(genotype)
    if geno.kind == "flux_mlp":
        return flux_info(genotype, geno)
    if dataset not in DATASET_SHAPES:
        raise UserInputError(f"dataset: unknown dataset {dataset!r}; expected one of {', '.join(DATASET_SHAPES)}")
    in_ch, size, classes = DATASET_SHAPES[dataset]
    if geno.kind not in CELL_NETWORK_KINDS:
        raise UserInputError(f"genotype {genotype!r} is a {geno.kind!r} genotype; info needs a cell network")
    cfg = TrainConfig(channels=channels, layers=layers, auxiliary=auxiliary)
    try:  # a ColorNAS genotype on a grayscale shape, an auxiliary head it does not have
        net = network_of(geno, cfg, DatasetInfo(dataset, in_ch, size, classes)).eval()
    except ValueError as err:
        raise UserInputError(f"genotype {genotype!r} on {dataset}: {err}") from None
    return {"genotype": genotype, "channels": channels, "layers": layers, "dataset": dataset,
            "parameters": count_parameters(net), "parameters_with_auxiliary": count_parameters(net, None),
            "multiply_adds": multiply_adds(net, (1, in_ch, size, size))}


def folder_info(folder: str) -> dict[str, Any]:
    """The trained network in ``folder`` (genotype.json and network.json, as ``dartboard train`` and ``dartboard
    pull --to`` write them), at the size and input it was trained with; no weights are read."""
    from dartboard.platform.tracking.models import GENOTYPE_FILE, NETWORK_FILE, check_model_folder
    from dartboard.spaces.genotype import load
    from dartboard.spaces.networks import count_parameters, multiply_adds
    from dartboard.training.final import network_of, recorded_network

    path = check_model_folder(folder, (GENOTYPE_FILE, NETWORK_FILE))
    geno = load(path / GENOTYPE_FILE)
    try:
        spec = json.loads((path / NETWORK_FILE).read_text())
        if geno.kind == "gates":
            return pruned_info(folder, geno, spec)
        cfg, shape = recorded_network(spec)
    except (ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"model {folder!r}: {NETWORK_FILE} is not a trained network's record ({err!r})") \
            from None
    net = network_of(geno, cfg, shape).eval()
    return {"genotype": folder, "channels": cfg.channels, "layers": cfg.layers, "auxiliary": cfg.auxiliary,
            "dataset": spec.get("dataset"), "input": [shape.in_channels, shape.input_size, shape.input_size],
            "parameters": count_parameters(net), "parameters_with_auxiliary": count_parameters(net, None),
            "multiply_adds": multiply_adds(net, (1, shape.in_channels, shape.input_size, shape.input_size))}


def pruned_info(folder: str, geno: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """A pruned ViT fine-tuned on an image folder (``dartboard prune --data-root``): what was kept, its input,
    parameters and the multiply-adds of its convolutions and linear layers (attention's products left out)."""
    from dartboard.spaces.networks import multiply_adds
    from dartboard.spaces.vit import count_parameters, rebuild_pruned

    net = rebuild_pruned(geno).eval()
    shape = [int(spec["in_channels"]), int(spec["input_size"]), int(spec["input_size"])]
    heads = {int(b): sorted(int(h) for h in kept) for b, kept in geno.heads_kept.items()}
    return {"genotype": folder, "kind": "gates", "model": geno.model, "blocks_kept": list(geno.blocks_kept),
            "n_blocks": geno.n_blocks, "heads_kept": {str(b): heads[b] for b in sorted(heads)},
            "n_heads": geno.n_heads, "dataset": spec.get("dataset"), "input": shape,
            "parameters": count_parameters(net), "multiply_adds": multiply_adds(net, (1, *shape))}


def flux_info(name: str, geno: Any) -> dict[str, Any]:
    """A PMSM flux model (``flux_mlp``): its architecture, parameters and multiply-adds per flux evaluation."""
    from dartboard.spaces.pmsm import FluxNet, count_parameters, multiply_adds

    return {"genotype": name, "kind": geno.kind, "architecture": geno.describe(),
            "hidden_layers": geno.hidden_layers, "width": geno.width, "decoupled": geno.decoupled,
            "activation": geno.activation.formula(), "parameters": count_parameters(FluxNet(geno)),
            "multiply_adds": multiply_adds(geno)}


def info(
    genotype: str = typer.Argument(..., help="Genotype JSON file or catalog name, a search's output folder, a "
                                             "trained network's folder (its size and input from network.json), or a "
                                             "registered version NAME@ALIAS or NAME:VERSION (its files, pulled)."),
    channels: int = typer.Option(None, help="Initial channels C (default 36)."),
    layers: int = typer.Option(None, help="Number of cells (default 20)."),
    auxiliary: bool = typer.Option(None, "--auxiliary/--no-auxiliary", help="Build the auxiliary head too "
                                   "(default: no)."),
    dataset: str = typer.Option(None, help="Input shape: digits, colour-digits, cifar10 (default), cifar100, "
                                           "imagenet."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (registered versions; default: "
                                                "$MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
) -> None:
    """Parameter count (without / with the auxiliary head) and multiply-adds of a genotype's network (of a
    trained network's folder: as trained); an mlp genotype (NASiam heads): its chains; a PMSM flux model: its
    size per flux evaluation."""
    import tempfile
    from pathlib import Path

    from dartboard.platform.cli.registered import is_registry_reference

    sizes = {"channels": channels, "layers": layers, "auxiliary": auxiliary, "dataset": dataset}
    if not is_registry_reference(genotype):
        if tracking_uri is not None:
            raise UserInputError(f"--tracking-uri: {genotype!r} is no registered version (NAME@ALIAS or "
                                 f"NAME:VERSION); a file, folder or catalog name is read without a registry")
        _describe(genotype, genotype, sizes, as_json)
        return
    from dartboard.platform.tracking.models import pull_model

    with tempfile.TemporaryDirectory(prefix="dartboard-info-") as tmp:
        folder, _ = pull_model(tracking_uri, genotype, Path(tmp) / "model")
        _describe(str(folder), genotype, sizes, as_json)


def _describe(path: str, genotype: str, sizes: dict[str, Any], as_json: bool) -> None:
    """:func:`info` of the genotype, search folder or model folder at ``path``, named ``genotype``."""
    from pathlib import Path

    from dartboard.model_files import GENOTYPE_FILE, NETWORK_FILE, is_flux_model
    from dartboard.spaces.catalog import resolve

    channels, layers, auxiliary, dataset = (sizes[k] for k in ("channels", "layers", "auxiliary", "dataset"))
    folder = Path(path)  # a trained network's folder; a search's (genotype.json alone) is its genotype's
    flux_model = folder.is_dir() and is_flux_model(folder)  # pmsm compare's OUT/models/NAME/seedN
    if not flux_model and folder.is_dir() and ((folder / NETWORK_FILE).is_file()
                                               or not (folder / GENOTYPE_FILE).is_file()):
        refuse_with(f"model folder {genotype!r}", {"--channels": channels, "--layers": layers, "--dataset": dataset,
                                                   "--auxiliary" if auxiliary else "--no-auxiliary":
                                                   auxiliary is not None},
                    "the trained network's channels, cells, input and auxiliary head are in its network.json")
        _print_sized({**folder_info(path), "genotype": genotype}, as_json)
        return
    geno = _flux_model_genotype(folder) if flux_model else resolve(path)
    if geno.kind in SIZED:  # their size is their own: the cell network's flags would be ignored (not checked)
        refuse_with(f"genotype {genotype!r}", {"--channels": channels, "--layers": layers, "--dataset": dataset,
                                               "--auxiliary" if auxiliary else "--no-auxiliary": auxiliary is not None},
                    f"{SIZED[geno.kind]}, with no channels, cells, input dataset or auxiliary head to choose")
    if geno.kind == "flux_mlp":
        result = flux_info(genotype, geno)
        if as_json:
            typer.echo(json.dumps(result))
            return
        typer.echo(f"{genotype}: {result['architecture']}")
        typer.echo(f"parameters: {result['parameters']:,}")
        typer.echo(f"multiply-adds per flux evaluation: {result['multiply_adds']:,}")
        return
    if geno.kind == "mlp":
        chains = {name: list(ops) for name, ops in geno.chains.items()}
        typer.echo(json.dumps({"genotype": genotype, "kind": "mlp", "chains": chains, "meta": dict(geno.meta)})
                   if as_json else "\n".join(f"{name} ({len(ops)} layers): {' -> '.join(ops) or 'none'}"
                                             for name, ops in chains.items()))
        return
    channels, layers = 36 if channels is None else channels, 20 if layers is None else layers
    auxiliary, dataset = bool(auxiliary), "cifar10" if dataset is None else dataset
    _print_sized({**network_info(path, channels, layers, auxiliary, dataset), "genotype": genotype,
                  "auxiliary": auxiliary}, as_json)


def _flux_model_genotype(folder):
    """The genotype of a trained flux model's folder (its result.json; the weights are checked against it)."""
    from dartboard.training.pmsm import load_flux_model

    return load_flux_model(folder)[0].genotype


def _print_sized(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result))
        return
    if result.get("kind") == "gates":
        typer.echo(f"{result['genotype']}: {result['model']} pruned by DARIO, blocks kept {result['blocks_kept']} of "
                   f"{result['n_blocks']}, {result['dataset']} input ({' x '.join(map(str, result['input']))})")
        n_heads, heads = result["n_heads"], result["heads_kept"]
        if any(len(heads.get(str(b), range(n_heads))) < n_heads for b in result["blocks_kept"]):  # heads pruned
            typer.echo("attention heads kept: " + ", ".join(
                f"block {b}: {len(heads.get(str(b), range(n_heads)))} of {n_heads}" for b in result["blocks_kept"]))
        typer.echo(f"parameters: {result['parameters']:,} ({result['parameters'] / 1e6:.2f}M)")
        typer.echo(f"multiply-adds of its convolutions and linear layers: {result['multiply_adds']:,}")
        return
    shape = f" ({result['input'][0]} x {result['input'][1]} x {result['input'][2]})" if "input" in result else ""
    typer.echo(f"{result['genotype']}: C={result['channels']}, {result['layers']} cells, {result['dataset']} "
               f"input{shape}")
    typer.echo(f"parameters (without auxiliary head): {result['parameters']:,} ({result['parameters'] / 1e6:.2f}M)")
    if result["auxiliary"]:
        typer.echo(f"parameters (with auxiliary head):    {result['parameters_with_auxiliary']:,} "
                   f"({result['parameters_with_auxiliary'] / 1e6:.2f}M)")
    typer.echo(f"multiply-adds per input: {result['multiply_adds']:,} ({result['multiply_adds'] / 1e6:.1f}M)")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
