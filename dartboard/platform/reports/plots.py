"""Plots of a study: rank metric vs network size per trial (Maile et al. Fig. 3) and the alpha
evolution of each variant's best seed (Maile et al. Fig. 1, 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dartboard.platform.config import StudyConfig
from dartboard.platform.reports.tables import METRIC_LABELS


def plot_scatter(study: StudyConfig, results: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size, rank = study.report.size_metric, study.report.rank_metric
    fig, ax = plt.subplots(figsize=(6, 4))
    for v in study.variants:
        pts = [(r[size], r[rank]) for r in results if r["variant"] == v.name and size in r and rank in r]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=v.name, s=28)
    ax.set_xlabel(METRIC_LABELS.get(size, size))
    ax.set_ylabel(METRIC_LABELS.get(rank, rank))
    ax.set_title(study.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_alphas(study: StudyConfig, best: dict[str, dict[str, Any]], folders: dict[str, Path], out: Path
                ) -> list[Path]:
    """One alpha-evolution figure per variant, from its best trial's ``alpha_history.json`` and
    ``alpha_groups.json`` (``folders``: trial key -> its downloaded last checkpoint)."""
    from dartboard.platform.ray.checkpoint import ALPHA_GROUPS_FILE, ALPHA_HISTORY_FILE
    from dartboard.platform.reports.figures import plot_alpha_history

    paths = []
    for v in study.variants:
        folder = folders.get(best[v.name]["key"]) if v.name in best else None
        if folder is None or not (folder / ALPHA_GROUPS_FILE).is_file():
            continue
        groups = json.loads((folder / ALPHA_GROUPS_FILE).read_text())
        history = json.loads((folder / ALPHA_HISTORY_FILE).read_text())
        if not history:
            continue
        edges = [tuple(e) if isinstance(e, list) else e for e in groups[0]["rows"]]
        paths.append(plot_alpha_history(history, [g["primitives"] for g in groups], edges,
                                        out / f"alphas-{slug(v.name)}.png", [g["name"] for g in groups]))
    return paths


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
