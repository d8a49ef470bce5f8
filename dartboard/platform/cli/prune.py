"""``dartboard prune`` and ``dartboard prune-study``: DARIO pruning of timm ViTs (thesis 6.1)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import typer

from dartboard.errors import UserInputError, refuse_with, user_input
from dartboard.platform.cli.defaults import literal_constants
from dartboard.searchers.dario_options import (  # the thesis' defaults, as data: --help imports no torch
    GATE_GRADIENTS,
    ITERATIONS,
    MODEL_LR,
    SEARCH_LR,
    THRESHOLD,
    WARMUP_MEAN,
    WARMUP_SAMPLES,
)

log = logging.getLogger(__name__)

DEFAULT_PROXY = literal_constants("dartboard.searchers.dario.proxies", "DEFAULT_PROXY")["DEFAULT_PROXY"]


def _kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(f"--model-kwargs: expected a JSON object such as '{{\"img_size\": 32}}' ({err})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"--model-kwargs: expected a JSON object, got {text!r}")
    return data


DEMO_FINETUNE_EPOCHS = 15  # each fine-tuning protocol of `dartboard prune`'s demo (its settings: 30)
FINETUNE_EPOCHS, FINETUNE_BATCH = 3, 64  # a named model's fine-tuning on --data-root
FINETUNE_LR = literal_constants("dartboard.training.vit_finetune", "FINETUNE_LR")["FINETUNE_LR"]
THROUGHPUT_STEPS = 3  # images/s before and after pruning, recorded with the registered model


def _mlflow(uri: str | None) -> str | None:
    return uri or os.environ.get("MLFLOW_TRACKING_URI")


def prune(
    model: str = typer.Argument("demo", help="timm model name (random init; weights from --checkpoint), or 'demo'"),
    checkpoint: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                           help="pre-trained state_dict (.safetensors or torch file)"),
    granularity: str = typer.Option("block", help="block | head | both (thesis 6.1.1)"),
    proxy: str = typer.Option(DEFAULT_PROXY, help="Table 6.1 proxy to minimise"),
    threshold: float = typer.Option(THRESHOLD, help="gates sigmoid(alpha) under this are pruned (thesis 0.65)"),
    warmup_samples: int | None = typer.Option(None, "--k", help=f"warm start: best of k random alphas "
                                              f"[default: {WARMUP_SAMPLES}; demo 100]"),
    warmup_mean: float | None = typer.Option(None, help=f"warm start alpha ~ N(mean, 1) [default: {WARMUP_MEAN} "
                                             "(thesis); demo: prior keep rate 0.8 at the threshold]"),
    iterations: int | None = typer.Option(None, "--n", help=f"search iterations (Algorithm 5) [default: "
                                          f"{ITERATIONS}; demo 50]"),
    search_lr: float | None = typer.Option(None, help=f"lambda, the gate step size [default: {SEARCH_LR}; "
                                           "demo 0.01 with --gate-gradient unit]"),
    gate_gradient: str | None = typer.Option(None, help=f"{' | '.join(GATE_GRADIENTS)}: the gate step "
                                             "(thesis = raw ds/dalpha) [default: thesis; demo: unit]"),
    model_lr: float = typer.Option(MODEL_LR, help="gamma, the theta~ step size (Eq 6.6)"),
    optimizer: str = typer.Option("sgd", help="sgd (Algorithm 5) or adam"),
    model_kwargs: str | None = typer.Option(None, help="JSON kwargs for timm.create_model, e.g. image size"),
    demo: bool = typer.Option(False, "--demo", help="train a small ViT on digits, then prune it"),
    finetune_epochs: int | None = typer.Option(None, min=0, help="epochs of fine-tuning: each protocol of the demo "
                                               f"[default: {DEMO_FINETUNE_EPOCHS}], a named model's on --data-root "
                                               f"[default: {FINETUNE_EPOCHS}]"),
    data_root: Path | None = typer.Option(None, file_okay=False, help="a named model: fine-tune the pruned ViT on "
                                          "this image folder (train/ and test/ of one folder per class) and report "
                                          "its test accuracy before and after"),
    finetune: str | None = typer.Option(None, help="with --data-root: last-block (thesis 6.1.2: the last block, "
                                        "the final norm and the head) or all (every layer) [default: last-block]"),
    finetune_lr: float | None = typer.Option(None, help=f"with --data-root: AdamW's learning rate [default: "
                                             f"{FINETUNE_LR:g}]"),
    batch_size: int | None = typer.Option(None, min=1, help=f"with --data-root: the fine-tuning's batch size "
                                          f"[default: {FINETUNE_BATCH}]"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (CUDA where there is one), cpu, cuda[:N]; the demo runs on the "
                               "CPU"),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="each search iteration replayed from one CUDA graph "
                                    "(with --device cuda)"),
    out: Path | None = typer.Option(None, help="write genotype.json + model.safetensors here (default "
                                    "runs/prune-MODEL-sSEED-TIME)"),
    mlflow_uri: str | None = typer.Option(None, "--mlflow-uri", "--tracking-uri",
                                          help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; nothing is "
                                               "logged when neither is set); --tracking-uri as in every other "
                                               "command"),
    register_as: str | None = typer.Option(None, "--register", help="with MLflow: the registered model NAME or "
                                           "NAME@ALIAS of the pruned ViT (default: dario-<model>, no alias)"),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="log and register nothing, even where "
                                   "MLFLOW_TRACKING_URI is set"),
) -> None:
    """Prune a pre-trained ViT with DARIO: search gates, cut blocks/heads, save the genotype and weights;
    with MLflow, log the run and register the pruned model (parameters and throughput before/after)."""
    is_demo = _demo_mode(model, demo, finetune_epochs, data_root, {"--finetune": finetune, "--finetune-lr": finetune_lr,
                                                                   "--batch-size": batch_size})
    if no_mlflow:
        refuse_with("--no-mlflow", {"--tracking-uri": mlflow_uri, "--register": register_as},
                    "the pruned ViT is logged to no tracking server and registered nowhere")
    uri = None if no_mlflow else _mlflow(mlflow_uri)
    out = out or default_out(model if not is_demo else "demo", seed)
    _check_outputs(is_demo, checkpoint, model_kwargs, out, uri, register_as)
    import torch

    from dartboard.platform import dario_run
    from dartboard.platform.config import resolve_device
    from dartboard.searchers.dario import DarioConfig
    search = {"warmup_samples": warmup_samples, "iterations": iterations, "search_lr": search_lr,
              "gate_gradient": gate_gradient}
    search = {k: v for k, v in search.items() if v is not None}
    with user_input():  # only builds the settings from the options' values
        if is_demo:
            from dartboard.platform import dario_demo

            settings = dario_demo.DemoSettings(threshold=threshold, finetune_epochs=DEMO_FINETUNE_EPOCHS
                                               if finetune_epochs is None else finetune_epochs, **search)
            config = replace(settings.config(seed), granularity=granularity, proxy=proxy, model_lr=model_lr,
                             optimizer=optimizer)
        else:
            config = DarioConfig(granularity=granularity, proxy=proxy, threshold=threshold, model_lr=model_lr,
                                 optimizer=optimizer, seed=seed, **search)
    if warmup_mean is not None:
        config = replace(config, warmup_mean=warmup_mean)
    config = replace(config, cuda_graph=cuda_graph)
    with user_input():  # only checks the options' values
        config.validate()
        if is_demo and device not in ("cpu", "auto"):
            raise ValueError(f"--device: the demo runs on the CPU, got {device!r}")
        device = resolve_device("cpu" if is_demo else device)
        if cuda_graph and (is_demo or not device.startswith("cuda")):
            raise ValueError(f"--cuda-graph: CUDA graphs need --device cuda, got {'the demo' if is_demo else device!r}")
    tuning = _finetuning(data_root, finetune_epochs, finetune, finetune_lr, batch_size, seed)
    torch.manual_seed(seed)
    if is_demo:
        report, result = dario_demo.run_demo(settings, seed=seed, config=config)
        for line in report.lines():
            typer.echo(line)
    else:
        net, result = _prune_named(model, checkpoint, _kwargs(model_kwargs), config, device, data_root, tuning)
    dario_run.save_pruned(out, result.pruned, result.genotype, result.network)
    typer.echo(f"saved {out / 'genotype.json'}" + (f", {out / 'network.json'}" if result.network else "")
               + f" and {out / 'model.safetensors'} (dartboard.load({str(out)!r}) rebuilds the pruned ViT"
               + ("; dartboard predict and evaluate take the folder)" if result.network else ")"))
    if uri:
        params = {"granularity": granularity, "proxy": proxy, "threshold": threshold, "seed": seed}
        if tuning is not None:
            params.update(data_root=str(data_root.resolve()), finetune=tuning.protocol, finetune_epochs=tuning.epochs,
                          finetune_lr=tuning.lr, batch_size=tuning.batch_size)
        run_id = dario_run.log_pruned_model(result.pruned, result.genotype, metrics=result.metrics, params=params,
                                            tracking_uri=uri)
        typer.echo(f"mlflow run {run_id}")
        _register(uri, register_as or default_name(model if not is_demo else "demo"), run_id, result,
                  None if is_demo else net)


def _finetuning(data_root: Path | None, epochs: int | None, protocol: str | None, lr: float | None,
                batch_size: int | None, seed: int):
    """The fine-tuning on ``data_root`` (``dario_finetune.Finetuning``), checked; None without a folder."""
    if data_root is None:
        return None
    from dartboard.platform.dario_finetune import Finetuning

    tuning = Finetuning(FINETUNE_EPOCHS if epochs is None else epochs, protocol or "last-block",
                        FINETUNE_LR if lr is None else lr, batch_size or FINETUNE_BATCH, seed)
    with user_input():
        tuning.validate()
    return tuning


def _prune_named(model: str, checkpoint: Path | None, kwargs: dict, config, device: str, data_root: Path | None,
                 tuning) -> tuple:
    """The timm model the user named, its checkpoint read into it, pruned (and fine-tuned on ``data_root`` with
    ``tuning``); (the original model, ``dario_run.PruneResult``)."""
    from dartboard.platform import dario_run
    from dartboard.spaces.vit import count_parameters, create_vit, load_checkpoint

    with user_input():  # only builds the model the user named and reads their checkpoint into it
        net = create_vit(model, **kwargs).eval()
        if checkpoint is None:
            log.warning("no --checkpoint: pruning randomly initialised weights (useful for speed tests only)")
        else:
            load_checkpoint(net, checkpoint, model)
    splits = None
    if tuning is not None:  # read before the search: a folder that cannot be read fails at once
        from dartboard.platform.dario_finetune import finetune_pruned, folder_for

        splits = folder_for(net, str(data_root))
    net = net.to(device)
    result = dario_run.prune_model(net, model, config, kwargs)
    typer.echo(f"blocks kept: {list(result.genotype.blocks_kept)} of {result.genotype.n_blocks}"
               + (f"; heads kept: {dict(result.genotype.heads_kept)}" if result.genotype.heads_kept else ""))
    typer.echo(f"parameters: original {count_parameters(net):,}  pruned {result.params_pruned:,}")
    typer.echo(f"search: {result.search_seconds:.1f} s")
    if splits is not None:
        for line in finetune_pruned(net, result, splits, tuning, str(data_root), device):
            typer.echo(line)
    return net, result


def _demo_mode(model: str, demo: bool, finetune_epochs: int | None, data_root: Path | None,
               tuning: dict[str, object]) -> bool:
    """Whether the demo runs; a model named next to ``--demo``, a folder given to the demo (it trains and
    fine-tunes on digits with its own settings), or fine-tuning asked of a named model without a folder to
    fine-tune on (``tuning``: the fine-tuning's flags as given), would be ignored: refused."""
    if demo and model != "demo":
        raise UserInputError(f"--demo: the demo trains its own small ViT on digits and would ignore {model!r}; give "
                             "either --demo or the timm model to prune")
    is_demo = demo or model == "demo"
    if is_demo and data_root is not None:
        raise UserInputError("--data-root: the demo trains and fine-tunes its own small ViT on digits and would "
                             "ignore the folder; name the timm model to prune (dartboard prune MODEL --checkpoint "
                             "FILE --data-root FOLDER)")
    if is_demo:
        refuse_with("the demo", tuning, "it fine-tunes with its own settings (--finetune-epochs sets its epochs)")
    elif data_root is None:
        refuse_with("--data-root", {"--finetune-epochs": finetune_epochs, **tuning}, "a named model is fine-tuned on "
                    "an image folder: add --data-root FOLDER (train/ and test/, one folder per class); without one it "
                    "is pruned, saved and registered as it is")
    return is_demo


def default_out(model: str, seed: int) -> Path:
    """Where a pruning without ``--out`` writes: a new folder under ``runs/``, as a search's."""
    import time

    return Path("runs") / f"prune-{model.replace('/', '_')}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_outputs(is_demo: bool, checkpoint: Path | None, model_kwargs: str | None, out: Path,
                   uri: str | None, register_as: str | None) -> None:
    """What the options ask for, checked before the search: the demo trains its own ViT (a checkpoint or model
    arguments would be ignored), ``--out`` can be written and holds no other model, the tracking server answers,
    ``--register`` has one."""
    from dartboard.platform.checks import check_tracking_server, check_writable_dir

    if is_demo and (checkpoint is not None or model_kwargs):
        flag = "--checkpoint" if checkpoint is not None else "--model-kwargs"
        raise UserInputError(f"{flag}: the demo trains its own small ViT on digits and would ignore it; name the "
                             f"timm model to prune (dartboard prune MODEL --checkpoint FILE --model-kwargs JSON)")
    if register_as and not uri:
        raise UserInputError("--register: registering needs MLflow: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    check_writable_dir(out, "--out")
    _check_no_other_model(out)
    if uri:
        check_tracking_server(uri, "--tracking-uri")


def _check_no_other_model(out: Path) -> None:
    """``--out`` holding another model's files (a search's genotype, a trained network, a pulled version) is refused:
    the pruned ViT's ``genotype.json`` would replace its genotype. An earlier pruning's folder is replaced, with a
    warning."""
    from dartboard.model_files import GENOTYPE_FILE, NETWORK_FILE, WEIGHTS_FILE
    from dartboard.spaces import genotype as gt

    others = [name for name in (WEIGHTS_FILE, NETWORK_FILE) if (out / name).is_file()]
    if (out / GENOTYPE_FILE).is_file():
        try:
            kind = gt.load(out / GENOTYPE_FILE).kind
        except (gt.GenotypeError, OSError):
            kind = "unreadable"
        if kind != "gates":
            others.insert(0, f"{GENOTYPE_FILE} of kind {kind!r}")
        else:
            others = [name for name in others if name != NETWORK_FILE]  # a fine-tuned pruning's record
            if not others:
                log.warning("prune: %s holds an earlier pruning; its files are replaced by this one's", out)
    if others:
        raise UserInputError(f"--out: {str(out)!r} holds another model's files ({', '.join(others)}); the pruned "
                             f"ViT's {GENOTYPE_FILE} would replace its genotype: give another --out")


def default_name(model: str) -> str:
    from dartboard.platform.tracking.pruned import default_pruned_name

    return default_pruned_name(model)


def _register(uri: str, register_as: str, run_id: str, result, original) -> None:
    """Register the pruned model; throughput before/after is the demo's, or measured here (few steps)."""
    from dartboard.platform import dario_run
    from dartboard.platform.tracking.pruned import register_pruned
    from dartboard.spaces.vit import infer_input_shape

    throughput = {k: v for k, v in result.metrics.items() if k.startswith(("inference_", "train_"))}
    if not throughput and original is not None:
        throughput = dario_run.compare_throughput(original, result.pruned, infer_input_shape(original), batch_size=8,
                                                  steps=THROUGHPUT_STEPS, warmup=1)
    name, _, alias = register_as.partition("@")
    version = register_pruned(uri, name, run_id, result.pruned, result.genotype, params_original=result.params_original,
                              params_pruned=result.params_pruned, throughput=throughput, alias=alias or None,
                              network=result.network)
    typer.echo(f"registered {name} version {version.version}" + (f" (@{alias})" if alias else ""))


def prune_study(
    n_models: int = typer.Option(20, min=3, help="random pruned models per repeat (thesis: 100)"),
    repeats: int = typer.Option(3, min=1, help="independent repeats for the 95% CIs (thesis: 12)"),
    finetune_epochs: int = typer.Option(2, min=0, help="brief fine-tuning of each sampled model"),
    seed: int = typer.Option(0),
    train_epochs: int = typer.Option(40, min=1, help="epochs training the demo ViT that plays the pre-trained "
                                     "model"),
) -> None:
    """Proxy study (thesis 6.1.2): correlation of every Table 6.1 proxy with accuracy on digits."""
    from dartboard.platform import dario_demo, dario_run

    model, train, test = dario_demo.train_demo_vit(seed, dario_demo.DemoSettings(train_epochs=train_epochs))
    result = dario_run.proxy_study(model, dario_demo.DEMO_MODEL, train, test, n_models=n_models, repeats=repeats,
                                   finetune_epochs=finetune_epochs, seed=seed)
    for line in result.table():
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)
    app.command("prune-study")(prune_study)
