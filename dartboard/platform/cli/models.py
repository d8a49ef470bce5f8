"""`dartboard models list|show` and `dartboard pull`: the MLflow model registry."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dartboard.errors import UserInputError

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."


def check_registry(uri: str | None) -> None:
    """A tracking server that is down fails here in seconds, not after MLflow's minutes of retries; a local
    registry file that does not exist is named, not created."""
    from dartboard.platform.checks import check_registry_exists, check_tracking_server
    from dartboard.platform.tracking.runs import tracking_uri

    check_tracking_server(tracking_uri(uri))
    check_registry_exists(tracking_uri(uri))


def pull(
    model: str = typer.Argument(..., help="NAME, NAME@ALIAS, NAME:VERSION or models:/NAME@ALIAS."),
    to: Path = typer.Option(..., "--to", help="Folder to write genotype.json, network.json and weights into."),
    tracking_uri: str = typer.Option(None, help=TRACKING_HELP),
) -> None:
    """Download a registered model's genotype and weights, verified against the recorded SHA-256."""
    from dartboard.platform.checks import check_writable_dir

    check_writable_dir(to, "--to")
    check_registry(tracking_uri)
    from dartboard.platform.tracking.models import pull_model

    folder, version = pull_model(tracking_uri, model, to)
    typer.echo(f"{version.name} version {version.version} written to {folder}")
    for path in sorted(folder.iterdir()):
        typer.echo(f"  {path.name}")


def every_page(search, **kwargs) -> list:
    """Every result of an MLflow registry search, page after page (one page is 100 registered models)."""
    found, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        found.extend(page)
        token = page.token
        if not token:
            return found


def models_list(tracking_uri: str = typer.Option(None, help=TRACKING_HELP)) -> None:
    """Registered models with their latest version and aliases."""
    check_registry(tracking_uri)
    from dartboard.platform.tracking.models import client

    c = client(tracking_uri)
    models = every_page(c.search_registered_models)
    if not models:
        typer.echo("no registered models")
    by_name: dict[str, list] = {}
    for v in every_page(c.search_model_versions):  # every version at once (no filter: a name may hold any quote)
        by_name.setdefault(v.name, []).append(v)
    for m in models:
        versions = by_name.get(m.name, [])
        latest = max((int(v.version) for v in versions), default=0)
        aliases = ", ".join(f"@{a}->v{v}" for a, v in sorted((m.aliases or {}).items()))
        typer.echo(f"{m.name:32s} versions {len(versions):3d}  latest v{latest}  {aliases}")


def models_show(
    name: str = typer.Argument(..., help="Registered model NAME (every version), or NAME@ALIAS / NAME:VERSION (that "
                                         "version)."),
    tracking_uri: str = typer.Option(None, help=TRACKING_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every version of NAME (or the one NAME@ALIAS or NAME:VERSION names) with its aliases, tags (study, searcher,
    metrics, SHA-256) and run metrics."""
    check_registry(tracking_uri)
    from dartboard.platform.tracking.models import client

    c = client(tracking_uri)
    name, versions, aliases = _versions(c, name)
    out = []
    for v in versions:
        metrics = {}
        if v.run_id:
            try:
                metrics = c.get_run(v.run_id).data.metrics
            except Exception:  # noqa: BLE001 - run deleted: show the version anyway
                metrics = {}
        out.append({"version": v.version, "aliases": aliases.get(str(v.version), []), "tags": dict(v.tags),
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


def _versions(c, ref: str) -> tuple[str, list, dict[str, list[str]]]:
    """The registered model's name, the versions ``ref`` names (NAME: every one, NAME@ALIAS or NAME:VERSION: that
    one) in order, and each version's aliases (from the registered model: a version search leaves them out)."""
    from dartboard.platform.tracking.models import filter_literal, parse_model_ref

    name, alias, number = parse_model_ref(ref)
    versions = sorted(every_page(c.search_model_versions, filter_string=f"name={filter_literal(name)}"),
                      key=lambda v: int(v.version))
    if not versions:
        raise UserInputError(f"model {name!r}: no registered model of that name")
    aliases: dict[str, list[str]] = {}
    for a, v in sorted((c.get_registered_model(name).aliases or {}).items()):
        aliases.setdefault(str(v), []).append(a)
    if alias is not None or number is not None:
        versions = [v for v in versions if alias in aliases.get(str(v.version), []) or str(v.version) == number]
        if not versions:
            raise UserInputError(f"model {ref!r}: {name} has no " + (f"alias {alias!r}" if alias else
                                                                      f"version {number}"))
    return name, versions, aliases


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(no_args_is_help=True, help="Registered models (MLflow model registry).")
    models_app.command("list")(models_list)
    models_app.command("show")(models_show)
    app.add_typer(models_app, name="models")
    app.command("pull")(pull)
