"""`dartboard bench quality`: search quality (anytime regret) of several searchers in tiny81.

Each trial is one (searcher, seed): the searcher runs its published preset on the tiny81
supernet (:data:`TINY81_SEARCH_OPTIONS`) on digits; every epoch the derived architecture is
looked up in the table (:func:`curve_from_trial`). Random search with the same wall-clock
budget is the baseline (:func:`random_search_curve`). This module is the scoring only (pure
torch-free functions of the recorded architectures): the trials run as a study of the one
study runner (``dartboard.platform.quality``), which never is imported from here.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dartboard.errors import check_file

log = logging.getLogger("dartboard")

ONESHOT_SEARCHERS = ("gdas", "snas", "drnas", "pc-darts", "sdarts-rs", "sdarts-adv", "darts-minus", "darts-pt")
DEFAULT_SEARCHERS = ("darts", "fairdarts", "rdarts-es", "darts+pr+fimt", "ddarts", *ONESHOT_SEARCHERS)
DARTS_SEARCH_EPOCHS = 50  # a preset's warm-up (PC-DARTS: 15 of 50 epochs) keeps its share of a shorter search
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
        if not isinstance(self.searchers, (list, tuple)) or not all(isinstance(n, str) for n in self.searchers):
            raise ValueError(f"searchers: expected a list of searcher names, got {self.searchers!r}")
        if not [n for n in self.searchers if n != RANDOM]:
            raise ValueError(f"searchers: expected at least one searcher besides {RANDOM!r} (its budget is theirs), "
                             f"got {list(self.searchers)}")
        if (not isinstance(self.seeds, (list, tuple)) or not self.seeds or not all(_count(s, 0) for s in self.seeds)
                or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds: expected a list of distinct integers >= 0, got {self.seeds!r}")
        for name in ("epochs", "batch_size", "workers"):
            if not _count(getattr(self, name), 1):
                raise ValueError(f"{name}: expected >= 1 (an integer), got {getattr(self, name)!r}")
        if isinstance(self.train_fraction, bool) or not isinstance(self.train_fraction, (int, float)) or not (
                0.0 < self.train_fraction < 1.0):
            raise ValueError(f"train_fraction: expected a number in (0, 1), got {self.train_fraction!r}")
        if self.parse not in (None, TABLE_PARSE):
            raise ValueError(f"parse: expected {TABLE_PARSE!r} (the table's parse) or None (each preset's own), "
                             f"got {self.parse!r}")
        if not isinstance(self.options, dict):
            raise ValueError(f"options: expected a mapping of searcher options, got {self.options!r}")


def _count(value: Any, low: int) -> bool:
    """An integer (not a bool) >= ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def trial_options(name: str, cfg: QualityConfig, space=None) -> dict[str, Any]:
    """A searcher's options in the table's space (``space``: a ``TinySpace``; None: tiny81)."""
    from dartboard.searchers.registry import get_searcher_spec
    from dartboard.spaces.tiny import TINY81_SEARCH_OPTIONS

    spec = get_searcher_spec(name)
    base = TINY81_SEARCH_OPTIONS if space is None else space.search_options
    opts = {**base, "epochs": cfg.epochs, **cfg.options}
    if cfg.parse is not None and "discretizer" in spec.options:
        opts["discretizer"] = cfg.parse
    warmup = spec.defaults.get("warmup_epochs", 0)
    if warmup and "warmup_epochs" not in cfg.options:
        opts["warmup_epochs"] = round(warmup * cfg.epochs / DARTS_SEARCH_EPOCHS)
    unknown = sorted(set(opts) - set(spec.options))
    if unknown:
        raise ValueError(f"searcher {name!r} cannot search {base['space']}: it has no option {', '.join(unknown)}")
    return opts


def curve_from_trial(table, genotypes: list[dict[str, Any]], history: list[dict[str, float]]) -> list[dict[str, Any]]:
    """A search's anytime curve: each epoch's derived architecture looked up in ``table`` (never
    trained), with the search seconds spent by then and the supernet's validation accuracy."""
    from dartboard.bench.regret import lookup_metrics
    from dartboard.spaces import genotype as gt

    curve = []
    for epoch, (genotype, metrics) in enumerate(zip(genotypes, history, strict=True), start=1):
        key = table.space.genotype_key(gt.from_dict(genotype))  # the table's own ops (tiny81 or tiny625)
        curve.append({"epoch": epoch, "key": key, **lookup_metrics(table, key),
                      "seconds": float(metrics.get("search_seconds", math.nan)),
                      "val_acc_supernet": float(metrics.get("val_acc", math.nan))})
    return curve


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
        one = r["seeds"] == 1  # one value has no spread: "+- 0.00" would read as a measured one
        regret = f"{100 * r['final_regret_mean']:.2f}" + ("" if one else f" +- {100 * r['final_regret_std']:.2f}")
        rank = f"{r['final_rank_mean']:.1f}" + ("" if one else f" +- {r['final_rank_std']:.1f}")
        lines.append(f"| {r['searcher']} | {r['seeds']} | {regret} | {r['best_regret_epoch_mean']:.1f} | {rank} | "
                     f"{ranks} | {100 * r['final_test_acc_mean']:.2f} | {r['seconds_mean']:.0f} |")
    if any(r["seeds"] == 1 for r in rows):
        lines += ["", "A searcher with one seed shows its value alone: one value has no standard deviation."]
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


def read_quality_file(path: str | Path, table_path: str | None = None) -> tuple[QualityConfig, dict[str, Any], Any]:
    """A quality.json's config (its table replaced by ``table_path``), its data and that table; a file that is not
    one (not JSON, no config or records, a config or table it cannot use) is a ``ValueError`` naming it."""
    from dartboard.bench.table import load_table

    path = check_file(path, "quality file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"quality file {str(path)!r} is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "records" not in data:
        raise ValueError(f"quality file {str(path)!r}: no config and records; expected the quality.json that "
                         f"`dartboard bench quality` writes")
    try:
        cfg = QualityConfig(**{**data["config"], **({"table": table_path} if table_path else {})})
    except TypeError as err:  # a field QualityConfig does not have
        raise ValueError(f"quality file {str(path)!r}: its config is not a bench quality config ({err})") from None
    return cfg, data, load_table(cfg.table)


def rescore_file(path: str | Path, table_path: str | None = None) -> tuple[QualityConfig, dict[str, Any]]:
    """Rescore a quality.json in place (same folder) against the current table."""
    cfg, data, table = read_quality_file(path, table_path)
    return cfg, rescore_read(path, cfg, data, table)


def rescore_read(path: str | Path, cfg: QualityConfig, data: dict[str, Any], table) -> dict[str, Any]:
    """:func:`rescore_file` after :func:`read_quality_file`: the records rescored, the outputs rewritten."""
    records = rescore(data["records"], cfg, table)
    return write_outputs(records, cfg, table, Path(path).parent, data.get("wall_seconds", 0.0))
