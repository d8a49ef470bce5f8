"""`dartboard bench`: speed and memory of a search step, and the tiny81 benchmark (build-table, quality)."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from dartboard.errors import UserInputError, refuse_with, user_input
from dartboard.platform.progress import counted

log = logging.getLogger("dartboard")
DEFAULT_TABLE_OUT = "dartboard/data/tiny81.json"


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserInputError(f"--seeds: expected comma-separated integers such as 0,1,2, got {text!r}") from None


def build_table_cmd(
    out: Path = typer.Option(Path(DEFAULT_TABLE_OUT), help="Where to write the table JSON (resumable)."),
    epochs: int = typer.Option(None, help="Training epochs per entry (protocol default 8)."),
    channels: int = typer.Option(None, help="Initial channels C (protocol default 8)."),
    seeds: str = typer.Option(None, help="Comma-separated training seeds (protocol default 0,1,2)."),
    threads: int = typer.Option(None, help="torch threads per training (protocol default 1)."),
    reverse: bool = typer.Option(False, "--reverse", help="Build from the last entry backwards (run a second "
                                 "process with --reverse on the same --out to use two cores)."),
    offset: int = typer.Option(0, help="Start this many entries into the (possibly reversed) order."),
    space: str = typer.Option("tiny81", help="tiny81 (81 members, shipped) or tiny625 (625 members; default out "
                              "dartboard/data/tiny625.json)."),
) -> None:
    """Train all members of tiny81 (or tiny625) with every seed and write the table (tiny81: about 25 min
    on a shared 2-core CPU with the default protocol; resumes a partial file)."""
    from dartboard.bench.table import TableProtocol, build_order, build_table, existing_entries
    from dartboard.platform.checks import check_writable_dir
    from dartboard.spaces.tiny import TINY_SPACES

    if space not in TINY_SPACES:
        raise UserInputError(f"--space: expected one of {', '.join(TINY_SPACES)}, got {space!r}")
    if space != "tiny81" and out == Path(DEFAULT_TABLE_OUT):
        out = Path(DEFAULT_TABLE_OUT).with_name(f"{space}.json")

    seed_list = parse_seeds(seeds) if seeds is not None else None  # distinct seeds: TableProtocol's check
    kw = {"epochs": epochs, "channels": channels, "threads": threads,
          "seeds": None if seed_list is None else tuple(seed_list)}
    try:  # only checks the protocol's values; each message starts with the field, the flag of that name
        protocol = TableProtocol(**{k: v for k, v in kw.items() if v is not None})
    except ValueError as err:
        raise UserInputError(f"--{err}") from None
    build_order(space, None, reverse, offset, "--offset")  # an offset past the entries, refused (it used to wrap)
    existing_entries(out, protocol, "--out")  # a file it could not resume, refused before the first training
    check_writable_dir(out.parent, "--out")  # leaves nothing behind
    command = recorded_command(sys.argv[1:])

    def on_entry(n: int, total: int, entry: dict) -> None:
        log.info("[%d/%d] %-45s test %.4f +- %.4f  val %.4f  %.1f s", n, total, entry["key"], entry["test_mean"],
                 entry["test_std"], entry["val_mean"], entry["train_seconds"])

    table = build_table(protocol, out, command=command, on_entry=on_entry, reverse=reverse, offset=offset,
                        space=space)
    stats = table.meta.get("statistics", {})
    typer.echo(f"table written to {out}: {len(table.entries)} entries; best test {stats.get('best_test_mean'):.4f}, "
               f"worst {stats.get('worst_test_mean'):.4f}, mean seed std {stats.get('mean_seed_std_test'):.4f}, "
               f"Spearman between seeds {stats.get('spearman_between_seeds_test')}")


def recorded_command(args: list[str]) -> str:
    """The command recorded in the table: the arguments as given, without ``--reverse`` and ``--offset N`` (where
    a builder starts does not change the table; every other flag does or names it)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--offset":
            skip = True  # and its value
        elif arg != "--reverse" and not arg.startswith("--offset="):
            kept.append(arg)
    return " ".join(["dartboard", *(shlex.quote(a) for a in kept)])


def quality_cmd(
    searchers: str = typer.Option(None, help="Comma-separated searchers (default: darts, fairdarts, rdarts-es, "
                                  "darts+pr+fimt, ddarts and the one-shot presets gdas, snas, drnas, pc-darts, "
                                  "sdarts-rs, sdarts-adv, darts-minus, darts-pt); random search is added."),
    seeds: str = typer.Option(None, help="Comma-separated seeds (default 0,1,2)."),
    epochs: int = typer.Option(None, help="Search epochs per trial (default 20)."),
    workers: int = typer.Option(None, help="Trials run at once, one CPU each (default 2)."),
    ray_address: str = typer.Option(None, help="An existing Ray cluster (default: a private local one)."),
    own_parse: bool = typer.Option(False, "--own-parse", help="Keep each preset's discretizer (default: the "
                                   "DARTS parse, whose outcomes are exactly the table's members)."),
    no_random: bool = typer.Option(False, "--no-random", help="Leave out random search."),
    table: Path = typer.Option(None, exists=True, dir_okay=False,
                               help="Table JSON (default: the shipped dartboard/data/tiny81.json)."),
    out: Path = typer.Option(None, help="Output folder (default runs/bench-quality)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default sqlite:///mlflow.db)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
    rescore: Path = typer.Option(None, exists=True, dir_okay=False,
                                 help="Do not search: rescore this quality.json against the (rebuilt) "
                                 "table from its recorded architectures, rewriting its table and plot."),
    resume: Path = typer.Option(None, "--resume", exists=True, file_okay=False,
                                help="Finish an interrupted benchmark: its output folder (--out) or its study's "
                                "run directory; its searchers, seeds, epochs and table are read from there."),
) -> None:
    """Search quality in tiny81: anytime regret of each searcher over seeds, vs random search (a study
    on the one study runner: every (searcher, seed) a Ray Train trial)."""
    from dartboard.bench.quality import (
        DEFAULT_SEARCHERS,
        RANDOM,
        QualityConfig,
        read_quality_file,
        rescore_read,
        trial_options,
    )
    from dartboard.bench.table import load_table
    from dartboard.searchers.registry import SEARCHERS

    new_run = {"--searchers": searchers, "--seeds": seeds, "--epochs": epochs, "--workers": workers,
               "--ray-address": ray_address, "--own-parse": own_parse, "--no-random": no_random, "--out": out}
    if resume is not None:
        refuse_with("--resume", {**new_run, "--table": table, "--rescore": rescore},
                    "the benchmark's searchers, seeds, table, parse and Ray address are read from the run; give "
                    "either --resume or a new benchmark's options, not both")
    if no_mlflow:
        refuse_with("--no-mlflow", {"--tracking-uri": tracking_uri}, "the benchmark logs to no tracking server")
    if rescore is not None:
        refuse_with("--rescore", new_run, "rescoring runs no search and writes next to the quality file it rescores")
        with user_input():  # only reads and checks the quality file and the table
            cfg, data, loaded = read_quality_file(rescore, str(table) if table else None)
        result = rescore_read(rescore, cfg, data, loaded)
        typer.echo(result["markdown"])
        typer.echo(f"rescored {rescore}; curves: {result['plot']}")
        if not no_mlflow:
            from dartboard.platform.quality import log_rescore

            typer.echo(f"mlflow: run {log_rescore(result, cfg, rescore, tracking_uri)}")
        return
    from dartboard.platform.quality import run_quality

    if resume is not None:
        result = run_quality(None, ray_address=ray_address, tracking_uri=tracking_uri, mlflow=not no_mlflow,
                             resume=resume)
        typer.echo(result["markdown"])
        typer.echo(f"curves: {result['plot']}; took {result['wall_seconds']:.0f} s; study: {result['run_dir']}")
        return
    if searchers:
        names = [s.strip() for s in searchers.split(",") if s.strip()]
    else:
        names = [s for s in DEFAULT_SEARCHERS if s in SEARCHERS]
    with user_input():  # only checks the configuration's values
        given = {"seeds": None if seeds is None else parse_seeds(seeds), "epochs": epochs, "workers": workers}
        cfg = QualityConfig(searchers=names, parse=None if own_parse else "darts", random_search=not no_random,
                            table=str(table) if table else None, **{k: v for k, v in given.items() if v is not None})
        loaded = load_table(cfg.table)  # a table it cannot use: refused before Ray starts
        for name in cfg.searchers:  # a searcher that cannot search the table's space (dario, say)
            if name != RANDOM:
                trial_options(name, cfg, loaded.space)
    log.info("bench quality: %s x seeds %s, %s, %s at once", ", ".join(names), cfg.seeds,
             counted(cfg.epochs, "epoch"), counted(cfg.workers, "trial"))
    out = Path("runs/bench-quality") if out is None else out
    result = run_quality(cfg, out, ray_address=ray_address, tracking_uri=tracking_uri, mlflow=not no_mlflow)
    typer.echo(result["markdown"])
    typer.echo(f"curves: {result['plot']}; table: {out / 'quality.md'}; took {result['wall_seconds']:.0f} s; "
               f"study: {result['run_dir']}")


def bench_speed(
    batch: int = typer.Option(64, help="Batch size."),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    orders: str = typer.Option("1,2", "--orders", "--order", help="Hypergradient orders, comma-separated (1, 2)."),
    presets: str = typer.Option("darts", help="Comma-separated presets (searchers) to time."),
    engines: str = typer.Option("reference,batched", help="Supernet engines, interleaved; ratios are to the "
                                "first. 'batched+graph': the batched step replayed from one CUDA graph (GPU)."),
    channels: int = typer.Option(16),
    layers: int = typer.Option(8),
    input_size: int = typer.Option(32),
    warmup: int = typer.Option(3),
    repeats: int = typer.Option(10),
    no_memory: bool = typer.Option(False, "--no-memory", help="Skip the peak-memory step."),
    threads: int = typer.Option(None, help="torch threads (default: torch's; the published CPU ratios: 1)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """ms per search iteration (alpha step + weight step), images/s, peak memory and the ratio of both
    supernet engines on synthetic data, timed interleaved in one process."""
    for flag, value, low in (("--batch", batch, 1), ("--warmup", warmup, 0), ("--repeats", repeats, 1),
                             ("--input-size", input_size, 8)):
        if value < low:
            raise UserInputError(f"{flag}: expected an integer >= {low}, got {value}")
    from dartboard.bench import speed

    if threads is not None and threads < 1:
        raise UserInputError(f"--threads: expected an integer >= 1, got {threads}")
    setting = _speed_setting(batch, device, precision, channels, layers, input_size, warmup, repeats, not no_memory)
    setting.threads = threads
    order_list = _int_list("--orders", orders, (1, 2))
    preset_list, engine_list = _names("--presets", presets), _names("--engines", engines)
    with user_input():  # only builds each searcher that will be timed (unknown preset, engine or option, an order
        speed.check(preset_list, order_list, engine_list, setting)  # that a preset cannot take), times nothing
    results = speed.run(preset_list, order_list, engine_list, setting)
    if as_json:
        typer.echo(json.dumps({"device": setting.device, "results": results}))
        return
    typer.echo(speed.report(results, setting))


def _speed_setting(batch: int, device: str, precision: str, channels: int, layers: int, input_size: int,
                   warmup: int, repeats: int, memory: bool) -> Any:
    from dartboard.bench.speed import SpeedSetting

    dev = _device(device)
    return SpeedSetting(batch=batch, channels=channels, layers=layers, input_size=input_size, warmup=warmup,
                        repeats=repeats, device=dev, precision=precision, memory=memory)


def _device(device: str) -> str:
    """``--device`` resolved (auto: cuda when there is one); a device that does not exist or is not there, refused."""
    from dartboard.platform.config import resolve_device

    try:  # only checks that the device exists (a cuda:N of a GPU that is not there too); "device: ..."
        return resolve_device(device)
    except ValueError as err:
        raise UserInputError(f"--{err}") from None


def _names(flag: str, text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserInputError(f"{flag}: expected comma-separated names, got {text!r}")
    return names


def _int_list(flag: str, text: str, allowed: tuple[int, ...]) -> list[int]:
    try:
        values = [int(n) for n in _names(flag, text)]
    except ValueError:
        values = []
    if not values or any(v not in allowed for v in values):
        raise UserInputError(f"{flag}: expected comma-separated values among {allowed}, got {text!r}")
    return values


def bench_memory(
    batch: int = typer.Option(32, help="batch size"),
    channels: int = typer.Option(8, "--C", help="initial channels of the supernet"),
    layers: int = typer.Option(5, help="number of cells"),
    input_size: int = typer.Option(32, help="image side"),
    steps: int = typer.Option(2, help="measured search steps"),
    device: str = typer.Option("auto", help="cpu, cuda or auto (cuda when available)"),
) -> None:
    """Peak memory of a D-DARTS step with L_T (ablation loss) against L_F, and their ratio."""
    from dartboard.bench import memory as bench

    for flag, value, low in (("--batch", batch, 1), ("--C", channels, 1), ("--layers", layers, 1),
                             ("--input-size", input_size, 8), ("--steps", steps, 1)):
        if value < low:
            raise UserInputError(f"{flag}: expected an integer >= {low}, got {value}")
    if not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise UserInputError(f"--device: expected auto, cpu or cuda[:N] (the peak is measured by the torch profiler "
                             f"on the CPU or by torch.cuda), got {device!r}")
    device = _device(device)
    setting = bench.Setting(batch=batch, C=channels, layers=layers, input_size=input_size, steps=steps,
                            device=device)
    with user_input():  # only the setting's values and a build of each variant's searcher; measures nothing
        bench.check(setting)
    results = bench.run(setting)
    typer.echo(bench.report(results, setting))


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (speed, memory, quality).")
    bench_app.command("speed")(bench_speed)
    bench_app.command("memory")(bench_memory)
    bench_app.command("build-table")(build_table_cmd)
    bench_app.command("quality")(quality_cmd)
    app.add_typer(bench_app, name="bench")
