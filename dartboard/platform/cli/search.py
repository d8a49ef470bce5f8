"""`dartboard search` (one architecture search on this machine) and `dartboard searchers`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from dartboard.errors import UserInputError, refuse_with, user_input


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML scalars (numbers, bools, lists)."""
    import yaml

    from dartboard.user_files import load_yaml_text

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserInputError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = load_yaml_text(value)
        except yaml.YAMLError as err:
            reason = " ".join(str(err).split())
            raise UserInputError(f"--set {item!r}: the value is not valid YAML ({reason})") from None
    return out


def search(
    config: Path = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                                help="YAML run config (flags override it)."),
    searcher: str = typer.Option(None, help="Searcher or preset name (see `dartboard searchers`)."),
    space: str = typer.Option(None, help="Cell space (darts, darts-none, s_o, s1..s4, ...)."),
    start: str = typer.Option(None, help="DARTOpti: starting architecture (resnet18, resnet50, xception)."),
    dataset: str = typer.Option(None, help="digits (default), cifar10, cifar100, imagefolder."),
    data_root: str = typer.Option(None, help="Folder holding the local dataset."),
    epochs: int = typer.Option(None, help="Search epochs."),
    batch_size: int = typer.Option(None, help="Batch size (train and val)."),
    image_size: int = typer.Option(None, help="Image folders are resized to this many pixels (default 32)."),
    order: int = typer.Option(None, help="DARTS order: 1 or 2."),
    precision: str = typer.Option(None, help="fp32, bf16 or fp16."),
    seed: int = typer.Option(None, help="Seed of the run."),
    device: str = typer.Option(None, help="auto (default), cpu, cuda."),
    out: str = typer.Option(None, help="Output directory (default runs/search-...)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default sqlite:///mlflow.db)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
    set_: list[str] = typer.Option(None, "--set", help="Searcher option KEY=VALUE (repeatable)."),
    resume: Path = typer.Option(None, "--resume", file_okay=False,
                                help="Finish the interrupted search in this output folder (no other flag)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (genotype, last epoch's "
                                                       "metrics, files)."),
) -> None:
    """Run an architecture search and write genotype.json, alpha history and cell pictures; the search
    checkpoints every epoch under OUT/checkpoint, and `--resume OUT` finishes an interrupted one."""
    from dartboard.platform.config import SearchRunConfig, load_yaml
    from dartboard.platform.run import resume_search_job, run_search_job

    if resume is not None:
        refuse_with("--resume", {"--config": config, "--searcher": searcher, "--space": space, "--start": start,
                                 "--dataset": dataset, "--data-root": data_root, "--epochs": epochs,
                                 "--batch-size": batch_size, "--image-size": image_size, "--order": order,
                                 "--precision": precision,
                                 "--seed": seed, "--device": device, "--out": out, "--tracking-uri": tracking_uri,
                                 "--no-mlflow": no_mlflow, "--set": set_},
                    "the search resumes with the config it started with")
        _report(resume_search_job(resume), as_json)
        return

    with user_input():  # only reads and checks the YAML file
        data = load_yaml(config) if config else {}
    flags = {"searcher": searcher, "dataset": dataset, "data_root": data_root, "batch_size": batch_size,
             "image_size": image_size, "seed": seed, "device": device, "out": out, "tracking_uri": tracking_uri}
    data.update({k: v for k, v in flags.items() if v is not None})
    if no_mlflow:
        refuse_with("--no-mlflow", {"--tracking-uri": tracking_uri}, "the search logs to no tracking server")
        data["mlflow"] = False
    options = _lifted(data)
    named = {k: v for k, v in zip(FLAGGED_OPTIONS, (space, start, epochs, order, precision), strict=True)
             if v is not None}
    options.update(named)
    extra = parse_set(set_)
    _check_not_run_settings(extra, set(flags), data.get("searcher", "darts"))
    both = [f"--{k}" for k in extra if k in named]
    if both:  # one of the two would win unseen
        raise UserInputError(f"--set: {', '.join(both)} given both as a flag and with --set; give each once")
    options.update(extra)
    data["options"] = options
    cfg = SearchRunConfig(**data)
    _report(run_search_job(cfg), as_json)


#: Searcher options that `dartboard search` takes as flags: a run config may give them beside the flags' other
#: settings, at its top level (as a study file gives ``epochs``), or under ``options``
FLAGGED_OPTIONS = ("space", "start", "epochs", "order", "precision")


def _lifted(data: dict) -> dict:
    """The run config's ``options`` with the flagged options given at its top level moved in (taken out of
    ``data``); one given both ways is refused by name."""
    options = dict(data.get("options") or {})
    for key in FLAGGED_OPTIONS:
        if key in data:
            if key in options:
                raise UserInputError(f"--config: {key} is given both at the top of the file and under options; "
                                     f"give it once")
            options[key] = data.pop(key)
    return options


def _check_not_run_settings(options: dict, flagged: set[str], searcher: str) -> None:
    """``--set KEY=V`` of a setting of the run (the batch size, the image size, ...) that is no option of the
    searcher: refused with the flag (or the config file's key) that sets it, instead of "unknown option"."""
    from dartboard.platform.config import SearchRunConfig
    from dartboard.searchers.registry import get_searcher_spec

    try:
        own = set(get_searcher_spec(searcher).options)
    except (KeyError, ValueError):  # an unknown searcher: named by the run's own check
        return
    run = [k for k in options if k in SearchRunConfig.model_fields and k != "options" and k not in own]
    if run:
        where = [f"--{k.replace('_', '-')}" if k in flagged else f"{k}: in the --config file" for k in run]
        raise UserInputError(f"--set: {', '.join(run)} {'is a setting' if len(run) == 1 else 'are settings'} of the "
                             f"run, not {'an option' if len(run) == 1 else 'options'} of the searcher; give "
                             f"{', '.join(where)}")


def _report(result, as_json: bool = False) -> None:
    from dartboard.spaces.genotype import to_dict

    if as_json:
        typer.echo(json.dumps({"genotype": to_dict(result.genotype), "out": str(result.out_dir),
                               "seconds": round(result.seconds, 3), "epochs": len(result.history),
                               "last_epoch": result.history[-1] if result.history else None,
                               "files": {k: str(v) for k, v in result.artifacts.items()}}, indent=1))
        return
    typer.echo(f"genotype written to {result.artifacts['genotype']}")
    typer.echo(json.dumps(to_dict(result.genotype)))
    typer.echo(f"search took {result.seconds:.1f} s")


def searchers_cmd() -> None:
    """List the registered searchers and presets."""
    from dartboard.searchers.registry import SEARCHERS

    for name in sorted(SEARCHERS):
        typer.echo(f"{name:24s} {SEARCHERS[name].description}")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
    app.command("searchers")(searchers_cmd)
