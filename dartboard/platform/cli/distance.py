"""``dartboard distance`` (thesis 4.1.5, Fig 4.8) and ``dartboard bench memory`` (D-DARTS L_T vs L_F)."""

from __future__ import annotations

from pathlib import Path

import typer


def distance(
    genotypes: list[str] = typer.Argument(..., help="two or more catalog names or genotype JSON files"),
    out: Path | None = typer.Option(None, "--out", help="draw the heatmap of M into this PNG"),
) -> None:
    """Print the matrix of the architecture distance M (thesis Eq 4.8) between genotypes."""
    from dartboard.spaces.distance import distance_matrix
    from dartboard.spaces.genotype import resolve

    if len(genotypes) < 2:
        raise ValueError(f"genotypes: expected at least two, got {len(genotypes)}")
    labels = [Path(g).stem if Path(g).suffix == ".json" else g for g in genotypes]
    matrix = distance_matrix([resolve(g) for g in genotypes])
    width = max(8, *(len(label) for label in labels)) + 2
    typer.echo(" " * width + "".join(f"{label:>{width}}" for label in labels))
    for label, row in zip(labels, matrix, strict=False):
        typer.echo(f"{label:<{width}}" + "".join(f"{v:>{width}.4f}" for v in row))
    if out is not None:
        _heatmap(matrix, labels, out)
        typer.echo(f"heatmap: {out}")


def _heatmap(matrix: list[list[float]], labels: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1))
    image = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i][j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax, label="M (distance units)")
    ax.set_title("Architecture distance M (thesis Eq 4.8)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def bench_memory(
    batch: int = typer.Option(32, help="batch size"),
    channels: int = typer.Option(8, "--C", help="initial channels of the supernet"),
    layers: int = typer.Option(5, help="number of cells"),
    input_size: int = typer.Option(32, help="image side"),
    steps: int = typer.Option(2, help="measured search steps"),
    device: str = typer.Option("auto", help="cpu, cuda or auto (cuda when available)"),
) -> None:
    """Peak memory of a D-DARTS step with L_T (ablation loss) against L_F, and their ratio."""
    import torch

    from dartboard.bench import memory as bench

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    setting = bench.Setting(batch=batch, C=channels, layers=layers, input_size=input_size, steps=steps,
                            device=device)
    results = bench.run(setting)
    typer.echo(bench.report(results, setting))


def register(app: typer.Typer) -> None:
    from dartboard.platform.cli import bench_app

    app.command("distance")(distance)
    bench_app.command("memory")(bench_memory)
