"""`dartboard sweep [STUDY]` and `dartboard sweep --resume RUN_DIR`: the project's main job.

With no argument it runs the bundled digits preset (``dartboard/platform/studies/digits.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dartboard.errors import UserInputError, refuse_with, user_input
from dartboard.platform.progress import counted, epochs_in_words


def sweep(
    study: str = typer.Argument(None, help="Study YAML, or the name of a preset in dartboard/platform/studies "
                                           "(default: digits)."),
    resume: str = typer.Option(None, "--resume", help="Resume the sweep in this run directory (after a crash)."),
    storage: str = typer.Option(None, help="Override the study's storage: a folder, s3://... or gs://..."),
    num_samples: int = typer.Option(None, help="Override the study's number of trials."),
    address: str = typer.Option(None, "--address", help="Join a running Ray cluster (e.g. auto) instead of "
                                                        "starting a local one."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default sqlite:///mlflow.db)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not track in MLflow nor register the champion."),
    promote: bool = typer.Option(False, "--promote", help="Give the @champion alias to this study's champion even "
                                 "if it does not beat the current one."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (counts, best trial, every trial)."),
    set_: list[str] = typer.Option(None, "--set", help="Study key KEY=VALUE, the value as YAML (repeatable; "
                                   "dotted keys reach into mappings: epochs=2, options.C=4, scheduler.type=fifo)."),
) -> None:
    """Sweep a study's outer hyperparameters with Ray Tune + Optuna (TPE) + ASHA; print the best."""
    from dartboard.platform.sweep import load_study, run_sweep

    if no_mlflow:
        refuse_with("--no-mlflow", {"--tracking-uri": tracking_uri, "--promote": promote},
                    "the sweep logs to no tracking server and registers no champion")
    if resume is not None:
        if study is not None:
            raise UserInputError("resume: give either a study or --resume RUN_DIR, not both")
        refuse_with("--resume", {"--storage": storage, "--num-samples": num_samples, "--address": address,
                                 "--set": set_}, "the sweep resumes with the study, storage and Ray address it started "
                                                 "with")
        result = run_sweep(resume=resume, tracking_uri=tracking_uri, mlflow=not no_mlflow, promote=promote)
    else:
        overrides = {k: v for k, v in {"storage": storage, "num_samples": num_samples,
                                       "ray_address": address}.items() if v is not None}
        settings = study_settings(set_, overrides)
        with user_input():  # only reads and validates the study
            cfg = load_study(study, overrides, settings)
        # The study is a parent MLflow run, each trial a child; the best genotype becomes NAME@champion.
        result = run_sweep(cfg, tracking_uri=tracking_uri, mlflow=not no_mlflow, promote=promote)
    if as_json:
        typer.echo(json.dumps(json_summary(result, registered=not no_mlflow), indent=1, default=str))
        if result.best is None:
            raise typer.Exit(1)
        return
    echo_summary(result, registered=not no_mlflow)


def study_settings(items: list[str] | None, overrides: dict) -> dict:
    """``--set`` pairs of a study command; a key also given by its own flag is refused (which one would win?)."""
    from dartboard.platform.cli.search import parse_set

    settings = parse_set(items)
    flags = {"storage": "--storage", "num_samples": "--num-samples", "ray_address": "--address",
             "ray_num_cpus": "--num-cpus"}
    both = sorted(flags[k] for k in settings if k in overrides)
    if both:
        raise UserInputError(f"--set: {', '.join(both)} given both as a flag and with --set; give each once")
    return settings


#: what a study's objective is, by its kind (config.StudyObjective), as the summary says it (a supernet without
#: accuracy, PMSM's, is scored by minus its validation loss)
OBJECTIVE_WORDS = {"supernet": "the supernet's validation accuracy", "derived": "the derived model's accuracy after a "
                   "short training", "final": "its final training's test accuracy"}
#: The ``derived`` objective of genotypes that are no cell network (platform/ray/derived.py)
DERIVED_WORDS = {"gates": "the pruned ViT's validation accuracy after fine-tuning its last block",
                 "mlp": "the kNN accuracy of a backbone pretrained briefly with the derived heads"}


def echo_summary(result, registered: bool) -> None:
    """The text summary: counts, errors, the best trial, its configuration and genotype, where it went."""
    c = result.counts
    typer.echo(f"\nsweep finished in {result.seconds:.0f} s: {counted(len(result.trials), 'trial')} "
               f"({c.get('complete', 0)} complete, {c.get('pruned', 0)} stopped by ASHA, {c.get('error', 0)} errored)")
    for t in result.trials:
        if t["status"] == "error":
            typer.echo(f"  errored trial {t['trial_id']}: {t['error']}")
    typer.echo(f"run directory: {result.run_dir}")
    if result.best is None:
        typer.echo("no trial completed; nothing to recommend")
        raise typer.Exit(1)
    best = result.best
    typer.echo(f"best trial {best['trial_id']}: objective {best['objective']:.4f}{_objective_words(result)} "
               f"after {epochs_in_words(best['epoch'])}")
    typer.echo("best configuration: " + json.dumps({"variant": best["variant"], **best["config"]}, sort_keys=True))
    typer.echo("best genotype: " + json.dumps(best["genotype"]))
    if (size := _pruned_size(best.get("metrics") or {})) is not None:
        typer.echo(size)
    if (best.get("metrics") or {}).get("arch_steps") == 0.0:  # e.g. FIMT's schedule never let one run
        typer.echo("best trial took no alpha step (arch_steps 0): its genotype is the parse of the initial alphas, "
                   "searched by nothing; give more epochs")
    if best.get("final"):
        final = best["final"]
        typer.echo(f"champion trained from scratch: test accuracy {final['test_acc']:.4f}, "
                   f"{final['parameters']:,} parameters, weights in {final['dir']}")
    if registered:
        _say_champion(result)
    if "://" not in result.run_dir:
        typer.echo(f"best genotype written to {Path(result.run_dir) / 'best_genotype.json'}")


def _objective_words(result) -> str:
    """What the best trial's objective is (by the study's objective kind and the genotype), in brackets."""
    best = result.best
    kind = getattr(getattr(getattr(result, "config", None), "objective", None), "kind", None)
    if kind == "derived" and (best.get("genotype") or {}).get("kind") in DERIVED_WORDS:
        return f" ({DERIVED_WORDS[best['genotype']['kind']]})"
    if kind == "supernet" and "val_acc" not in best.get("metrics", {}):
        return " (minus the supernet's validation loss)"
    return f" ({OBJECTIVE_WORDS[kind]})" if kind in OBJECTIVE_WORDS else ""


def _pruned_size(metrics: dict) -> str | None:
    """A DARIO trial's pruned ViT against the original (its ``parameters`` and ``params_original``), as a line."""
    pruned, original = metrics.get("parameters"), metrics.get("params_original")
    if not (isinstance(pruned, int | float) and isinstance(original, int | float) and original > 0):
        return None
    return f"best pruned ViT: {int(pruned):,} of the original's {int(original):,} parameters " \
           f"({100 * pruned / original:.1f} %)"


def _registered(result) -> dict | None:
    """The registered champion version and whether it took the alias (None: nothing registered)."""
    tracker = result.tracker
    if tracker is None or tracker.champion is None or tracker.decision is None:
        return None
    return {"name": tracker.champion.name, "version": str(tracker.champion.version),
            "alias": tracker.decision.move, "reason": tracker.decision.reason}


def _say_champion(result) -> None:
    tracker = result.tracker
    if tracker is None or tracker.champion is None or tracker.decision is None:
        return
    name, version = tracker.champion.name, tracker.champion.version
    if tracker.decision.move:
        typer.echo(f"registered in MLflow as {name} version {version}, now {name}@champion "
                   f"({tracker.decision.reason}; dartboard pull {name}@champion --to DIR)")
    else:
        typer.echo(f"registered in MLflow as {name} version {version}; {name}@champion stays where it was "
                   f"({tracker.decision.reason})")


def json_summary(result, registered: bool) -> dict:
    """What the text summary says, as one JSON object (for scripts)."""
    keep = ("trial_id", "variant", "status", "objective", "epoch", "config", "error")
    return {"study": result.config.name, "run_dir": result.run_dir, "seconds": round(result.seconds, 3),
            "counts": result.counts, "best": result.best,
            "registered": _registered(result) if registered else None,
            "trials": [{k: t.get(k) for k in keep} for t in result.trials]}


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
