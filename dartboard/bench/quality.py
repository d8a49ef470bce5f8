"""`dartboard bench quality`: search quality (anytime regret) of several searchers in tiny81.

Each trial is one (searcher, seed): the searcher runs its published preset on the tiny81
supernet (:data:`TINY81_SEARCH_OPTIONS`) on digits; every epoch the derived architecture is
looked up in the shipped table (:class:`RegretTracker`). Random search with the same
wall-clock budget is the baseline (:func:`random_search_curve`). Trials run in worker
processes (default) or as one Ray Tune study (``ray=True``); the driver writes a Markdown
and JSON table (final regret mean +- std, epoch of best regret, rank of the found
architecture), the regret curves plot, and optionally one MLflow run per trial.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("dartboard")

DEFAULT_SEARCHERS = ("darts", "fairdarts", "rdarts-es", "darts+pr+fimt", "ddarts")
RANDOM = "random"
# The table's members are exactly the outcomes of the DARTS parse (top-2 inputs, argmax op).
# Searchers whose preset parses otherwise (D-DARTS: sigmoid threshold 0.85, which drops the
# edges below it) are read through the same parse, so that every epoch has a table entry.
TABLE_PARSE = "darts"


@dataclass
class QualityConfig:
    searchers: list[str] = field(default_factory=lambda: list(DEFAULT_SEARCHERS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 20
    batch_size: int = 64  # DARTS search batch size
    train_fraction: float = 0.5  # DARTS: train half / val half
    parse: str | None = TABLE_PARSE  # None: each preset's own discretizer
    random_search: bool = True
    table: str | None = None  # None: the shipped table
    workers: int = 2
    options: dict[str, Any] = field(default_factory=dict)  # extra searcher options for every searcher

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs: expected >= 1, got {self.epochs}")
        if not self.seeds:
            raise ValueError("seeds: expected at least one seed")
        if self.workers < 1:
            raise ValueError(f"workers: expected >= 1, got {self.workers}")


def trial_options(name: str, cfg: QualityConfig) -> dict[str, Any]:
    from dartboard.searchers.registry import get_searcher_spec
    from dartboard.spaces.tiny import TINY81_SEARCH_OPTIONS

    spec = get_searcher_spec(name)
    opts = {**TINY81_SEARCH_OPTIONS, "epochs": cfg.epochs, **cfg.options}
    if cfg.parse is not None and "discretizer" in spec.options:
        opts["discretizer"] = cfg.parse
    unknown = sorted(set(opts) - set(spec.options))
    if unknown:
        raise ValueError(f"searcher {name!r} cannot search tiny81: it has no option {', '.join(unknown)}")
    return opts


def run_trial(spec: dict[str, Any], on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """One search in tiny81 with regret tracking; returns a JSON-able record with the curve."""
    import torch

    from dartboard.bench.regret import RegretTracker
    from dartboard.bench.table import load_table
    from dartboard.data.datasets import load_dataset, make_loader, search_split
    from dartboard.searchers.base import seed_everything
    from dartboard.searchers.loop import run_search
    from dartboard.searchers.registry import DataShape, build_searcher

    torch.set_num_threads(1)  # one core per trial; several trials share the machine
    seed = int(spec["seed"])
    seed_everything(seed)
    table = load_table(spec.get("table"))
    splits = load_dataset("digits")
    shape = DataShape(splits.info.in_channels, splits.info.input_size, splits.info.num_classes)
    searcher = build_searcher(spec["searcher"], spec["options"], shape, "cpu")
    train, val = search_split(splits.train, seed, spec["train_fraction"])
    train_loader = make_loader(train, spec["batch_size"], shuffle=True, seed=seed, drop_last=True)
    val_loader = make_loader(val, spec["batch_size"], shuffle=True, seed=seed + 1, drop_last=True)
    tracker = RegretTracker(table).attach(searcher)
    start = time.perf_counter()

    def epoch_done(epoch: int, metrics: dict[str, float]) -> None:
        tracker.curve[-1]["seconds"] = time.perf_counter() - start
        tracker.curve[-1]["val_acc_supernet"] = metrics.get("val_acc", float("nan"))
        if on_epoch is not None:
            on_epoch({k: v for k, v in tracker.curve[-1].items() if k != "key"})

    run_search(searcher, train_loader, val_loader, spec["epochs"], on_epoch=epoch_done)
    return {"searcher": spec["searcher"], "seed": seed, "options": spec["options"], "curve": tracker.curve,
            "seconds": time.perf_counter() - start, "stopped_early": len(tracker.curve) < spec["epochs"]}


def trial_specs(cfg: QualityConfig) -> list[dict[str, Any]]:
    return [{"searcher": name, "seed": seed, "options": trial_options(name, cfg), "epochs": cfg.epochs,
             "batch_size": cfg.batch_size, "train_fraction": cfg.train_fraction, "table": cfg.table}
            for name in cfg.searchers for seed in cfg.seeds]


def _run_local(specs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    if workers == 1:
        return [run_trial(s) for s in specs]
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_trial, specs))


def _ray_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    record = run_trial(config["trial"], on_epoch=lambda m: tune.report({**m, "done": 0}))
    tune.report({"done": 1, "trial_json": json.dumps(record)})


def _run_ray(specs: list[dict[str, Any]], workers: int, out: Path, address: str | None = None
             ) -> list[dict[str, Any]]:
    """All trials as one Ray Tune study (a grid over (searcher, seed)), one CPU per trial.

    Without ``address`` a private local Ray instance is started (``address="local"``: never
    another user's ``ray start`` cluster on this machine) and shut down afterwards."""
    import ray
    from ray import tune

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        return _fit_ray(specs, workers, out, tune)
    finally:
        if started:
            ray.shutdown()


def _fit_ray(specs: list[dict[str, Any]], workers: int, out: Path, tune: Any) -> list[dict[str, Any]]:
    tuner = tune.Tuner(
        tune.with_resources(_ray_trainable, {"cpu": 1}),
        param_space={"trial": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=workers),
        run_config=tune.RunConfig(name="bench-quality", storage_path=str((out / "ray").resolve()), verbose=0),
    )
    grid = tuner.fit()
    records = []
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"quality trial failed: {result.error}")
        records.append(json.loads(result.metrics["trial_json"]))
    order = {(s["searcher"], s["seed"]): i for i, s in enumerate(specs)}
    return sorted(records, key=lambda r: order[(r["searcher"], r["seed"])])


def random_search_records(records: list[dict[str, Any]], cfg: QualityConfig, table) -> list[dict[str, Any]]:
    """Random search per seed, its budget at epoch t = mean wall time the searchers spent by epoch t."""
    from dartboard.bench.regret import random_search_curve

    budgets = []
    for t in range(cfg.epochs):
        spent = [r["curve"][t]["seconds"] for r in records if len(r["curve"]) > t]
        budgets.append(statistics.fmean(spent) if spent else (budgets[-1] if budgets else 0.0))
    return [{"searcher": RANDOM, "seed": seed, "options": {"budget_seconds": budgets},
             "curve": random_search_curve(table, budgets, seed), "seconds": 0.0, "stopped_early": False}
            for seed in cfg.seeds]


def _final(curve: list[dict[str, Any]], key: str) -> float:
    return float(curve[-1][key]) if curve else float("nan")


def _best_epoch(curve: list[dict[str, Any]]) -> float:
    values = [(c["tiny81_regret"], c["epoch"]) for c in curve if not math.isnan(c["tiny81_regret"])]
    return float(min(values)[1]) if values else float("nan")


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per searcher: final regret, epoch of best regret, rank of the final architecture."""
    rows = []
    for name in dict.fromkeys(r["searcher"] for r in records):
        runs = [r for r in records if r["searcher"] == name]
        regret = _mean_std([_final(r["curve"], "tiny81_regret") for r in runs])
        best_epoch = _mean_std([_best_epoch(r["curve"]) for r in runs])
        rank = _mean_std([_final(r["curve"], "tiny81_rank") for r in runs])
        test = _mean_std([_final(r["curve"], "tiny81_test_acc") for r in runs])
        off = sum(1 for r in runs for c in r["curve"] if not c["tiny81_on_table"])
        rows.append({"searcher": name, "seeds": len(runs), "final_regret_mean": regret[0],
                     "final_regret_std": regret[1], "best_regret_epoch_mean": best_epoch[0],
                     "final_rank_mean": rank[0], "final_rank_std": rank[1],
                     "final_ranks": [_final(r["curve"], "tiny81_rank") for r in runs],
                     "final_test_acc_mean": test[0], "off_table_epochs": off,
                     "final_archs": [r["curve"][-1]["key"] if r["curve"] else None for r in runs],
                     "seconds_mean": statistics.fmean(r["seconds"] for r in runs),
                     "stopped_early": sum(1 for r in runs if r["stopped_early"])})
    return rows


def markdown(rows: list[dict[str, Any]], table) -> str:
    lines = [f"Regret = best mean test accuracy in the table ({100 * table.best_test:.2f}%) - mean test accuracy of "
             f"the derived architecture, in points; rank 1 = best of {len(table.entries)}.", "",
             "| searcher | seeds | final regret (pts) | epoch of best regret | final rank | final ranks | "
             "test acc (%) | search s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ranks = ", ".join("-" if math.isnan(x) else str(int(x)) for x in r["final_ranks"])
        lines.append(f"| {r['searcher']} | {r['seeds']} | {100 * r['final_regret_mean']:.2f} +- "
                     f"{100 * r['final_regret_std']:.2f} | {r['best_regret_epoch_mean']:.1f} | "
                     f"{r['final_rank_mean']:.1f} +- {r['final_rank_std']:.1f} | {ranks} | "
                     f"{100 * r['final_test_acc_mean']:.2f} | {r['seconds_mean']:.0f} |")
    return "\n".join(lines)


def plot_curves(records: list[dict[str, Any]], epochs: int, path: Path) -> Path:
    """Anytime regret (points) per searcher: mean over seeds (line) and each seed (thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(dict.fromkeys(r["searcher"] for r in records))
    for i, name in enumerate(names):
        color = f"C{i}"
        padded = []
        for r in (r for r in records if r["searcher"] == name):
            ys = [100 * c["tiny81_regret"] for c in r["curve"]]
            ys = ys + [ys[-1]] * (epochs - len(ys)) if ys else [math.nan] * epochs  # a stopped search keeps its answer
            padded.append(ys)
            ax.plot(range(1, epochs + 1), ys, color=color, alpha=0.25, linewidth=0.8)
        mean = [statistics.fmean(v for v in col if not math.isnan(v)) if any(not math.isnan(v) for v in col)
                else math.nan for col in zip(*padded, strict=True)]
        ax.plot(range(1, epochs + 1), mean, color=color, linewidth=2, label=name)
    ax.set_xlabel("search epoch")
    ax.set_ylabel("test regret (accuracy points)")
    ax.set_title("tiny81: anytime regret of the derived architecture")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_mlflow(records: list[dict[str, Any]], cfg: QualityConfig, artifacts: list[Path], uri: str | None,
               experiment: str) -> str:
    """A parent run for the study, one child run per trial with the per-epoch regret metrics."""
    from dartboard.platform.registry import flat_params, setup_mlflow

    mlflow, _ = setup_mlflow(uri, experiment)
    with mlflow.start_run(run_name="bench-quality-tiny81") as parent:
        mlflow.set_tags({"dartboard.kind": "bench-quality", "space": "tiny81"})
        mlflow.log_params(flat_params("", {k: v for k, v in asdict(cfg).items() if k != "options"}))
        for r in records:
            with mlflow.start_run(run_name=f"{r['searcher']}-s{r['seed']}", nested=True):
                mlflow.set_tags({"searcher": r["searcher"], "seed": str(r["seed"])})
                for c in r["curve"]:
                    mlflow.log_metrics({k: float(v) for k, v in c.items() if isinstance(v, (int, float))
                                        and k != "epoch"}, step=int(c["epoch"]))
        for path in artifacts:
            mlflow.log_artifact(str(path))
        return parent.info.run_id


def rescore(records: list[dict[str, Any]], cfg: QualityConfig, table) -> list[dict[str, Any]]:
    """Recompute every looked-up number from the recorded keys with ``table`` (e.g. a rebuilt
    table) without searching again; random search is replayed with its recorded budgets."""
    from dartboard.bench.regret import lookup_metrics

    searched = [r for r in records if r["searcher"] != RANDOM]
    for r in searched:
        for c in r["curve"]:
            c.update(lookup_metrics(table, c["key"]))
    if any(r["searcher"] == RANDOM for r in records):
        searched += random_search_records(searched, cfg, table)
    return searched


def write_outputs(records: list[dict[str, Any]], cfg: QualityConfig, table, out: Path, wall_seconds: float
                  ) -> dict[str, Any]:
    rows = summarize(records)
    text = markdown(rows, table)
    (out / "quality.md").write_text(text + "\n")
    (out / "quality.json").write_text(json.dumps({"config": asdict(cfg), "rows": rows, "records": records,
                                                  "wall_seconds": wall_seconds}, indent=1))
    plot = plot_curves(records, cfg.epochs, out / "regret_curves.png")
    return {"rows": rows, "records": records, "markdown": text, "plot": plot, "out": out,
            "wall_seconds": wall_seconds}


def rescore_file(path: str | Path, table_path: str | None = None) -> tuple[QualityConfig, dict[str, Any]]:
    """Rescore a quality.json in place (same folder) against the current table."""
    from dartboard.bench.table import load_table

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quality file {str(path)!r} does not exist")
    data = json.loads(path.read_text())
    cfg = QualityConfig(**{**data["config"], **({"table": table_path} if table_path else {})})
    table = load_table(cfg.table)
    records = rescore(data["records"], cfg, table)
    return cfg, write_outputs(records, cfg, table, path.parent, data.get("wall_seconds", 0.0))


def run_quality(cfg: QualityConfig, out: str | Path, ray: bool = False, ray_address: str | None = None
                ) -> dict[str, Any]:
    """Run the study; write quality.json, quality.md and regret_curves.png under ``out``."""
    from dartboard.bench.table import load_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = load_table(cfg.table)
    searchers = [s for s in cfg.searchers if s != RANDOM]
    specs = trial_specs(QualityConfig(**{**asdict(cfg), "searchers": searchers}))
    start = time.perf_counter()
    records = _run_ray(specs, cfg.workers, out, ray_address) if ray else _run_local(specs, cfg.workers)
    if cfg.random_search or RANDOM in cfg.searchers:
        records += random_search_records(records, cfg, table)
    return write_outputs(records, cfg, table, out, time.perf_counter() - start)
