"""NASiam on the command line: ``dartboard train`` of an ``mlp`` genotype (SSL pretraining with its
heads, then linear probe, weighted kNN, collapse indicator and retrieval mAP on held-out data) and
``dartboard retrieve`` (rank a query folder against a gallery, thesis 5.1.3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from dartboard.errors import UserInputError, refuse_with

WEIGHTS_FILE = "ssl_weights.pt"


def framework_of(geno: Any, framework: str | None) -> str:
    if framework is None:
        return "simsiam" if geno.chains.get("predictor") is not None else "simclr"
    if framework not in ("simsiam", "simclr", "moco"):
        raise UserInputError(f"framework: expected simsiam, simclr or moco, got {framework!r}")
    return framework


def train_heads(geno: Any, name: str, *, framework: str | None, channels: int | None, epochs: int | None,
                batch_size: int | None, lr: float, dataset: str, data_root: str | None, seed: int, device: str,
                out: str | None, image_size: int = 32) -> dict[str, Any]:
    """SSL pretraining with the genotype's heads on the fit part of the train split (an image folder's images
    resized to ``image_size``), then the held-out metrics."""
    import torch

    from dartboard.data.catalog import absolute_root, load_dataset
    from dartboard.spaces.genotype import to_dict
    from dartboard.training import ssl_eval as E

    plain_name, views_name = E.view_datasets(dataset)
    plain, views = load_dataset(plain_name, data_root, image_size), load_dataset(views_name, data_root, image_size)
    cfg = E.SslConfig(framework=framework_of(geno, framework), C=channels or 16, epochs=epochs or 20,
                      batch_size=batch_size or 64, lr=lr, seed=seed, device=device)
    if cfg.epochs < 1 or cfg.C < 1 or cfg.batch_size < 1:
        raise UserInputError(f"epochs, channels and batch_size must be positive (got {cfg.epochs}, {cfg.C}, "
                             f"{cfg.batch_size})")
    if cfg.framework == "moco":
        cfg.objective_options = {"queue_size": E.moco_queue(cfg.batch_size)}
    fit, held = E.fit_held_out(len(plain.train), seed)
    info = views.info
    net, history, metrics = E.pretrain_and_evaluate(geno, views.train, plain.train, fit, held,
                                                    (info.in_channels, info.input_size), cfg)
    from dartboard.spaces.catalog import home_folder

    # default: next to the genotype file, as for cell networks
    out_dir = Path(out) if out is not None else home_folder(name) or Path("runs") / f"train-ssl-{name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"genotype": to_dict(geno), "framework": cfg.framework, "C": cfg.C, "in_channels": info.in_channels,
                "input_size": info.input_size, "dataset": plain_name, "data_root": absolute_root(data_root),
                "state_dict": net.state_dict()}, out_dir / WEIGHTS_FILE)
    result = {**metrics, "framework": cfg.framework, "pretrain_loss": history, "weights": str(out_dir / WEIGHTS_FILE)}
    (out_dir / "ssl_metrics.json").write_text(json.dumps(result, indent=1))
    return result


def _folder(path: str, role: str, image_size: int, in_channels: int = 3):
    """An image folder as the backbone's inputs: ``in_channels`` 3 (the colour data sets: normalised by 0.5, as
    ``imagefolder-views``), or 1: grayscale, normalised as the digits the only one-channel pretraining read
    (``digits-views``)."""
    from torchvision import transforms

    if not Path(path).is_dir():
        raise UserInputError(f"--{role}: folder {path!r} does not exist")
    groups = [d for d in Path(path).iterdir() if d.is_dir()]
    if not groups or not any(f.is_file() for d in groups for f in d.iterdir()):
        raise UserInputError(f"--{role}: folder {path!r} holds no images; expected one subfolder of images per "
                             f"group (relevant = same group)")
    if in_channels == 1:  # was: RGB tensors into a one-channel stem, a RuntimeError with a traceback
        from dartboard.data.catalog import load_dataset

        info = load_dataset("digits").info
        to_channels, mean, std = [transforms.Grayscale(1)], info.mean, info.std
    else:
        to_channels, mean, std = [], (0.5,) * 3, (0.5,) * 3
    tf = transforms.Compose([*to_channels, transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    from dartboard.data.datasets import class_folders

    data = class_folders(path, tf, f"--{role}")
    return data, [data.classes[t] for t in data.targets]


def retrieve(
    weights: str = typer.Argument(..., help=f"{WEIGHTS_FILE} written by `dartboard train` of an mlp genotype, or the "
                                            f"folder holding it."),
    query: str = typer.Option(None, help="Folder of query images, one subfolder per group."),
    gallery: str = typer.Option(None, help="Folder of gallery images, one subfolder per group."),
    tau: float = typer.Option(0.0, min=-1.0, max=1.0, help="Similarity threshold in [-1, 1] (a cosine): only "
                              "gallery items above it are ranked."),
    seed: int = typer.Option(None, help="Held-out mode: the fit / held-out split of the training run [default: 0]."),
) -> None:
    """Rank a query folder against a gallery by cosine similarity (thesis Eq 5.5) with threshold tau and
    print the mAP; without folders: the held-out queries of the data the weights were pretrained on against its fit
    gallery (relevant = same class)."""
    import torch
    from torch.utils.data import Subset

    from dartboard.spaces.genotype import from_dict
    from dartboard.training import ssl_eval as E

    if Path(weights).is_dir():  # the folder `dartboard train` of an mlp genotype wrote into
        if not (Path(weights) / WEIGHTS_FILE).is_file():
            raise UserInputError(f"weights: folder {weights!r} holds no {WEIGHTS_FILE} (`dartboard train` of an mlp "
                                 f"genotype writes one)")
        weights = str(Path(weights) / WEIGHTS_FILE)
    if not Path(weights).is_file():
        raise UserInputError(f"weights: file {weights!r} does not exist")
    try:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        genotype = from_dict(saved["genotype"])
    except Exception as err:  # a genotype file, another checkpoint: not what train of an mlp genotype wrote
        raise UserInputError(f"weights: {weights!r} is not an {WEIGHTS_FILE} written by `dartboard train` of an mlp "
                             f"genotype ({type(err).__name__})") from None
    net, _ = E.head_network(genotype, saved["in_channels"], saved["C"])
    if saved["framework"] == "moco":
        net.attach_momentum_encoder(0.0, saved["state_dict"]["key_encoder.queue"].shape[0])
    net.load_state_dict(saved["state_dict"])
    if (query is None) != (gallery is None):
        raise UserInputError("--query and --gallery: give both folders, or neither (held-out mode: the data the "
                             "weights were pretrained on)")
    if query is not None:
        refuse_with("--query", {"--seed": seed}, "folders are ranked as they are (the seed splits the pretraining "
                    "data only)")
    seed = 0 if seed is None else seed
    if query is None:
        plain = _pretraining_data(saved, weights)
        fit, held = E.fit_held_out(len(plain), seed)
        q_data, g_data = Subset(plain, held), Subset(plain, fit)
        q_f, q_y = E.embed(net.backbone, q_data)
        g_f, g_y = E.embed(net.backbone, g_data)
        q_groups, g_groups = q_y.tolist(), g_y.tolist()
    else:
        (q_data, q_groups), (g_data, g_groups) = (_folder(query, "query", saved["input_size"], saved["in_channels"]),
                                                  _folder(gallery, "gallery", saved["input_size"],
                                                          saved["in_channels"]))
        q_f, _ = E.embed(net.backbone, q_data)
        g_f, _ = E.embed(net.backbone, g_data)
    in_gallery = set(g_groups)
    unmatched = sum(g not in in_gallery for g in q_groups)
    if unmatched == len(q_groups):
        raise UserInputError(f"retrieve: no query's group has an image in the gallery (query groups: "
                             f"{', '.join(map(str, sorted(set(q_groups))))}; gallery groups: "
                             f"{', '.join(map(str, sorted(in_gallery)))}): there is nothing to retrieve, the mAP is "
                             f"undefined")
    scored = f" ({len(q_groups) - unmatched} scored: {unmatched} whose group has no image in the gallery left out)" \
        if unmatched else ""
    typer.echo(f"queries {len(q_groups)}{scored}, gallery {len(g_groups)}, tau {tau}")
    typer.echo(f"mAP {E.retrieval_map(q_f, q_groups, g_f, g_groups, tau):.4f}")


def _pretraining_data(saved: dict, weights: str):
    """The training split the weights were pretrained on (their fit and held-out parts are the gallery and the
    queries): recorded with them; digits for weights written before that was recorded."""
    from dartboard.data.catalog import FIXED_SIZE_DATASETS, load_dataset

    dataset, root = saved.get("dataset", "digits"), saved.get("data_root")
    if "dataset" not in saved and saved["in_channels"] != 1:
        raise UserInputError(f"weights: {weights!r} were pretrained on {saved['in_channels']}-channel data they do not "
                             f"name; rank folders of it with --query and --gallery")
    if root is not None and "://" not in root and not Path(root).exists():
        raise UserInputError(f"weights: {weights!r} were pretrained on {dataset} from {root!r}, which is not on this "
                             f"machine; rank folders of it with --query and --gallery")
    return load_dataset(dataset, root, *(() if dataset in FIXED_SIZE_DATASETS else (saved["input_size"],))).train


def train_mlp(geno, genotype: str, options: dict, tracking_uri: str | None, no_mlflow: bool, as_json: bool) -> None:
    """SSL pretraining of an mlp genotype's heads (``train_heads``), then its held-out metrics: printed (``--json``:
    as JSON) and, unless ``--no-mlflow``, logged as a run of the ``dartboard`` experiment (not registered)."""
    from dartboard.platform.checks import check_tracking_server, check_writable_dir
    from dartboard.training.ssl_eval import SslConfig

    options = {**options, "framework": framework_of(geno, options["framework"])}
    _check_mlp_options(options)
    dataset, out = options["dataset"], options["out"]
    from dartboard.spaces.catalog import home_folder

    # train_heads' default: next to the genotype file
    out_dir = Path(out) if out is not None else home_folder(genotype) or Path("runs") / f"train-ssl-{genotype}"
    check_writable_dir(out_dir, "--out")
    logger = None
    if not no_mlflow:
        from dartboard.platform.tracking.epochs import TRAIN_EXPERIMENT, EpochLogger, absolute_uri, open_train_run
        from dartboard.platform.tracking.runs import tracking_uri as resolved_uri

        tracking_uri = absolute_uri(resolved_uri(tracking_uri))
        check_tracking_server(tracking_uri)
        stem = Path(genotype).stem if genotype.endswith(".json") else genotype
        run_id = open_train_run(tracking_uri, TRAIN_EXPERIMENT, f"ssl-{stem}-{dataset}", genotype)
        logger = EpochLogger(tracking_uri, run_id)
    try:
        result = train_heads(geno, genotype, **{**options, "out": str(out_dir)})
    except BaseException as err:
        if logger is not None:  # its run holds nothing yet: deleted
            from dartboard.platform.tracking.epochs import close_unfinished

            close_unfinished(logger, None, "KILLED" if isinstance(err, KeyboardInterrupt | SystemExit) else "FAILED")
        raise
    if logger is not None:
        config = {"framework": result["framework"], "channels": options["channels"] or SslConfig.C,
                  "epochs": options["epochs"] or SslConfig.epochs,
                  "batch_size": options["batch_size"] or SslConfig.batch_size, "lr": options["lr"],
                  "dataset": dataset, "seed": options["seed"]}
        from dartboard.platform.tracking.runs import log_ssl_run

        log_ssl_run(logger.uri, logger.run_id, {"genotype": genotype, "kind": "mlp", **config}, result,
                    [out_dir / WEIGHTS_FILE, out_dir / "ssl_metrics.json"])
        typer.echo(f"logged to MLflow run {logger.run_id} (experiment {TRAIN_EXPERIMENT}, {logger.uri})", err=as_json)
    if as_json:  # stdout holds the JSON only
        typer.echo(json.dumps({"genotype": genotype, "kind": "mlp", "dataset": dataset, **result}, indent=1))
        return
    typer.echo(f"weights written to {result['weights']}")
    for key in ("probe_acc", "knn_acc", "collapse_std", "retrieval_map"):
        typer.echo(f"{key} {result[key]:.4f} (held-out)")


def _check_mlp_options(options: dict) -> None:
    """What train_heads would find only after loading the data (or not at all: 0 channels are its default)."""
    import math

    from dartboard.data.catalog import DATASETS
    from dartboard.training.ssl_eval import view_datasets

    sizes = {"--channels": options["channels"], "--epochs": options["epochs"], "--batch-size": options["batch_size"]}
    for flag, value in sizes.items():
        if value is not None and value < 1:
            raise UserInputError(f"{flag}: expected a positive integer, got {value}")
    if not (math.isfinite(options["lr"]) and options["lr"] >= 0):
        raise UserInputError(f"--lr: expected a finite number >= 0, got {options['lr']}")
    dataset = options["dataset"]
    if any(name not in DATASETS for name in view_datasets(dataset)):
        two_view = ", ".join(d for d in DATASETS if f"{d}-views" in DATASETS)
        raise UserInputError(f"--dataset: {dataset!r} has no two-view data for the SSL pretraining of an mlp genotype; "
                             f"expected one of {two_view} (or their -views data)")


def register(app: typer.Typer) -> None:
    app.command("retrieve")(retrieve)
