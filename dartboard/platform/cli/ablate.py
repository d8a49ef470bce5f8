"""`dartboard ablate`: a comparative ablation study (variants x seeds on Ray), its table and plots."""

from __future__ import annotations

from pathlib import Path

import typer

from dartboard.errors import user_input

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."


def ablate(
    study: Path = typer.Argument(..., exists=True, dir_okay=False,
                                 help="Study YAML (see dartboard/platform/studies/ablation_*.yaml)."),
    out: Path = typer.Option(None, help="Output folder (default runs/ablation-NAME)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the study in this folder after a stop."),
    address: str = typer.Option(None, help="Ray cluster address (auto, ray://...); default: a local Ray."),
    num_cpus: int = typer.Option(None, help="CPUs of the local Ray instance (default: all)."),
    storage: str = typer.Option(None, help="Ray storage for checkpoints (s3://, gs://, NFS); default OUT/ray."),
    tracking_uri: str = typer.Option(None, help=TRACKING_HELP),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
) -> None:
    """Run a comparative ablation study (variants x seeds on Ray) and write its table and plots."""
    from dartboard.platform.ablation import load_study, run_ablation

    overrides = {}
    if tracking_uri:
        overrides["tracking_uri"] = tracking_uri
    if no_mlflow:
        overrides["mlflow"] = False
    if storage:
        overrides["storage_path"] = storage
    with user_input():  # only reads and validates the study file
        cfg = load_study(study, overrides)
    folder = resume or out or Path("runs") / f"ablation-{cfg.name}"
    summary = run_ablation(cfg, folder, resume=resume is not None, address=address, num_cpus=num_cpus)
    typer.echo(Path(summary["table_md"]).read_text())
    typer.echo(f"table: {summary['table_md']} and {summary['table_csv']}")
    if summary["champion"] is not None:
        typer.echo(f"champion: {summary['champion'].name} version {summary['champion'].version}")


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)
