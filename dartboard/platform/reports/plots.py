"""Plots of a study: rank metric vs network size per trial (Maile et al. Fig. 3) and the alpha
evolution of each variant's best seed (Maile et al. Fig. 1, 4)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dartboard.platform.config import StudyConfig
from dartboard.platform.reports.tables import METRIC_LABELS

log = logging.getLogger("dartboard")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def plot_scatter(study: StudyConfig, results: list[dict[str, Any]], path: Path) -> Path | None:
    """Rank metric against network size, one marker and colour per variant. Variants that tie (the same
    derived network: equal size and metric) are set side by side instead of hiding one another, and
    the legend says how many points each variant has. None (and no file) where no trial reports both: a
    study whose objective trains no network (``supernet``) has no size to plot."""
    size, rank = study.report.size_metric, study.report.rank_metric
    points = {v.name: [(float(r[size]), float(r[rank])) for r in results
                       if r["variant"] == v.name and size in r and rank in r] for v in study.variants}
    if not any(points.values()):
        log.info("ablation: no %s plot: no trial reports both %r and %r", path.name, size, rank)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = dodge_ties(points)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (name, pts) in enumerate(shown.items()):
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"{name} (n={len(pts)})", s=36,
                       marker=MARKERS[i % len(MARKERS)], alpha=0.85, edgecolors="black", linewidths=0.5)
    ax.set_xlabel(METRIC_LABELS.get(size, size))
    ax.set_ylabel(METRIC_LABELS.get(rank, rank))
    ties = sum(len(p) for p in points.values()) - len({q for p in points.values() for q in p})
    ax.set_title(study.name + (f"  ({ties} tied points set side by side)" if ties else ""), fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dodge_ties(points: dict[str, list[tuple[float, float]]], fraction: float = 0.025
               ) -> dict[str, list[tuple[float, float]]]:
    """The same points, those that coincide across or within variants spread horizontally by
    ``fraction`` of the x range each (centred on the true value)."""
    xs = [p[0] for pts in points.values() for p in pts]
    if not xs:
        return points
    span = (max(xs) - min(xs)) or abs(xs[0]) or 1.0
    groups: dict[tuple[float, float], list[tuple[str, int]]] = {}
    for name, pts in points.items():
        for j, (x, y) in enumerate(pts):
            groups.setdefault((round(x, 9), round(y, 9)), []).append((name, j))
    out = {name: list(pts) for name, pts in points.items()}
    for members in groups.values():
        for k, (name, j) in enumerate(members):
            x, y = out[name][j]
            out[name][j] = (x + (k - (len(members) - 1) / 2) * fraction * span, y)
    return out


def plot_alphas(study: StudyConfig, best: dict[str, dict[str, Any]], folders: dict[str, Path], out: Path
                ) -> list[Path]:
    """One alpha-evolution figure per variant, from its best trial's ``alpha_history.json`` and
    ``alpha_groups.json`` (``folders``: trial key -> its downloaded last checkpoint)."""
    from dartboard.platform.ray.checkpoint import ALPHA_GROUPS_FILE, ALPHA_HISTORY_FILE
    from dartboard.platform.reports.alphas import chosen_edges, plot_alpha_history
    from dartboard.spaces import genotype as gt

    paths = []
    for v in study.variants:
        folder = folders.get(best[v.name]["key"]) if v.name in best else None
        if folder is None or not (folder / ALPHA_GROUPS_FILE).is_file():
            continue
        groups = json.loads((folder / ALPHA_GROUPS_FILE).read_text())
        history = json.loads((folder / ALPHA_HISTORY_FILE).read_text())
        if not history:
            continue
        rows = [[tuple(e) if isinstance(e, list) else e for e in g["rows"]] for g in groups]
        names = [g["name"] for g in groups]
        genotype_file = folder / "genotype.json"
        chosen = chosen_edges(gt.load(genotype_file), names) if genotype_file.is_file() else None
        paths.append(plot_alpha_history(history, [g["primitives"] for g in groups], rows[0],
                                        out / f"alphas-{slug(v.name)}.png", names, chosen, rows))
    return paths


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
