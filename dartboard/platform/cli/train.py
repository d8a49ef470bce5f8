"""`dartboard train`: train the network of a genotype from scratch and print its test accuracy."""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path

import typer

from dartboard.errors import UserInputError, refuse_with, user_input
from dartboard.platform.cli.train_settings import PROTOCOLS, check_image_size, check_used, settings_of, train_config
from dartboard.platform.progress import epochs_in_words

log = logging.getLogger("dartboard")
#: The commands that train the genotype kinds this one does not (it trains cell networks, and NASiam heads by their
#: SSL framework).
TRAINED_ELSEWHERE = {"flux_mlp": "a PMSM flux model is trained by `dartboard pmsm compare NAME=GENOTYPE`",
                     "gates": "a pruned ViT (DARIO's gates) is made, and fine-tuned on an image folder, by `dartboard "
                              "prune MODEL --checkpoint FILE --data-root FOLDER`"}


def train(
    genotype: str = typer.Argument(..., help="Genotype JSON file, catalog name (e.g. darts-v2), a folder holding "
                                   "genotype.json (a search's output) or a registered version NAME@ALIAS or "
                                   "NAME:VERSION (its genotype, pulled into --out; default runs/NAME-vVERSION)."),
    channels: int = typer.Option(None, help="Initial channels C."),
    layers: int = typer.Option(None, help="Number of cells."),
    epochs: int = typer.Option(None, help="Training epochs."),
    batch_size: int = typer.Option(None, help="Batch size."),
    protocol: str = typer.Option(None, help="Evaluation protocol whose published values are the defaults: cifar "
                                 "(DARTS CIFAR-10: C=36, 20 cells, SGD 0.025 cosine, 600 epochs; smaller on the "
                                 "bundled digits) or imagenet (DARTS ImageNet mobile: C=48, 14 cells, ImageNet "
                                 "stem, 224 px, batch 128, SGD 0.1 momentum 0.9 wd 3e-5, lr x 0.97 every epoch, "
                                 "250 epochs, auxiliary 0.4, label smoothing 0.1, no cutout, no drop path). "
                                 "Default: imagenet for --dataset imagenet, else cifar. Every flag overrides it."),
    lr: float = typer.Option(None, help="SGD learning rate (default 0.025, imagenet protocol 0.1; mlp heads 0.06)."),
    lr_schedule: str = typer.Option(None, help="cosine (to 0 over the epochs; cifar protocol) or step (lr x "
                                               "--lr-gamma every epoch; imagenet protocol)."),
    lr_gamma: float = typer.Option(None, help="Step schedule's decay per epoch (DARTS ImageNet: 0.97)."),
    image_size: int = typer.Option(None, help="Image folders are resized to this many pixels (default 224 with "
                                              "the imagenet protocol, else 32)."),
    auxiliary: bool = typer.Option(None, "--auxiliary/--no-auxiliary", help="Auxiliary head (weight 0.4; default: "
                                   "on for CIFAR/image data as in DARTS, off on the small bundled data)."),
    drop_path: float = typer.Option(None, help="Drop path probability, ramped linearly (default: 0.2 on CIFAR/image "
                                               "data as in DARTS, 0 on the small bundled data)."),
    dataset: str = typer.Option(None, help="digits, colour-digits, cifar10, cifar100, imagefolder, imagenet "
                                "(default: a search folder's data, else digits; colour-digits for ColorNAS)."),
    data_root: str = typer.Option(None, help="Folder holding the local dataset (imagenet: train/ and val/, one "
                                             "folder per class; nothing is downloaded)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    out: str = typer.Option(None, help="Where weights go (default: next to the genotype file)."),
    tracking_uri: str = typer.Option(None),
    no_mlflow: bool = typer.Option(False, "--no-mlflow"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (test metrics, per-epoch "
                                                       "history, weights and their SHA-256)."),
    framework: str = typer.Option(None, help="mlp genotypes (NASiam): simsiam, simclr or moco (default: simsiam "
                                             "with a predictor, else simclr)."),
    cutout: bool = typer.Option(None, "--cutout/--no-cutout", help="Cutout on the training batches (default: on "
                                "for CIFAR/image data as in DARTS, off on the small bundled data)."),
    cutout_length: int = typer.Option(None, help="Cutout square side in pixels (DARTS CIFAR: 16)."),
    label_smoothing: float = typer.Option(None, help="Label smoothing epsilon, 0 = off (default: off; imagenet "
                                                     "protocol 0.1 as in DARTS ImageNet)."),
    precision: str = typer.Option(None, help="fp32 (default), bf16 or fp16 (autocast; fp16 with a gradient "
                                             "scaler)."),
    grad_clip: float = typer.Option(None, help="Gradient norm clip (DARTS: 5)."),
    workers: int = typer.Option(1, help="Ray Train workers (DDP); 1 without --address trains in this process."),
    gpus_per_worker: float = typer.Option(None, help="GPUs per Ray Train worker (default 0; NCCL when > 0, else "
                                                     "gloo)."),
    address: str = typer.Option(None, help="Ray cluster address (e.g. auto); implies a Ray Train job."),
    storage: str = typer.Option(None, help="Ray Train checkpoints (default: OUT/ray; several nodes need shared "
                                           "storage: NFS, s3://, gs://)."),
    register_as: str = typer.Option(None, "--register", help="Registered model NAME or NAME@ALIAS (default: "
                                                             "final-<genotype>-<dataset>, no alias)."),
) -> None:
    """Train the network of a genotype from scratch and print its test accuracy; an mlp genotype (NASiam):
    SSL pretraining with its heads, then linear probe, kNN, collapse and retrieval mAP on held-out data."""
    from dartboard.data.catalog import FIXED_SIZE_DATASETS, check_data_root, check_dataset, trained_on
    from dartboard.data.colour_digits import COLOUR_DIGITS
    from dartboard.platform.cli.registered import is_registry_reference, pulled_genotype
    from dartboard.platform.config import resolve_device
    from dartboard.platform.search_checkpoint import recorded_data
    from dartboard.spaces.catalog import resolve
    from dartboard.spaces.colour_genotype import ColourGenotype

    registered = is_registry_reference(genotype)
    # --tracking-uri names the registry a registered version is read from (with --no-mlflow too); a refusal below
    # leaves nothing of it in --out
    with pulled_genotype(genotype, tracking_uri, out) if registered else nullcontext((genotype, None)) as pulled:
        if registered:
            genotype, out, dataset = pulled[0], pulled[0], dataset or pulled[1]
        geno = resolve(genotype)
        distributed = workers != 1 or address is not None
        _check_options(geno, genotype, distributed, storage=storage, gpus_per_worker=gpus_per_worker,
                       no_mlflow=no_mlflow, register_as=register_as, tracking_uri=None if registered else tracking_uri,
                       protocol=protocol,
                       framework=framework, label_smoothing=label_smoothing, cell_only={
                           "--layers": layers, "--lr-schedule": lr_schedule, "--lr-gamma": lr_gamma,
                           "--drop-path": drop_path, "--cutout-length": cutout_length,
                           "--auxiliary" if auxiliary else "--no-auxiliary": auxiliary is not None,
                           "--cutout" if cutout else "--no-cutout": cutout is not None,
                           "--label-smoothing": label_smoothing, "--precision": precision, "--grad-clip": grad_clip,
                           "--register": register_as})
        with user_input():  # only checks that the device exists (its message names it)
            resolved = resolve_device(device)
        if dataset is None and (searched := recorded_data(genotype)) is not None:  # a search's folder: its data
            dataset, data_root = trained_on(searched[0]), data_root or searched[1]
            if image_size is None and dataset not in FIXED_SIZE_DATASETS:  # an image folder: resized as it was searched
                image_size = searched[2]
            log.info("train: on %s%s%s, the data the search ran on (--dataset for other data)", dataset,
                     f" from {data_root}" if data_root else "", f" at {image_size} px" if image_size else "")
        dataset = dataset or (COLOUR_DIGITS if isinstance(geno, ColourGenotype) else "digits")
        check_data_root(check_dataset(dataset), data_root)
        check_image_size(image_size, dataset)
        if geno.kind == "mlp":
            from dartboard.platform.cli.ssl import train_mlp

            train_mlp(geno, genotype, dict(framework=framework, channels=channels, epochs=epochs, batch_size=batch_size,
                                            lr=0.06 if lr is None else lr, dataset=dataset, data_root=data_root,
                                            image_size=image_size or 32, seed=seed, device=resolved, out=out),
                      tracking_uri, no_mlflow, as_json)
            return
        name = protocol or ("imagenet" if dataset == "imagenet" else "cifar")
        given = {"channels": channels, "layers": layers, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "auxiliary": auxiliary, "drop_path_prob": drop_path, "cutout": cutout, "cutout_length": cutout_length,
                 "precision": precision, "grad_clip": grad_clip, "lr_schedule": lr_schedule, "lr_gamma": lr_gamma}
        if isinstance(geno, ColourGenotype) and auxiliary is None:  # it has none: not the published protocol's default
            given["auxiliary"] = False
        if label_smoothing is not None:
            given |= {"label_smoothing": label_smoothing > 0,
                      "label_smoothing_eps": label_smoothing if label_smoothing > 0 else 0.1}
        check_used(settings_of(name, dataset, given), given, f"the {name} protocol's default on {dataset!r}")
        cfg = train_config(name, dataset, given, seed=seed, device=resolved)
        image_size = image_size or (224 if name == "imagenet" else 32)
        cluster = {"workers": workers, "gpus_per_worker": gpus_per_worker or 0.0, "address": address,
                   "storage": storage} if distributed else None
        _train_cells(geno, genotype, cfg, dataset, data_root, out, tracking_uri, no_mlflow, as_json, cluster,
                     register_as, image_size, cutout_given=cutout_length is not None)


def _check_options(geno, genotype: str, distributed: bool, *, storage, gpus_per_worker, no_mlflow, register_as,
                   tracking_uri, protocol, framework, label_smoothing, cell_only: dict) -> None:
    """Refuse, before any work, a genotype this command does not train, the flags that this training would not use
    (``cell_only``: the flags of a cell network's training, by name) and a label smoothing out of range."""
    _check_kind(geno, genotype)
    if distributed and geno.kind == "mlp":
        raise UserInputError(f"--workers/--address: Ray Train final training is for cell networks; {genotype!r} is "
                             f"an mlp genotype (train it in one process)")
    if storage is not None and not distributed:
        raise UserInputError("--storage: only for a Ray Train job (--workers > 1 or --address)")
    if gpus_per_worker is not None and not distributed:
        raise UserInputError(f"--gpus-per-worker: {gpus_per_worker} would be ignored; only for a Ray Train job "
                             f"(--workers > 1 or --address)")
    if no_mlflow:
        refuse_with("--no-mlflow", {"--register": register_as, "--tracking-uri": tracking_uri},
                    "nothing is logged to MLflow or registered")
    if protocol is not None and protocol not in PROTOCOLS:
        raise UserInputError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if geno.kind == "mlp" and protocol is not None:
        raise UserInputError(f"--protocol: the evaluation protocols train cell networks; {genotype!r} is an mlp "
                             f"genotype")
    if framework is not None and geno.kind != "mlp":
        raise UserInputError(f"--framework: only for mlp genotypes (NASiam heads); {genotype!r} is a {geno.kind!r} "
                             f"genotype")
    if geno.kind == "mlp":  # SSL pretraining of the heads (train_heads): none of a cell network's settings apply
        refuse_with(f"genotype {genotype!r}", cell_only,
                    "an mlp genotype (NASiam heads) is pretrained by its SSL framework (--framework, --channels, "
                    "--epochs, --batch-size, --lr), with none of a cell network's training settings, and is not "
                    "registered")
    if label_smoothing is not None and not 0.0 <= label_smoothing < 1.0:  # a negative one would turn smoothing off
        raise UserInputError(f"--label-smoothing: expected a value in [0, 1) (0 = off), got {label_smoothing}")


def _check_kind(geno, genotype: str) -> None:
    from dartboard.spaces.genotype import CELL_NETWORK_KINDS

    trained = (*CELL_NETWORK_KINDS, "mlp")
    if geno.kind not in trained:
        elsewhere = f": {TRAINED_ELSEWHERE[geno.kind]}" if geno.kind in TRAINED_ELSEWHERE else ""
        raise UserInputError(f"genotype {genotype!r} is of kind {geno.kind!r}; train takes "
                             f"{', '.join(trained[:-1])} or {trained[-1]} genotypes{elsewhere}")


def _train_cells(geno, genotype: str, cfg, dataset: str, data_root, out, tracking_uri, no_mlflow: bool,
                 as_json: bool, cluster: dict | None = None, register_as: str | None = None,
                 image_size: int = 32, cutout_given: bool = False) -> None:
    from dartboard.data.catalog import load_dataset
    from dartboard.platform.checks import check_tracking_server, check_writable_dir, folder_held
    from dartboard.platform.tracking.final import default_model_name
    from dartboard.platform.tracking.models import NETWORK_FILE, network_spec
    from dartboard.spaces.catalog import home_folder

    out_dir = Path(out) if out is not None else home_folder(genotype) or Path("runs") / f"train-{genotype}"
    check_writable_dir(out_dir, "--out")  # before training, not after it
    splits = load_dataset(dataset, data_root, image_size)
    cfg = _fitted_cutout(cfg, splits.info.input_size, cutout_given)
    if cluster is not None and cluster["address"] is None:  # a local cluster: this machine's GPUs
        import torch

        from dartboard.platform.ray.final_job import check_resources

        check_resources(cluster["workers"], 1.0, cluster["gpus_per_worker"], float("inf"),
                        float(torch.cuda.device_count()))
    name, _, alias = (register_as or default_model_name(genotype, dataset)).partition("@")
    logger, out_existed = None, out_dir.exists()
    with folder_held(out_dir, "--out"):  # no other training or search writes there meanwhile
        from dartboard.platform.train_checkpoint import check_no_other_kind

        check_no_other_kind(out_dir, ray_job=cluster is not None)
        _check_same_genotype(geno, genotype, out_dir)
        checkpoint = None if cluster is not None else _local_checkpoint(geno, cfg, dataset, image_size, out_dir,
                                                                        list(splits.info.classes))
        if not no_mlflow:
            from dartboard.platform.tracking.epochs import (
                RUN_FILE,
                TRAIN_EXPERIMENT,
                EpochLogger,
                absolute_uri,
                open_train_run,
            )
            from dartboard.platform.tracking.runs import tracking_uri as resolved_uri

            tracking_uri = absolute_uri(resolved_uri(tracking_uri))
            check_tracking_server(tracking_uri)
            if checkpoint is not None and not checkpoint.epochs_done:  # a new training: an earlier one's run is done
                (out_dir / RUN_FILE).unlink(missing_ok=True)
            # the run exists before the first epoch: each epoch's metrics reach it as the epoch ends; its id is kept in
            # the output folder, so that the same command relaunched after an interrupt goes on in the same run
            logger = EpochLogger(tracking_uri, open_train_run(tracking_uri, TRAIN_EXPERIMENT, name, genotype, out_dir))
        try:
            result = _fit(geno, genotype, cfg, (dataset, data_root, splits), out_dir, cluster, image_size, logger,
                          checkpoint)
        except BaseException as err:
            if checkpoint is not None and checkpoint.epochs_done:
                log.warning("train: stopped after epoch %d of %d; the same command continues it from %s",
                            checkpoint.epochs_done, cfg.epochs, checkpoint.folder)
            if logger is not None:
                from dartboard.platform.tracking.epochs import close_unfinished

                close_unfinished(logger, out_dir, "KILLED" if isinstance(err, KeyboardInterrupt | SystemExit)
                                 else "FAILED", remove_dir=not out_existed)
            raise
        (Path(out_dir) / NETWORK_FILE).write_text(json.dumps(network_spec(cfg, splits.info, dataset, data_root)))
        if logger is not None:
            _register(tracking_uri, genotype, dataset, cfg, result, out_dir, (name, alias), cluster, as_json,
                      logger.run_id)
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


def _check_same_genotype(geno, genotype: str, out_dir: Path) -> None:
    """The training writes its genotype to ``OUT/genotype.json``: another genotype there (a search's result, a
    network trained from another genotype) would be replaced; refused by name. The same genotype (a search's folder
    trained in place, a network trained again) is not."""
    from dartboard.model_files import GENOTYPE_FILE
    from dartboard.spaces.genotype import holds

    if (out_dir / GENOTYPE_FILE).exists() and not holds(out_dir / GENOTYPE_FILE, geno):
        raise UserInputError(f"--out: {str(out_dir)!r} holds another genotype ({GENOTYPE_FILE}), which training "
                             f"{genotype!r} there would replace: give another --out")


def _local_checkpoint(geno, cfg, dataset: str, image_size: int, out_dir: Path, classes: list[str]):
    """The epoch checkpoint of a training in this process; refused before any work when ``out_dir`` holds an
    unfinished training with other settings."""
    from dataclasses import asdict

    from dartboard.platform.ray.final_job import job_identity
    from dartboard.platform.train_checkpoint import TrainCheckpoint
    from dartboard.spaces.genotype import to_dict

    return TrainCheckpoint(out_dir, job_identity(to_dict(geno), asdict(cfg), dataset, image_size),  # device left out
                           classes or None)


def _fitted_cutout(cfg, input_size: int, given: bool):
    """The training's cutout at this input size (a default one: half the images' side at most); a square that
    blanks every image refused by the flag's name."""
    from dartboard.platform.cli.train_settings import fitted_cutout
    from dartboard.training.final import check_cutout

    fitted = fitted_cutout(cfg, input_size, given)
    if fitted.cutout_length != cfg.cutout_length:
        log.info("train: cutout of %d px, half the %d-px images' side (DARTS' 16 px is half of CIFAR's 32; "
                 "--cutout-length for another)", fitted.cutout_length, input_size)
    check_cutout(fitted, input_size, "--cutout-length")
    return fitted


def _fit(geno, genotype: str, cfg, data: tuple, out_dir, cluster: dict | None, image_size: int, logger,
         checkpoint=None):
    """Train on ``data`` (dataset, data_root, splits) in this process (continuing ``checkpoint``'s training when
    it holds one) or as a Ray Train job; the TrainResult."""
    from dartboard.platform.tracking.epochs import log_epoch_safely
    from dartboard.training.final import network_of, train_genotype

    dataset, data_root, splits = data
    with user_input(f"genotype {genotype!r} on {dataset}"):  # builds the network once: bad input fails before training
        network_of(geno, cfg, splits.info)
    log.info("train: %s, C=%d, %d cells, %s on %s", genotype, cfg.channels, cfg.layers, epochs_in_words(cfg.epochs),
             dataset)
    if cluster is None:
        def on_epoch(epoch: int, metrics: dict) -> None:
            log.info("epoch %3d  train_loss %.4f  train_acc %.4f  (means over the epoch, train mode)", epoch + 1,
                     metrics["train_loss"], metrics["train_acc"])
            log_epoch_safely(logger, epoch, metrics)

        if checkpoint is not None and checkpoint.epochs_done:
            log.info("train: continuing the training in %s after epoch %d of %d", out_dir, checkpoint.epochs_done,
                     cfg.epochs)
        result = train_genotype(geno, splits, cfg, out_dir, on_epoch=on_epoch, checkpoint=checkpoint)
    else:
        from dartboard.platform.ray.final_job import train_on_ray

        result, last = train_on_ray(geno, cfg, dataset, data_root, out_dir, **cluster, image_size=image_size,
                                    mlflow=logger)
        if last.get("finished_before"):
            log.info("Ray Train: the training in %s had finished before; its result is reported again", out_dir)
        log.info("Ray Train: %d workers, replicas identical %s, resumed at epochs %s", int(last["workers"]),
                 bool(last["replicas_identical"]), last["resumed_at"] or "none")
    return result


def _register(uri, genotype: str, dataset: str, cfg, result, out_dir, name_alias: tuple[str, str],
              cluster: dict | None, as_json: bool, run_id: str) -> None:
    from dartboard.platform.tracking.epochs import TRAIN_EXPERIMENT
    from dartboard.platform.tracking.final import register_final

    name, alias = name_alias
    config = {**{k: v for k, v in cfg.__dict__.items() if k != "device"}, "dataset": dataset,
              "workers": cluster["workers"] if cluster else 1}
    version = register_final(uri, TRAIN_EXPERIMENT, name, alias or None, genotype, config, result, out_dir,
                             {"dataset": dataset}, run_id=run_id)
    typer.echo(f"registered {name} version {version.version}" + (f" (@{alias})" if alias else ""),
               err=as_json)  # --json: stdout holds the JSON only


def register(app: typer.Typer) -> None:
    app.command("train")(train)
