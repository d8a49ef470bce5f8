"""`dartboard pmsm search` (the two searches of thesis 6.2 in sequence) and `dartboard pmsm compare`
(searched vs baseline flux models over seeds, against the simulator's ground truth)."""

from __future__ import annotations

from pathlib import Path

import typer

from dartboard.errors import UserInputError

pmsm_app = typer.Typer(no_args_is_help=True, add_completion=False,
                       help="PMSM flux models (thesis 6.2): two-step search and comparison.")


@pmsm_app.command("search")
def search(
    out: str = typer.Option("runs/pmsm", help="Output folder (step1-depth/, step2-activation/, genotype.json)."),
    seed: int = typer.Option(0),
    data_root: str = typer.Option(None, help="A JSON/YAML file of motor parameters (default: the built-in motor)."),
    set_depth: list[str] = typer.Option(None, "--set-depth", help="Option of step 1 KEY=VALUE (repeatable)."),
    set_activation: list[str] = typer.Option(None, "--set-activation", help="Option of step 2 KEY=VALUE."),
    tracking_uri: str = typer.Option(None),
    no_mlflow: bool = typer.Option(False, "--no-mlflow"),
) -> None:
    """Step 1 (pmsm-depth) then step 2 (pmsm-activation) on the depth step 1 found."""
    from dartboard.platform.cli.search import parse_set
    from dartboard.platform.pmsm import run_two_step

    result = run_two_step(out, seed=seed, data_root=data_root, depth_options=parse_set(set_depth),
                          activation_options=parse_set(set_activation), mlflow=not no_mlflow,
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
    data_root: str = typer.Option(None, help="A JSON/YAML file of motor parameters."),
    out: str = typer.Option("runs/pmsm-compare", help="Output folder (comparison.md, runs.csv, flux_maps.png)."),
) -> None:
    """Train each flux model over the seeds through criterion C; report C and flux error (mean +- std)."""
    from dartboard.platform.pmsm import compare as run_compare
    from dartboard.spaces.catalog import resolve
    from dartboard.spaces.pmsm_genotype import FluxMlpGenotype

    models = {}
    for item in genotypes:
        name, _, ref = item.partition("=")
        name, ref = (name, ref) if ref else (Path(name).stem if name.endswith(".json") else name, name)
        g = resolve(ref)
        if not isinstance(g, FluxMlpGenotype):
            raise UserInputError(f"genotype {ref!r} is a {g.kind!r} genotype; pmsm compare needs flux_mlp genotypes")
        models[name] = g
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserInputError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    if epochs < 1 or not seed_list:
        raise UserInputError("--epochs must be >= 1 and --seeds must name at least one seed")
    result = run_compare(models, seed_list, out, epochs=epochs, data_root=data_root, lr=lr)
    typer.echo(result["table"])
    if result["plot"] is not None:
        typer.echo(f"flux maps: {result['plot']}")


def register(app: typer.Typer) -> None:
    app.add_typer(pmsm_app, name="pmsm")
