"""`dartboard export`: a trained network as a file that runs without dartboard (ONNX, TorchScript, pt2)."""

from __future__ import annotations

from pathlib import Path

import typer

from dartboard.errors import UserInputError, refuse_with
from dartboard.model_files import NETWORK_FILE, is_flux_model

#: what an exported PMSM flux model computes, said when it is written
FLUX_IO = ("currents", "flux_and_inductances")


def is_model_ref(source: str) -> bool:
    """A registry reference (``models:/...``, ``NAME@ALIAS``, ``NAME:VERSION``), not a genotype."""
    return source.startswith("models:/") or "@" in source or (":" in source and source.rsplit(":", 1)[1].isdigit())


def export(
    source: str = typer.Argument(..., help="NAME@ALIAS / NAME:VERSION / models:/... of a registered network, a "
                                           "folder holding a trained network (what dartboard train and dartboard "
                                           "pull --to write), or a genotype (JSON file or catalog name) with "
                                           "--weights."),
    out: Path = typer.Option(..., "--out", help="The file to write."),
    fmt: str = typer.Option(None, "--format", help="onnx, torchscript or pt2 (default: the one --out's extension "
                                                   "names: .onnx, .pt or .ts, .pt2)."),
    weights: Path = typer.Option(None, help="weights.safetensors of the genotype's trained network."),
    network: Path = typer.Option(None, help="network.json (default: next to --weights)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (registry references)."),
) -> None:
    """Export a trained network; the file is loaded by its own runtime and its outputs compared with the
    PyTorch network's on random inputs before it is written to --out."""
    from dartboard.platform.checks import check_writable_file
    from dartboard.platform.export import check_format, format_of

    fmt = format_of(out, fmt)
    check_format(fmt)  # a missing package fails here, before any work
    check_writable_file(out, "--out")
    if is_model_ref(source):
        refuse_with(f"registered model {source!r}", {"--weights": weights, "--network": network},
                    "its weights and network.json are exported from the registry, not from files")
        net, shape, io = _registered(source, tracking_uri)
    elif Path(source).is_dir():
        refuse_with(f"model folder {source!r}", {"--weights": weights, "--network": network,
                                                 "--tracking-uri": tracking_uri},
                    "its weights and network.json are the folder's own")
        net, shape, io = _folder(source)
    else:
        if tracking_uri is not None:
            raise UserInputError(f"--tracking-uri: {tracking_uri!r} would be ignored: {source!r} is a genotype, "
                                 f"exported from the files --weights and --network, not from a registry")
        from dartboard.spaces.catalog import resolve
        from dartboard.spaces.genotype import CELL_NETWORK_KINDS as CELLS  # `dartboard train` writes their files

        genotype = resolve(source)
        if genotype.kind == "flux_mlp":
            raise UserInputError(f"genotype {source!r} is a PMSM flux model's; export its trained model: the folder "
                                 f"`dartboard pmsm compare` wrote it to (OUT/models/NAME/seedN) or its registered "
                                 f"version (pmsm-NAME)")
        if genotype.kind not in CELLS:
            raise UserInputError(f"genotype {source!r} is of kind {genotype.kind!r}; export takes the trained network "
                                 f"of a {', '.join(CELLS[:-1])} or {CELLS[-1]} genotype")
        net, shape, io = _image_input(*_from_files(source, genotype, weights, network))
    from dartboard.platform.export import export_network

    flux = shape == (2,)
    report = export_network(net, shape, fmt, out, names=FLUX_IO if flux else ("input", "logits"))
    typer.echo(f"{report.format} written to {report.path} ({report.bytes} bytes); outputs equal the network's on "
               f"random inputs (max |difference| {report.max_abs_difference:.3g})")
    typer.echo(io)


def _flux_io() -> str:
    from dartboard.spaces.pmsm_lookup import COLUMNS

    return (f"input: currents [N, 2] (I_d, I_q, per unit); output [N, 6]: {', '.join(COLUMNS)} (the flux linkages "
            f"and the differential inductances L_xy = d lambda_x / d I_y)")


def _image_input(net, spec) -> tuple:
    """(the network, the shape of one input, what it reads and returns in words) of an image network and its
    network.json. The file holds the network only: the normalisation network.json records is the caller's to apply."""
    shape = (int(spec["in_channels"]), int(spec["input_size"]), int(spec["input_size"]))
    pre = spec.get("preprocessing") or {}
    how = (f"pixels in [0, 1] normalised per channel, (x - mean) / std with mean {pre['mean']} and std {pre['std']} "
           f"(network.json's preprocessing, which dartboard predict applies)" if pre.get("mean") and pre.get("std")
           else "normalised as the training data's loader did (network.json records no preprocessing)")
    return net, shape, (f"input: images [N, {shape[0]}, {shape[1]}, {shape[2]}], {how}; output: logits "
                        f"[N, {spec.get('num_classes', '?')}]")


def _folder(source: str) -> tuple:
    """The network of a model folder, the shape of one input and what it reads and returns: a PMSM flux model's
    look-up (currents to flux and inductances), else the image network of its files."""
    if is_flux_model(source):
        from dartboard.spaces.pmsm_lookup import FluxLookup
        from dartboard.training.pmsm import load_flux_model

        return FluxLookup(load_flux_model(source)[0]).eval(), (2,), _flux_io()
    from dartboard.platform.predict import local_network

    model = local_network(source)
    return _image_input(model.net, model.spec)


def _registered(ref: str, uri: str | None):
    import tempfile

    from dartboard.platform.cli.models import check_registry
    from dartboard.platform.tracking.models import GENOTYPE_FILE, NETWORK_FILE, WEIGHTS_FILE, pull_model

    check_registry(uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder, version = pull_model(uri, ref, tmp)  # verified against the recorded SHA-256
        if is_flux_model(folder):
            return _folder(str(folder))
        if not (folder / WEIGHTS_FILE).is_file() or not (folder / NETWORK_FILE).is_file():
            raise UserInputError(f"model {ref!r}: version {version.version} holds a genotype only, no trained network "
                                 f"(dartboard train {ref} trains one)")
        return _image_input(*_build(folder / GENOTYPE_FILE, folder / WEIGHTS_FILE, folder / NETWORK_FILE))


def _from_files(source: str, genotype, weights: Path | None, network: Path | None):
    import tempfile

    from dartboard.spaces import genotype as gt

    if weights is None:
        raise UserInputError(f"--weights: {source!r} is a genotype; its trained weights (weights.safetensors) are "
                             f"needed to export a network")
    if not weights.is_file():
        raise UserInputError(f"--weights: {str(weights)!r} does not exist")
    network = network or weights.parent / NETWORK_FILE
    if not network.is_file():
        raise UserInputError(f"--network: {str(network)!r} does not exist; it records the channels, cells and input "
                             f"shape of the trained network (written by dartboard train)")
    with tempfile.TemporaryDirectory() as tmp:
        genotype_file = Path(tmp) / "genotype.json"
        gt.save(genotype, genotype_file)
        return _build(genotype_file, weights, network)


def _build(genotype: Path, weights: Path, network: Path):
    from dartboard.platform.predict import network_of_files

    return network_of_files(genotype, weights, network)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
