"""The summary pictures of any study (sweep, ablation, benchmark), logged on its MLflow parent run:
the objective of every trial, the outer hyperparameters in parallel coordinates coloured by the
objective, and every trial's per-epoch curves (supernet validation accuracy; tiny81 regret when known)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STATUS_COLORS = {"complete": "tab:blue", "pruned": "tab:orange", "error": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_objectives(trials: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """One point per trial in study order, coloured by status (complete, stopped early, errored)."""
    points = [(i, t["objective"], t["status"]) for i, t in enumerate(trials) if _finite(t.get("objective"))]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for status, color in STATUS_COLORS.items():
        pts = [(i, y) for i, y, s in points if s == status]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, label=status, s=30)
    complete = [p for p in points if p[2] == "complete"]
    if complete:  # the study's best is the best complete trial
        best = max(complete, key=lambda p: p[1])
        ax.scatter([best[0]], [best[1]], marker="*", s=200, color="gold", edgecolor="black", zorder=3,
                   label="best complete")
    ax.set_xlabel("trial (study order)")
    ax.set_ylabel("objective")
    ax.set_title(title or "objective per trial")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_parallel(trials: Sequence[dict[str, Any]], params: Sequence[str], path: Path) -> Path | None:
    """Parallel coordinates: one axis per numeric outer hyperparameter (scaled to its range over the
    trials, log scale when it spans more than a decade) and the objective; one line per trial."""
    done = [t for t in trials if _finite(t.get("objective"))]
    axes = [p for p in params if sum(_finite(t["config"].get(p)) for t in done) >= 2]
    if not done or not axes:
        return None
    columns = [*axes, "objective"]

    def value(t: dict[str, Any], name: str) -> float:
        return t["objective"] if name == "objective" else t["config"].get(name, math.nan)

    scaled, labels = [], []
    for name in columns:
        raw = [value(t, name) for t in done]
        vals = [v for v in raw if _finite(v)]
        log = name != "objective" and min(vals) > 0 and max(vals) / min(vals) > 10
        f = (lambda v: math.log10(v)) if log else (lambda v: v)  # noqa: E731
        lo, hi = f(min(vals)), f(max(vals))
        scaled.append([(f(v) - lo) / (hi - lo) if _finite(v) and hi > lo else 0.5 for v in raw])
        labels.append(f"{name}\n[{min(vals):.3g}, {max(vals):.3g}]{' log' if log else ''}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 * len(columns) + 1.5, 4))
    cmap = plt.get_cmap("viridis")
    objective = scaled[-1]
    for i in sorted(range(len(done)), key=lambda i: objective[i]):  # best drawn last, on top
        ax.plot(range(len(columns)), [col[i] for col in scaled], color=cmap(objective[i]), alpha=0.85, lw=1.6)
    ax.set_xticks(range(len(columns)), labels, fontsize=7)
    ax.set_yticks([])
    for x in range(len(columns)):
        ax.axvline(x, color="grey", lw=0.6)
    ax.set_title("outer hyperparameters (colour: objective, yellow = best)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(trials: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Per-epoch curves of every trial: supernet validation accuracy, and tiny81 regret when logged."""
    metrics = [m for m in ("val_acc", "tiny81_regret")
               if any(_finite(h.get(m)) for t in trials for h in t.get("history") or [])]
    if not metrics:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for t in trials:
            ys = [h.get(metric, math.nan) for h in t.get("history") or []]
            if any(_finite(y) for y in ys):
                ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, lw=1.2,
                        ls="-" if t["status"] == "complete" else ":", label=t["key"])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per epoch (dotted: stopped early)")
    if sum(1 for t in trials if t.get("history")) <= 12:
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
