"""Tables and plots of an ablation study: mean +- std per variant (Maile et al. Table 1) as
Markdown and CSV, metric vs size per trial (Maile et al. Fig. 3), alpha evolution of each
variant's best seed (Maile et al. Fig. 1, 4). Pure functions of the trials' results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dartboard.platform.ablation import AblationStudy

METRIC_LABELS = {"test_error": "test error (%)", "parameters": "parameters", "search_seconds": "search (s)",
                 "train_seconds": "train (s)", "test_acc": "test accuracy", "val_acc": "val accuracy"}


# ---------------------------------------------------------------------------------------------

def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(study: AblationStudy, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant (study order): seeds done and (mean, std) of each metric."""
    rows = []
    for v in study.variants:
        mine = [r for r in results if r["variant"] == v.name]
        row: dict[str, Any] = {"variant": v.name, "searcher": v.searcher, "seeds": len(mine)}
        for metric in study.metrics:
            values = [float(r[metric]) for r in mine if metric in r]
            if mine and not values:
                raise ValueError(f"metrics: {metric!r} is not reported by the trials; they report "
                                 f"{', '.join(sorted(k for k in mine[0] if isinstance(mine[0][k], (int, float))))}")
            row[metric] = mean_std(values)
        rows.append(row)
    return rows


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"


def markdown_table(study: AblationStudy, rows: list[dict[str, Any]]) -> str:
    head = ["variant", "searcher", "seeds"] + [METRIC_LABELS.get(m, m) for m in study.metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["variant"], f"`{row['searcher']}`", str(row["seeds"])]
        cells += [f"{_fmt(row[m][0])} ± {_fmt(row[m][1])}" for m in study.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(study: AblationStudy, rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    import csv

    md, csv_path = out / "table.md", out / "table.csv"
    md.write_text(f"# {study.name}\n\n{study.description}\n\n" + markdown_table(study, rows))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "searcher", "seeds"] + [f"{m}_{s}" for m in study.metrics
                                                            for s in ("mean", "std")])
        for row in rows:
            writer.writerow([row["variant"], row["searcher"], row["seeds"]]
                            + [f"{x:.6g}" for m in study.metrics for x in row[m]])
    return md, csv_path


def best_per_variant(study: AblationStudy, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for r in results:
        if study.rank_metric in r and (r["variant"] not in best
                                       or r[study.rank_metric] < best[r["variant"]][study.rank_metric]):
            best[r["variant"]] = r
    return best


def plot_scatter(study: AblationStudy, results: list[dict[str, Any]], path: Path) -> Path:
    """Rank metric vs network size, one point per trial, coloured by variant (Maile et al. Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v in study.variants:
        pts = [(r[study.size_metric], r[study.rank_metric]) for r in results if r["variant"] == v.name]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=v.name, s=28)
    ax.set_xlabel(METRIC_LABELS.get(study.size_metric, study.size_metric))
    ax.set_ylabel(METRIC_LABELS.get(study.rank_metric, study.rank_metric))
    ax.set_title(study.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_alphas(study: AblationStudy, best: dict[str, dict[str, Any]], trials: Path, out: Path) -> list[Path]:
    """Alpha evolution of each variant's best seed (Maile et al. Fig. 1, 4)."""
    from dartboard.platform.plots import plot_alpha_history

    paths = []
    for v in study.variants:
        if v.name not in best:
            continue
        folder = trial_dir(trials, v.name, best[v.name]["seed"])
        if not (folder / "alpha_meta.json").is_file() or not (folder / "alpha_history.json").is_file():
            continue
        meta = json.loads((folder / "alpha_meta.json").read_text())
        history = json.loads((folder / "alpha_history.json").read_text())
        names = ["normal", "reduce"] if len(meta["group_primitives"]) == 2 else None
        paths.append(plot_alpha_history(history, meta["group_primitives"], [tuple(e) for e in meta["edges"]],
                                        out / f"alphas-{_slug(v.name)}.png", names))
    return paths


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def trial_dir(trials: Path, variant: str, seed: int) -> Path:
    return trials / _slug(variant) / f"seed{seed}"
