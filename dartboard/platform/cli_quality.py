"""`dartboard bench build-table` and `dartboard bench quality` (the tiny81 benchmark)."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import typer

log = logging.getLogger("dartboard")
DEFAULT_TABLE_OUT = "dartboard/data/tiny81.json"


def build_table_cmd(
    out: Path = typer.Option(Path(DEFAULT_TABLE_OUT), help="Where to write the table JSON (resumable)."),
    epochs: int = typer.Option(None, help="Training epochs per entry (protocol default 8)."),
    channels: int = typer.Option(None, help="Initial channels C (protocol default 8)."),
    seeds: str = typer.Option(None, help="Comma-separated training seeds (protocol default 0,1,2)."),
    threads: int = typer.Option(None, help="torch threads per training (protocol default 1)."),
    reverse: bool = typer.Option(False, "--reverse", help="Build from the last entry backwards (run a second "
                                 "process with --reverse on the same --out to use two cores)."),
    offset: int = typer.Option(0, help="Start this many entries into the (possibly reversed) order."),
) -> None:
    """Train all 81 members of tiny81 with every seed and write the table (about 25 min on a
    shared 2-core CPU with the default protocol; resumes a partial file)."""
    from dartboard.bench.table import TableProtocol, build_table

    kw = {"epochs": epochs, "channels": channels, "threads": threads,
          "seeds": tuple(int(s) for s in seeds.split(",")) if seeds else None}
    protocol = TableProtocol(**{k: v for k, v in kw.items() if v is not None})
    command = "dartboard " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--reverse")
    command = command.split(" --offset")[0]

    def on_entry(n: int, total: int, entry: dict) -> None:
        log.info("[%d/%d] %-45s test %.4f +- %.4f  val %.4f  %.1f s", n, total, entry["key"], entry["test_mean"],
                 entry["test_std"], entry["val_mean"], entry["train_seconds"])

    table = build_table(protocol, out, command=command, on_entry=on_entry, reverse=reverse, offset=offset)
    stats = table.meta.get("statistics", {})
    typer.echo(f"table written to {out}: {len(table.entries)} entries; best test {stats.get('best_test_mean'):.4f}, "
               f"worst {stats.get('worst_test_mean'):.4f}, mean seed std {stats.get('mean_seed_std_test'):.4f}, "
               f"Spearman between seeds {stats.get('spearman_between_seeds_test')}")


def quality_cmd(
    searchers: str = typer.Option(None, help="Comma-separated searchers (default: darts, fairdarts, rdarts-es, "
                                  "darts+pr+fimt, ddarts, those registered); random search is added."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
    epochs: int = typer.Option(20, help="Search epochs per trial."),
    workers: int = typer.Option(2, help="Trials run at once (one CPU each)."),
    ray_address: str = typer.Option(None, help="An existing Ray cluster (default: a private local one)."),
    own_parse: bool = typer.Option(False, "--own-parse", help="Keep each preset's discretizer (default: the "
                                   "DARTS parse, whose outcomes are exactly the table's members)."),
    no_random: bool = typer.Option(False, "--no-random", help="Leave out random search."),
    table: Path = typer.Option(None, help="Table JSON (default: the shipped dartboard/data/tiny81.json)."),
    out: Path = typer.Option(Path("runs/bench-quality"), help="Output folder."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default sqlite:///mlflow.db)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
    rescore: Path = typer.Option(None, help="Do not search: rescore this quality.json against the (rebuilt) "
                                 "table from its recorded architectures, rewriting its table and plot."),
) -> None:
    """Search quality in tiny81: anytime regret of each searcher over seeds, vs random search (a study
    on the one study runner: every (searcher, seed) a Ray Train trial)."""
    from dartboard.bench.quality import DEFAULT_SEARCHERS, QualityConfig, rescore_file
    from dartboard.searchers.registry import SEARCHERS, _load_builtin

    if rescore is not None:
        cfg, result = rescore_file(rescore, str(table) if table else None)
        typer.echo(result["markdown"])
        typer.echo(f"rescored {rescore}; curves: {result['plot']}")
        return
    from dartboard.platform.quality import run_quality

    _load_builtin()
    if searchers:
        names = [s.strip() for s in searchers.split(",") if s.strip()]
    else:
        names = [s for s in DEFAULT_SEARCHERS if s in SEARCHERS]
    cfg = QualityConfig(searchers=names, seeds=[int(s) for s in seeds.split(",")], epochs=epochs, workers=workers,
                        parse=None if own_parse else "darts", random_search=not no_random,
                        table=str(table) if table else None)
    log.info("bench quality: %s x seeds %s, %d epochs, %d trials at once", ", ".join(names), cfg.seeds, epochs,
             workers)
    result = run_quality(cfg, out, ray_address=ray_address, tracking_uri=tracking_uri, mlflow=not no_mlflow)
    typer.echo(result["markdown"])
    typer.echo(f"curves: {result['plot']}; table: {out / 'quality.md'}; took {result['wall_seconds']:.0f} s; "
               f"study: {result['run_dir']}")


def register(app: typer.Typer) -> None:
    from dartboard.platform.cli import bench_app

    bench_app.command("build-table")(build_table_cmd)
    bench_app.command("quality")(quality_cmd)
