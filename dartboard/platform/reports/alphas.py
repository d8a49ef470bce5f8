"""The alpha history as a picture people can read: per alpha group (cell type), which op wins on each
edge at every epoch (a heatmap: colour = the op, strength = how clearly it wins) next to the final
mixing weights of every op (ops in the space's fixed order) with the derived genotype's choice boxed.
Edges are named ``src->dst`` with the genotype's node numbers (0, 1: the cell inputs; 2..: its nodes),
as in the cell pictures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# One colour per op wherever dartboard draws ops (alpha history, cell pictures), whatever the space.
OP_COLORS = {
    "none": "#303030", "max_pool_3x3": "#1f77b4", "avg_pool_3x3": "#17becf", "skip_connect": "#e377c2",
    "sep_conv_3x3": "#d62728", "sep_conv_5x5": "#ff7f0e", "sep_conv_7x7": "#8c564b", "dil_conv_3x3": "#2ca02c",
    "dil_conv_5x5": "#9467bd", "conv_1x1": "#7f7f7f", "conv_3x3": "#bcbd22", "conv_7x1_1x7": "#393b79",
    "noise": "#000000",
}
CHOICE_COLOR = "#ff00ff"  # the box around the derived genotype's op
_SPARE = ("#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1")


def op_color(op: str) -> str:
    if op in OP_COLORS:
        return OP_COLORS[op]
    return _SPARE[sum(map(ord, op)) % len(_SPARE)]


def edge_label(row: Any) -> str:
    if isinstance(row, (tuple, list)) and len(row) == 2:
        return f"{row[0]}\u2192{row[1]}"
    return str(row)


def chosen_edges(genotype: Any, group_names: Sequence[str]) -> list[set[tuple[int, int, str]] | None]:
    """Per group, the (src, dst, op) edges the derived genotype kept (None when no cell is known)."""
    from dartboard.spaces import genotype as gt

    out: list[set[tuple[int, int, str]] | None] = []
    for g, name in enumerate(group_names):
        cell = None
        if isinstance(genotype, gt.DartsGenotype) and name in ("normal", "reduce"):
            cell = genotype.normal if name == "normal" else genotype.reduce
        elif isinstance(genotype, gt.CellsGenotype):
            if name.startswith("cell_") and name[5:].isdigit() and int(name[5:]) < len(genotype.cells):
                cell = genotype.cells[int(name[5:])]
            elif genotype.types is not None and g in genotype.types:
                cell = genotype.cells[genotype.types.index(g)]
        out.append(None if cell is None else {(e.src, e.dst, e.op) for e in cell.edges})
    return out


def plot_alpha_history(history: Sequence[dict[str, Any]], group_primitives: Sequence[Sequence[Sequence[str]]],
                       edges: Sequence[Any], path: str | Path, group_names: Sequence[str] | None = None,
                       chosen: Sequence[set[tuple[int, int, str]] | None] | None = None,
                       group_rows: Sequence[Sequence[Any]] | None = None) -> Path:
    """``history[i]["weights"][g][e][k]``: mixing weight of op k on row e of group g after epoch i.
    ``edges``: the rows of every group (or ``group_rows``: per group); ``chosen``: per group, the
    genotype's (src, dst, op) edges, boxed on the final weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_groups = len(group_primitives)
    names = list(group_names) if group_names else [f"group {g}" for g in range(n_groups)]
    rows = [list(group_rows[g]) if group_rows else list(edges) for g in range(n_groups)]
    ops_order = _ops_in_order(group_primitives)
    n_epochs = len(history)
    n_rows = max(len(r) for r in rows)
    width = min(24.0, max(10.0, 3.0 + 0.22 * n_epochs + 0.42 * len(ops_order)))
    fig, axes = plt.subplots(n_groups, 2, squeeze=False, figsize=(width, 0.6 + n_groups * (0.28 * n_rows + 1.3)),
                             gridspec_kw={"width_ratios": [max(4, n_epochs), max(3, len(ops_order)) * 1.4]})
    for g in range(n_groups):
        weights = [[list(h["weights"][g][e]) for e in range(len(rows[g]))] for h in history]
        kept = chosen[g] if chosen else None
        _winner_panel(axes[g][0], weights, group_primitives[g], rows[g], [h["epoch"] for h in history], kept,
                      names[g])
        _final_panel(axes[g][1], weights[-1], group_primitives[g], rows[g], ops_order, kept, names[g])
    handles = [matplotlib.patches.Patch(color=op_color(op), label=op) for op in ops_order]
    ncol = min(len(ops_order), 4)
    legend_rows = -(-len(ops_order) // ncol)
    bottom = (0.35 + 0.22 * legend_rows) / fig.get_figheight()
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
               title="op (the same colour in every dartboard picture)", title_fontsize=8)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ops_in_order(group_primitives: Sequence[Sequence[Sequence[str]]]) -> list[str]:
    order: list[str] = []
    for group in group_primitives:
        for row in group:
            order += [op for op in row if op not in order]
    return order


def winners(weights: Sequence[Sequence[Sequence[float]]], primitives: Sequence[Sequence[str]]):
    """``weights[epoch][row][op]`` -> (the winning op of each row at each epoch, ``[row][epoch]``, and
    its lead over the runner-up as an array of the same shape)."""
    import numpy as np

    ops = [["" for _ in weights] for _ in primitives]
    leads = np.zeros((len(primitives), len(weights)))
    for i, epoch_weights in enumerate(weights):
        for e, w in enumerate(epoch_weights):
            ranked = sorted(w, reverse=True)
            leads[e, i] = ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
            ops[e][i] = primitives[e][max(range(len(w)), key=lambda k: w[k])]
    return ops, leads


def _winner_panel(ax, weights, primitives, rows, epochs, kept, name: str) -> None:
    """Colour = the op with the largest weight on the row after that epoch; strength = its lead over
    the runner-up, relative to the largest lead in the panel (pale: undecided)."""
    import matplotlib.colors as mcolors
    import numpy as np

    ops, leads = winners(weights, primitives)
    colours = np.array([[mcolors.to_rgb(op_color(op)) for op in row] for row in ops])
    strength = 0.25 + 0.75 * np.clip(leads / (leads.max() or 1.0), 0.0, 1.0)
    image = 1.0 - strength[..., None] * (1.0 - colours)  # blend towards white
    ax.imshow(image, aspect="auto", interpolation="nearest")
    step = max(1, len(epochs) // 12)
    ax.set_xticks(range(0, len(epochs), step), [str(int(epochs[i])) for i in range(0, len(epochs), step)],
                  fontsize=7)
    ax.set_xlabel("epoch", fontsize=8)
    _row_labels(ax, rows, kept)
    ax.set_title(f"{name}: winning op per edge\n(pale = undecided)", fontsize=9)


def _final_panel(ax, final, primitives, rows, ops_order, kept, name: str) -> None:
    import numpy as np
    from matplotlib.patches import Rectangle

    grid = np.full((len(rows), len(ops_order)), np.nan)
    for e, w in enumerate(final):
        for k, op in enumerate(primitives[e]):
            grid[e, ops_order.index(op)] = w[k]
    low, high = float(np.nanmin(grid)), float(np.nanmax(grid))  # the panel's own range: early weights are close
    ax.imshow(grid, aspect="auto", cmap="Greys", vmin=low, vmax=high if high > low else low + 1e-9,
              interpolation="nearest")
    for e in range(len(rows)):
        for j in range(len(ops_order)):
            if not np.isnan(grid[e, j]):
                dark = grid[e, j] > low + 0.6 * (high - low)
                ax.text(j, e, f"{100 * grid[e, j]:.1f}", ha="center", va="center", fontsize=6,
                        color="white" if dark else "black")
            row = rows[e]
            if kept and isinstance(row, (tuple, list)) and (row[0], row[1], ops_order[j]) in kept:
                ax.add_patch(Rectangle((j - 0.45, e - 0.45), 0.9, 0.9, fill=False, ec=CHOICE_COLOR, lw=2.2))
    ax.set_xticks(range(len(ops_order)), ops_order, rotation=40, ha="right", fontsize=7)
    for tick, op in zip(ax.get_xticklabels(), ops_order, strict=True):
        tick.set_color(op_color(op) if op != "none" else "#555555")
    _row_labels(ax, rows, kept)
    ax.set_title(f"{name}: final weights in %\n(boxed: the derived genotype)" if kept
                 else f"{name}: final weights in %", fontsize=9)


def _row_labels(ax, rows, kept) -> None:
    ax.set_yticks(range(len(rows)), [edge_label(r) for r in rows], fontsize=7)
    if kept:
        used = {(s, d) for s, d, _ in kept}
        for tick, row in zip(ax.get_yticklabels(), rows, strict=True):
            on = isinstance(row, (tuple, list)) and (row[0], row[1]) in used
            tick.set_fontweight("bold" if on else "normal")
            tick.set_color("black" if on else "#888888")
