"""Pictures: cells (graphviz when `dot` exists, else matplotlib) and alpha evolution."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from dartboard.platform.reports.alphas import op_color
from dartboard.platform.reports.alphas import plot_alpha_history as plot_alpha_history  # one place for both
from dartboard.spaces.genotype import CellGenotype

SPACING = 2.3  # data units between nodes (INCH per unit): twice the width of a 12-letter op label at 8 pt
ARC = 0.6  # arc3 curvature: an arc's apex is ARC * length / 2 above the line (spans differ by 0.6 units)
INCH = 0.75


def _node_name(node: int, n_inputs: int) -> str:
    """The genotype's node number; the inputs also say which earlier cell they are (c_{k-2}, c_{k-1})."""
    return f"{node}: c_{{k-{n_inputs - node}}}" if node < n_inputs else str(node)


def cell_dot(cell: CellGenotype, title: str = "") -> str:
    """Graphviz source of a cell: inputs, intermediate nodes (the genotype's node numbers), edges
    labelled by op, output."""
    lines = ["digraph cell {", "  rankdir=LR;", f'  label="{title}";',
             "  node [style=filled, shape=rect, fontname=helvetica];"]
    for i in range(cell.n_inputs):
        lines.append(f'  in{i} [label="{_node_name(i, cell.n_inputs)}", fillcolor=darkseagreen2];')
    nodes = sorted({e.dst for e in cell.edges})
    for n in nodes:
        lines.append(f'  n{n} [label="{n}", fillcolor=lightblue];')
    lines.append('  out [label="c_{k} (concat)", fillcolor=palegoldenrod];')
    for e in cell.edges:
        src = f"in{e.src}" if e.src < cell.n_inputs else f"n{e.src}"
        lines.append(f'  {src} -> n{e.dst} [label="{e.op}", color="{op_color(e.op)}", fontcolor="{op_color(e.op)}"];')
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
    import matplotlib.pyplot as plt

    fig = cell_figure(cell, title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def cell_figure(cell: CellGenotype, title: str = ""):
    """An arc diagram: nodes on a line in the genotype's order (0, 1: the cell's inputs; 2..: its nodes;
    then the output), every edge an arrow arching above it, coloured by op and labelled at its apex.
    Arcs of the same span share a height and are one node apart, longer arcs are higher, so labels
    neither overlap each other nor the nodes; the concatenation into the output arches below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    nodes = list(range(cell.n_inputs)) + sorted({e.dst for e in cell.edges} | set(cell.concat))
    nodes = sorted(set(nodes))
    x = {n: SPACING * i for i, n in enumerate(nodes)}
    x["out"] = SPACING * len(nodes)
    max_span = max((x[e.dst] - x[e.src] for e in cell.edges), default=SPACING)
    top = ARC * max_span / 2 + 0.5
    bottom = -max(1.0, ARC / 2 * (x["out"] - min((x[n] for n in cell.concat), default=0)) / 2 + 0.4)
    fig, ax = plt.subplots(figsize=(INCH * (x["out"] + 1.6), INCH * (top - bottom)))
    for e in cell.edges:
        x0, x1 = x[e.src], x[e.dst]
        color = op_color(e.op)
        ax.add_patch(FancyArrowPatch((x0, 0), (x1, 0), connectionstyle=f"arc3,rad={-ARC}", arrowstyle="-|>",
                                     mutation_scale=14, lw=1.6, color=color, shrinkA=11, shrinkB=11))
        ax.text((x0 + x1) / 2, ARC * (x1 - x0) / 2, e.op, ha="center", va="center", fontsize=8, color=color,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=color, lw=0.6), gid=f"op {e.src}->{e.dst}")
    for n in cell.concat:
        ax.add_patch(FancyArrowPatch((x[n], 0), (x["out"], 0), connectionstyle=f"arc3,rad={ARC / 2}",
                                     arrowstyle="-|>", mutation_scale=11, lw=0.9, color="#999999", shrinkA=11,
                                     shrinkB=14))
    for n in nodes:
        inp = n < cell.n_inputs
        ax.text(x[n], 0, str(n), ha="center", va="center", fontsize=10, fontweight="bold", gid=f"node {n}",
                bbox=dict(boxstyle="circle,pad=0.3", fc="#b4dcb4" if inp else "#cde4f7", ec="black"))
        if inp:
            ax.text(x[n], -0.5, f"$c_{{k-{cell.n_inputs - n}}}$", ha="center", va="top", fontsize=9)
    ax.text(x["out"], 0, "out", ha="center", va="center", fontsize=9,
            bbox=dict(boxstyle="round,pad=0.35", fc="palegoldenrod", ec="black"))
    ax.text(x["out"], 0.45, "$c_k$ = concat(" + ", ".join(map(str, cell.concat)) + ")", ha="center",
            va="bottom", fontsize=8)
    ax.set_xlim(-0.8, x["out"] + 0.8)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title + "  (nodes numbered as in genotype.json and the alpha history)" if title else "",
                 fontsize=9)
    return fig
