"""`dartboard ablate`: a comparative ablation study (variants x seeds on Ray), its table and plots."""

from __future__ import annotations

from pathlib import Path

import typer

from dartboard.errors import UserInputError, refuse_with, user_input
from dartboard.platform.progress import counted

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."


def ablate(
    study: str = typer.Argument(None, help="Study YAML or preset name (see dartboard/platform/studies/ablation_*)."),
    out: Path = typer.Option(None, help="The study's run directory (default STORAGE/NAME-TIMESTAMP)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the study in this run directory after a stop."),
    address: str = typer.Option(None, help="Ray cluster address (auto, ray://...); default: a local Ray."),
    num_cpus: int = typer.Option(None, help="CPUs of the local Ray instance (default: all)."),
    storage: str = typer.Option(None, help="Where run directories live (s3://, gs://, NFS); default runs/studies."),
    tracking_uri: str = typer.Option(None, help=TRACKING_HELP),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
    promote: bool = typer.Option(False, "--promote", help="Give the @champion alias to this study's champion even "
                                 "if it does not beat the current one."),
    set_: list[str] = typer.Option(None, "--set", help="Study key KEY=VALUE, the value as YAML (repeatable; "
                                   "dotted keys reach into mappings: epochs=2, options.C=4, scheduler.type=fifo); "
                                   "with --resume the report's keys only (report.metrics=[test_error, parameters])."),
) -> None:
    """Run a comparative ablation study (variants x seeds on Ray) and write its table and plots."""
    from dartboard.platform.ablation import load_study, run_ablation

    if no_mlflow:
        refuse_with("--no-mlflow", {"--tracking-uri": tracking_uri, "--promote": promote},
                    "the study logs to no tracking server and registers no champion")
    if address is not None:
        refuse_with("--address", {"--num-cpus": num_cpus}, "the study joins a running cluster, whose CPUs are its own")
    if out is not None:
        refuse_with("--out", {"--storage": storage}, "the study's run directory is the folder given, in no storage")
    if resume is not None:
        if study is not None:
            raise UserInputError("resume: give either a study or --resume RUN_DIR, not both")
        refuse_with("--resume", {"--out": out, "--address": address, "--num-cpus": num_cpus, "--storage": storage},
                    "the study resumes in its run directory with the storage and Ray it started with")
        from dartboard.platform.cli.sweep import study_settings

        summary = run_ablation(resume=str(resume), tracking_uri=tracking_uri, mlflow=not no_mlflow,
                               promote=promote, report_settings=study_settings(set_, {}))
    else:
        if study is None:
            raise UserInputError("study: give a study YAML or preset name (or --resume RUN_DIR)")
        overrides = {k: v for k, v in {"storage": storage, "ray_address": address,
                                       "ray_num_cpus": num_cpus}.items() if v is not None}
        from dartboard.platform.cli.sweep import study_settings

        settings = study_settings(set_, overrides)
        with user_input():  # only reads and validates the study file
            cfg = load_study(study, overrides, settings)
        summary = run_ablation(cfg, out=out, tracking_uri=tracking_uri, mlflow=not no_mlflow, promote=promote)
    trials = summary["result"].trials
    if not any(t["status"] == "complete" for t in trials):
        typer.echo(f"no trial of the study completed ({counted(len(trials), 'trial')}); run directory: "
                   f"{summary['run_dir']}",
                   err=True)
        raise typer.Exit(1)
    typer.echo(Path(summary["table_md"]).read_text())
    typer.echo(f"table: {summary['table_md']} and {summary['table_csv']}; run directory: {summary['run_dir']}")
    if summary["champion"] is not None:
        decision = summary["champion_decision"]
        where = "takes @champion" if decision.move else "registered without @champion"
        typer.echo(f"champion: {summary['champion'].name} version {summary['champion'].version}, {where} "
                   f"({decision.reason})")


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)
