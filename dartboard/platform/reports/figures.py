"""Pictures: cells (graphviz when `dot` exists, else matplotlib) and alpha evolution."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dartboard.spaces.genotype import CellGenotype


def _node_name(node: int, n_inputs: int) -> str:
    return f"c_{{k-{n_inputs - node}}}" if node < n_inputs else str(node - n_inputs)


def cell_dot(cell: CellGenotype, title: str = "") -> str:
    """Graphviz source of a cell: inputs, intermediate nodes, edges labelled by op, output."""
    lines = ["digraph cell {", "  rankdir=LR;", f'  label="{title}";',
             "  node [style=filled, shape=rect, fontname=helvetica];"]
    for i in range(cell.n_inputs):
        lines.append(f'  in{i} [label="{_node_name(i, cell.n_inputs)}", fillcolor=darkseagreen2];')
    nodes = sorted({e.dst for e in cell.edges})
    for n in nodes:
        lines.append(f'  n{n} [label="{n - cell.n_inputs}", fillcolor=lightblue];')
    lines.append('  out [label="c_{k}", fillcolor=palegoldenrod];')
    for e in cell.edges:
        src = f"in{e.src}" if e.src < cell.n_inputs else f"n{e.src}"
        lines.append(f'  {src} -> n{e.dst} [label="{e.op}", fillcolor=gray];')
    for n in cell.concat:
        lines.append(f"  n{n} -> out;")
    lines.append("}")
    return "\n".join(lines)


def draw_cell(cell: CellGenotype, path: str | Path, title: str = "") -> Path:
    """Write a PNG picture of ``cell``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dot = shutil.which("dot")
    if dot:
        subprocess.run([dot, "-Tpng", "-o", str(path)], input=cell_dot(cell, title).encode(), check=True)
        return path
    return _draw_cell_matplotlib(cell, path, title)


def _draw_cell_matplotlib(cell: CellGenotype, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = sorted({e.dst for e in cell.edges})
    pos: dict[Any, tuple[float, float]] = {i: (0.0, 1.0 - i) for i in range(cell.n_inputs)}
    for k, n in enumerate(nodes):
        pos[n] = (1.0 + k, 0.8 - 0.6 * (k % 2))
    pos["out"] = (len(nodes) + 1.0, 0.5)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(nodes), 3.2))
    for e in cell.edges:
        (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="gray"))
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, e.op, fontsize=7, ha="center",
                bbox=dict(boxstyle="round", fc="white", ec="none", alpha=0.8))
    for n in cell.concat:
        (x0, y0), (x1, y1) = pos[n], pos["out"]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="black", alpha=0.4))
    for key, (x, y) in pos.items():
        if key == "out":
            label, color = "c_{k}", "palegoldenrod"
        elif key < cell.n_inputs:
            label, color = _node_name(key, cell.n_inputs), "darkseagreen"
        else:
            label, color = str(key - cell.n_inputs), "lightblue"
        ax.text(x, y, label, ha="center", va="center", bbox=dict(boxstyle="square", fc=color))
    ax.set_xlim(-0.5, len(nodes) + 1.5)
    ax.set_ylim(-0.5, 1.5)
    ax.axis("off")
    ax.set_title(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_alpha_history(history: Sequence[dict[str, Any]], group_primitives: Sequence[Sequence[Sequence[str]]],
                       edges: Sequence[tuple[int, int]], path: str | Path, group_names: Sequence[str] | None = None
                       ) -> Path:
    """Mixing weight of every op on every edge over epochs, one figure row per alpha group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_groups = len(group_primitives)
    n_edges = max(len(p) for p in group_primitives)  # groups may differ in rows (MLP heads)
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(n_groups, n_edges, figsize=(1.6 * n_edges, 1.6 * n_groups + 0.6), squeeze=False,
                             sharey=True)
    for g in range(n_groups):
        for e in range(n_edges):
            ax = axes[g][e]
            if e >= len(group_primitives[g]):  # a group with fewer rows (an MLP head shorter than another)
                ax.axis("off")
                continue
            for k, op in enumerate(group_primitives[g][e]):
                ax.plot(epochs, [h["weights"][g][e][k] for h in history], label=op, linewidth=1)
            ax.set_title(f"{edges[e][0]}->{edges[e][1]}" if e < len(edges) else f"{e}->{e + 1}", fontsize=7)
            ax.tick_params(labelsize=5)
        axes[g][0].set_ylabel(group_names[g] if group_names else f"group {g}", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=6)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
