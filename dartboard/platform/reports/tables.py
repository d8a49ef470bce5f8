"""A study's table: mean +- std of each metric over the seeds of every variant (Maile et al.
Table 1: test error, network size, search cost over 3 seeds), as Markdown and CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from dartboard.errors import UserInputError
from dartboard.platform.config import StudyConfig

METRIC_LABELS = {"test_error": "test error (%)", "parameters": "parameters", "search_seconds": "search (s)",
                 "train_seconds": "train (s)", "test_acc": "test accuracy", "val_acc": "val accuracy",
                 "objective": "objective", "derived_acc": "derived val accuracy"}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def trial_results(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per complete trial: variant, searcher, seed, key and its final metrics."""
    return [{"variant": t["variant"], "searcher": t["searcher"], "seed": t["seed"], "key": t["key"], **t["metrics"]}
            for t in trials if t["status"] == "complete"]


def summarize(study: StudyConfig, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant (study order): seeds done and (mean, std) of each metric."""
    rows = []
    for v in study.variants:
        mine = [r for r in results if r["variant"] == v.name]
        row: dict[str, Any] = {"variant": v.name, "searcher": v.searcher, "seeds": len(mine)}
        for metric in study.report.metrics:
            values = [float(r[metric]) for r in mine if metric in r]
            if mine and not values:
                raise UserInputError(f"report.metrics: {metric!r} is not reported by the trials; they report "
                                 f"{', '.join(sorted(k for k in mine[0] if isinstance(mine[0][k], (int, float))))}")
            row[metric] = mean_std(values)
        rows.append(row)
    return rows


def _count_label(study: StudyConfig) -> str:
    """What a row's count is: the grid runs each variant once per seed; another sampler draws trials of params."""
    return "seeds" if study.sampler == "grid" else "trials"


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"


def markdown_table(study: StudyConfig, rows: list[dict[str, Any]]) -> str:
    """Mean ± std of each metric; a variant with one seed shows its value alone (one value has no spread, and
    "± 0.00" would read as a measured one), said under the table."""
    head = ["variant", "searcher", _count_label(study)] + [METRIC_LABELS.get(m, m) for m in study.report.metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["variant"], f"`{row['searcher']}`", str(row["seeds"])]
        cells += [_fmt(row[m][0]) if row["seeds"] == 1 else f"{_fmt(row[m][0])} ± {_fmt(row[m][1])}"
                  for m in study.report.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    if any(row["seeds"] == 1 for row in rows):
        one = "one seed" if study.sampler == "grid" else "one trial"
        lines += ["", f"A variant with {one} shows its value alone: one value has no standard deviation."]
    if study.sampler != "grid":
        lines += ["", f"Each variant's trials are the {study.sampler} sampler's draws of params (seed {study.seed}): "
                      f"their spread is the hyperparameters', not the seeds'."]
    return "\n".join(lines) + "\n"


def write_tables(study: StudyConfig, rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    md, csv_path = out / "table.md", out / "table.csv"
    about = f"{study.description}\n\n" if study.description.strip() else ""  # no empty paragraph without one
    md.write_text(f"# {study.name}\n\n{about}" + markdown_table(study, rows))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        metrics = study.report.metrics
        writer.writerow(["variant", "searcher", _count_label(study)]
                        + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
        for row in rows:
            writer.writerow([row["variant"], row["searcher"], row["seeds"]]
                            + [f"{x:.6g}" for m in metrics for x in row[m]])
    return md, csv_path


def best_per_variant(study: StudyConfig, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each variant's best trial by ``report.rank_metric`` (``report.rank_mode``: min or max)."""
    metric, sign = study.report.rank_metric, (1.0 if study.report.rank_mode == "min" else -1.0)
    best: dict[str, dict[str, Any]] = {}
    for r in results:
        if metric in r and (r["variant"] not in best or sign * r[metric] < sign * best[r["variant"]][metric]):
            best[r["variant"]] = r
    return best
