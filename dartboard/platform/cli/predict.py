"""`dartboard predict MODEL FILES...` and `dartboard evaluate MODEL`: a trained network (registered, or a folder of
its files) applied to image files (with the preprocessing recorded with it) or to its data set's test split."""

from __future__ import annotations

import json

import typer

from dartboard.errors import UserInputError

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
MODEL_HELP = ("NAME@ALIAS, NAME:VERSION or models:/NAME@ALIAS of a registered network, or a folder holding a trained "
              "network (what dartboard train and dartboard pull --to write).")


def check_source(model: str, tracking_uri: str | None) -> None:
    """A registry reference needs a registry; a folder is read without one (a --tracking-uri is refused)."""
    from dartboard.platform.cli.models import check_registry
    from dartboard.platform.tracking.models import is_folder

    if not is_folder(model):
        check_registry(tracking_uri)
    elif tracking_uri is not None:
        raise UserInputError(f"--tracking-uri: {tracking_uri!r} would be ignored: {model!r} is a folder of model "
                             f"files, read without a registry")


def predict(
    model: str = typer.Argument(..., help=MODEL_HELP),
    files: list[str] = typer.Argument(..., help="Image files: PNG/JPEG (8 or 16 bit) or NPY arrays with values "
                                                "in [0, 1] (or uint8)."),
    tracking_uri: str = typer.Option(None, help=TRACKING_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with every class's probability)."),
) -> None:
    """Classify image files with a trained network; prints FILE, class (with its name, where the data set has
    names: an image folder's class folders, CIFAR's) and confidence per line."""
    from dartboard.platform.predict import predict_files

    check_source(model, tracking_uri)
    rows = predict_files(model, files, tracking_uri)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    width = max(len(r["file"]) for r in rows)
    for r in rows:
        label = f" ({r['label']})" if "label" in r else ""
        typer.echo(f"{r['file']:<{width}}  class {r['class']}{label}  confidence {r['confidence']:.4f}")


def evaluate(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data_root: str = typer.Option(None, help="Folder holding the model's data set (cifar10, imagefolder, ...)."),
    tracking_uri: str = typer.Option(None, help=TRACKING_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Accuracy of a trained network on the test split of the data set it was trained on."""
    from dartboard.platform.predict import evaluate_model

    check_source(model, tracking_uri)
    result = evaluate_model(model, tracking_uri, data_root)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    named = result["model"] if result["version"] is None else f"{result['model']} version {result['version']}"
    where = f" in {result['data_root']}" if result["data_root"] else ""
    typer.echo(f"{named} on the {result['dataset']} test split{where} ({result['test_samples']} images)")
    typer.echo(f"test_loss {result['test_loss']:.4f}")
    typer.echo(f"test_acc {result['test_acc']:.4f}")
    if result["recorded_test_acc"] is not None:
        typer.echo(f"{'registered' if result['version'] is not None else 'recorded'} test_acc "
                   f"{result['recorded_test_acc']:.4f}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("evaluate")(evaluate)
