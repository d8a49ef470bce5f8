"""`dartboard pull`, `dartboard models list|show` and `dartboard ablate`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

models_app = typer.Typer(no_args_is_help=True, help="Registered models (MLflow model registry).")

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."


def pull(
    model: str = typer.Argument(..., help="NAME, NAME@ALIAS, NAME:VERSION or models:/NAME@ALIAS."),
    to: Path = typer.Option(..., "--to", help="Folder to write genotype.json, network.json and weights into."),
    tracking_uri: str = typer.Option(None, help=TRACKING_HELP),
) -> None:
    """Download a registered model's genotype and weights, verified against the recorded SHA-256."""
    from dartboard.platform.tracking.models import pull_model

    folder, version = pull_model(tracking_uri, model, to)
    typer.echo(f"{version.name} version {version.version} written to {folder}")
    for path in sorted(folder.iterdir()):
        typer.echo(f"  {path.name}")


def models_list(tracking_uri: str = typer.Option(None, help=TRACKING_HELP)) -> None:
    """Registered models with their latest version and aliases."""
    from dartboard.platform.tracking.models import client

    c = client(tracking_uri)
    models = c.search_registered_models()
    if not models:
        typer.echo("no registered models")
    for m in models:
        versions = c.search_model_versions(f"name='{m.name}'")
        latest = max((int(v.version) for v in versions), default=0)
        aliases = ", ".join(f"@{a}->v{v}" for a, v in sorted((m.aliases or {}).items()))
        typer.echo(f"{m.name:32s} versions {len(versions):3d}  latest v{latest}  {aliases}")


def models_show(
    name: str = typer.Argument(..., help="Registered model name."),
    tracking_uri: str = typer.Option(None, help=TRACKING_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every version of NAME with its aliases, tags (study, searcher, metrics, SHA-256) and run metrics."""
    from dartboard.platform.tracking.models import client

    c = client(tracking_uri)
    versions = sorted(c.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    if not versions:
        raise ValueError(f"model {name!r}: no registered model of that name")
    out = []
    for v in versions:
        metrics = {}
        if v.run_id:
            try:
                metrics = c.get_run(v.run_id).data.metrics
            except Exception:  # noqa: BLE001 - run deleted: show the version anyway
                metrics = {}
        out.append({"version": v.version, "aliases": list(v.aliases or []), "tags": dict(v.tags),
                    "run_id": v.run_id, "metrics": metrics})
    if as_json:
        typer.echo(json.dumps(out, indent=1))
        return
    for item in out:
        aliases = " ".join(f"@{a}" for a in item["aliases"])
        typer.echo(f"{name} v{item['version']} {aliases}  run {item['run_id']}")
        for k, val in sorted(item["tags"].items()):
            typer.echo(f"    tag    {k} = {val}")
        for k, val in sorted(item["metrics"].items()):
            typer.echo(f"    metric {k} = {val:.6g}")


def ablate(
    study: str = typer.Argument(None, help="Study YAML or preset name (see dartboard/platform/studies/ablation_*)."),
    out: Path = typer.Option(None, help="The study's run directory (default STORAGE/NAME-TIMESTAMP)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the study in this run directory after a stop."),
    address: str = typer.Option(None, help="Ray cluster address (auto, ray://...); default: a local Ray."),
    num_cpus: int = typer.Option(None, help="CPUs of the local Ray instance (default: all)."),
    storage: str = typer.Option(None, help="Where run directories live (s3://, gs://, NFS); default runs/studies."),
    tracking_uri: str = typer.Option(None, help=TRACKING_HELP),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
) -> None:
    """Run a comparative ablation study (variants x seeds on Ray) and write its table and plots."""
    from dartboard.platform.ablation import load_study, run_ablation

    if resume is not None:
        if study is not None:
            raise ValueError("resume: give either a study or --resume RUN_DIR, not both")
        summary = run_ablation(resume=str(resume), tracking_uri=tracking_uri, mlflow=not no_mlflow)
    else:
        if study is None:
            raise ValueError("study: give a study YAML or preset name (or --resume RUN_DIR)")
        overrides = {k: v for k, v in {"storage": storage, "ray_address": address,
                                       "ray_num_cpus": num_cpus}.items() if v is not None}
        cfg = load_study(study, overrides)
        summary = run_ablation(cfg, out=out, tracking_uri=tracking_uri, mlflow=not no_mlflow)
    typer.echo(Path(summary["table_md"]).read_text())
    typer.echo(f"table: {summary['table_md']} and {summary['table_csv']}; run directory: {summary['run_dir']}")
    if summary["champion"] is not None:
        typer.echo(f"champion: {summary['champion'].name} version {summary['champion'].version}")


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
    app.command("ablate")(ablate)
    models_app.command("list")(models_list)
    models_app.command("show")(models_show)
    app.add_typer(models_app, name="models")
