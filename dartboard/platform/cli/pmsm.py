"""`dartboard pmsm search` (the two searches of thesis 6.2 in sequence), `dartboard pmsm compare` (searched vs
baseline flux models over seeds, against the simulator's ground truth where there is one) and `dartboard pmsm flux`
(a trained model's flux map as a look-up table)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from dartboard.errors import UserInputError, refuse_with

pmsm_app = typer.Typer(no_args_is_help=True, add_completion=False,
                       help="PMSM flux models (thesis 6.2): two-step search and comparison.")


@pmsm_app.command("search")
def search(
    out: str = typer.Option("runs/pmsm", help="Output folder (step1-depth/, step2-activation/, genotype.json)."),
    seed: int = typer.Option(0),
    data_root: str = typer.Option(None, help="A JSON/YAML file of motor parameters (default: the built-in "
                                  "motor), or a CSV file of the motor's measurements (columns I_d, I_q, omega_e, "
                                  "v_d, v_q, R, dI_d/dt, dI_q/dt)."),
    set_depth: list[str] = typer.Option(None, "--set-depth", help="Option of step 1 KEY=VALUE (repeatable)."),
    set_activation: list[str] = typer.Option(None, "--set-activation", help="Option of step 2 KEY=VALUE."),
    tracking_uri: str = typer.Option(None),
    no_mlflow: bool = typer.Option(False, "--no-mlflow"),
) -> None:
    """Step 1 (pmsm-depth) then step 2 (pmsm-activation) on the depth step 1 found."""
    from dartboard.platform.cli.search import parse_set
    from dartboard.platform.pmsm import check_step_options, run_two_step

    if no_mlflow:
        refuse_with("--no-mlflow", {"--tracking-uri": tracking_uri}, "the searches log to no tracking server")
    depth_options, activation_options = parse_set(set_depth), parse_set(set_activation)
    check_step_options(depth_options, activation_options, seed=seed, data_root=data_root,
                       names=("--set-depth", "--set-activation"))  # run_two_step checks them too
    result = run_two_step(out, seed=seed, data_root=data_root, depth_options=depth_options,
                          activation_options=activation_options, mlflow=not no_mlflow,
                          tracking_uri=tracking_uri, progress=True)
    typer.echo(f"step 1 (depth, {result.seconds_depth:.0f} s): {result.depth_genotype.describe()}")
    typer.echo(f"step 2 (activation, {result.seconds_activation:.0f} s): {result.genotype.describe()}")
    typer.echo(f"genotype written to {Path(out) / 'genotype.json'}")


@pmsm_app.command("compare")
def compare(
    genotypes: list[str] = typer.Argument(..., help="NAME=GENOTYPE (a JSON file or pmsm-baseline, pmsm-thesis)."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds."),
    epochs: int = typer.Option(150, help="Training epochs per run (the same budget for every model)."),
    lr: float = typer.Option(3e-3, help="Adam learning rate (cosine)."),
    batch_size: int = typer.Option(128, help="Training batch size (at most the training split's size)."),
    data_root: str = typer.Option(None, help="A JSON/YAML file of motor parameters, or a CSV file of "
                                   "measurements (no flux errors then: they need the true flux map)."),
    out: str = typer.Option("runs/pmsm-compare", help="Output folder (comparison.md, runs.csv, flux_maps.png)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or "
                                     "sqlite:///mlflow.db): the comparison's run, each model's best seed registered "
                                     "as pmsm-NAME."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Log nothing to MLflow, register nothing."),
) -> None:
    """Train each flux model over the seeds through criterion C; report C and flux error (mean +- std); log the
    comparison to MLflow and register each model's best seed (pmsm-NAME)."""
    from dartboard.platform.pmsm import compare as run_compare

    models = named_models(genotypes)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserInputError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    if not seed_list:
        raise UserInputError(f"--seeds: expected at least one seed, got {seeds!r}")
    if epochs < 1:
        raise UserInputError(f"--epochs: expected an integer >= 1, got {epochs}")
    twice = sorted({s for s in seed_list if seed_list.count(s) > 1})
    if twice:
        raise UserInputError(f"--seeds: expected distinct seeds, got {seeds!r} (seed {', '.join(map(str, twice))} "
                             f"more than once)")
    if not (math.isfinite(lr) and lr > 0):
        raise UserInputError(f"--lr: expected a finite number > 0, got {lr}")
    if batch_size < 1:
        raise UserInputError(f"--batch-size: expected an integer >= 1, got {batch_size}")
    uri = _tracking(tracking_uri, no_mlflow)
    result = run_compare(models, seed_list, out, epochs=epochs, data_root=data_root, lr=lr, batch_size=batch_size)
    typer.echo(result["table"])
    if result["plot"] is not None:
        typer.echo(f"flux maps: {result['plot']}")
    if uri is not None:
        from dartboard.data.catalog import absolute_root
        from dartboard.platform.tracking.flux import log_comparison, registered_name

        settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "data_root": absolute_root(data_root)}
        versions = log_comparison(uri, result, models, seed_list, settings, out)
        for name, version in versions.items():
            typer.echo(f"registered {registered_name(name)} version {version} (seed {result['best'][name]['seed']}, "
                       f"the lowest validation criterion)")


def _tracking(tracking_uri: str | None, no_mlflow: bool) -> str | None:
    """The tracking URI the comparison logs to, checked before any training; None with ``--no-mlflow``."""
    from dartboard.platform.checks import check_tracking_server
    from dartboard.platform.tracking.epochs import absolute_uri
    from dartboard.platform.tracking.runs import tracking_uri as resolved_uri

    if no_mlflow:
        refuse_with("--no-mlflow", {"--tracking-uri": tracking_uri}, "the comparison logs to no tracking server")
        return None
    uri = absolute_uri(resolved_uri(tracking_uri))
    check_tracking_server(uri)
    return uri


@pmsm_app.command("flux")
def flux(
    model: str = typer.Argument(..., help="A trained flux model: pmsm compare's OUT/models/NAME/seedN, or its "
                                "registered version (pmsm-NAME:VERSION, pmsm-NAME@ALIAS, models:/...)."),
    out: str = typer.Option(None, help="The CSV file to write (default: MODEL/flux_map.csv; for a registered "
                            "model NAME-vVERSION-flux_map.csv in the current folder)."),
    points: int = typer.Option(41, help="Grid points per current axis."),
    limit: float = typer.Option(None, help="The grid's largest |I_d| and |I_q|, per unit (default: the box of "
                                "the currents the model was trained on)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (a registered model)."),
) -> None:
    """The learned flux map as a look-up table: I_d, I_q, lambda_d, lambda_q and the differential inductances
    L_dd, L_dq, L_qd, L_qq on a grid of currents (CSV)."""
    from dartboard.platform.cli.export import is_model_ref
    from dartboard.platform.pmsm import check_table_options, write_flux_table

    check_table_options(points, limit)
    if is_model_ref(model):
        path, limit = _registered_flux_table(model, out, points, limit, tracking_uri)
    else:
        refuse_with(f"flux model folder {model!r}", {"--tracking-uri": tracking_uri},
                    "the model is read from the folder, not from a registry")
        path, limit = write_flux_table(model, out, points=points, limit=limit)
    typer.echo(f"flux map of {model}: {points} x {points} currents over [-{limit:.3g}, {limit:.3g}] p.u. written to "
               f"{path}")


def _registered_flux_table(ref: str, out: str | None, points: int, limit: float | None, uri: str | None):
    """The flux table of a registered flux model, pulled (verified) into a temporary folder."""
    import tempfile

    from dartboard.model_files import is_flux_model
    from dartboard.platform.cli.models import check_registry
    from dartboard.platform.pmsm import write_flux_table
    from dartboard.platform.tracking.models import pull_model

    check_registry(uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder, version = pull_model(uri, ref, tmp)  # verified against the recorded SHA-256
        if not is_flux_model(folder):
            held = ", ".join(sorted(p.name for p in folder.iterdir()))
            raise UserInputError(f"model {ref!r}: version {version.version} is not a PMSM flux model (it holds {held}; "
                                 f"`dartboard pmsm compare` registers flux models as pmsm-NAME)")
        out = out if out is not None else f"{version.name}-v{version.version}-flux_map.csv"
        return write_flux_table(folder, out, points=points, limit=limit, label=ref)


def named_models(items: list[str]) -> dict[str, Any]:
    """``NAME=GENOTYPE`` (or a bare catalog name or JSON file, named after it) -> {name: flux_mlp genotype}; two
    models of one name would keep only the last, so that is refused."""
    from dartboard.spaces.catalog import resolve
    from dartboard.spaces.pmsm_genotype import FluxMlpGenotype

    models: dict[str, Any] = {}
    given: dict[str, str] = {}  # name -> the argument that gave it
    for item in items:
        name, _, ref = item.partition("=")
        if not ref:  # a bare catalog name or file, named after it
            ref = name
            name = Path(ref).stem if ref.endswith(".json") or Path(ref).is_file() else ref
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise UserInputError(f"genotype {item!r}: expected NAME=GENOTYPE with a NAME that can name a folder "
                                 f"(its runs are written to OUT/models/NAME), got the name {name!r}")
        if name in given:
            raise UserInputError(f"genotypes {given[name]!r} and {item!r} are both named {name!r} (one model would "
                                 f"replace the other); give each its own name as NAME=GENOTYPE, e.g. "
                                 f"{name}1=... {name}2=...")
        given[name] = item
        g = resolve(ref)
        if not isinstance(g, FluxMlpGenotype):
            raise UserInputError(f"genotype {ref!r} is a {g.kind!r} genotype; pmsm compare needs flux_mlp genotypes")
        models[name] = g
    return models


def register(app: typer.Typer) -> None:
    app.add_typer(pmsm_app, name="pmsm")
