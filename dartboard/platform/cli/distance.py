"""``dartboard distance``: the architecture distance M between genotypes (thesis 4.1.5, Eq 4.8, Fig 4.8)."""

from __future__ import annotations

from pathlib import Path

import typer

from dartboard.errors import UserInputError


def distance(
    genotypes: list[str] = typer.Argument(..., help="two or more catalog names, genotype JSON files, search "
                                                    "folders or registered versions (NAME@ALIAS, NAME:VERSION); a "
                                                    "ColorNAS genotype is compared by its channels' cells (one "
                                                    "row each: NAME/R, NAME/G, ...)"),
    out: Path | None = typer.Option(None, "--out", help="draw the heatmap of M into this PNG"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (registered versions; default: "
                                                "$MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
) -> None:
    """Print the matrix of the architecture distance M (thesis Eq 4.8) between genotypes."""
    from dartboard.platform.cli.registered import genotype_of
    from dartboard.spaces.distance import distance_matrix

    if not genotypes:
        raise UserInputError("genotypes: expected at least two, got 0")
    if out is not None:
        from dartboard.platform.checks import check_writable_file

        check_writable_file(out, "--out")
        _check_image_format(out)
    rows = _compared([genotype_of(g, tracking_uri) for g in genotypes], genotypes, genotype_labels(genotypes))
    if len(rows) < 2:
        raise UserInputError(f"genotypes: expected at least two, got {len(genotypes)}")
    labels = [label for label, _, _ in rows]
    matrix = distance_matrix([geno for _, geno, _ in rows], names=[name for _, _, name in rows])
    width = max(8, *(len(label) for label in labels)) + 2
    typer.echo(" " * width + "".join(f"{label:>{width}}" for label in labels))
    for label, row in zip(labels, matrix, strict=False):
        typer.echo(f"{label:<{width}}" + "".join(f"{v:>{width}.4f}" for v in row))
    if out is not None:
        _heatmap(matrix, labels, out)
        typer.echo(f"heatmap: {out}")


def _compared(genos: list, given: list[str], labels: list[str]) -> list[tuple[str, object, str]]:
    """(label, genotype, name in messages) of each compared cell genotype: a ColorNAS genotype gives one per colour
    channel (``LABEL/R``), the cells of that channel's network; any other genotype is compared as it is."""
    from dartboard.spaces.colour import colour_model_spec
    from dartboard.spaces.colour_genotype import ColourGenotype

    rows = []
    for geno, text, label in zip(genos, given, labels, strict=True):
        if isinstance(geno, ColourGenotype):
            channels = colour_model_spec(geno.colour_model).channels
            rows += [(f"{label}/{c}", cells, f"{text} (channel {c})") for c, cells in zip(channels, geno.channels,
                                                                                        strict=True)]
        else:
            rows.append((label, geno, text))
    return rows


def genotype_labels(genotypes: list[str]) -> list[str]:
    """A catalog name as given; a file by the shortest end of its path that tells it apart from the
    others (``a/genotype.json`` and ``b/genotype.json``, not ``genotype`` twice)."""
    files = {g: Path(g).parts for g in genotypes if Path(g).suffix == ".json"}

    def label(g: str) -> str:
        if g not in files:
            return g
        parts = files[g]
        for n in range(1, len(parts) + 1):
            tail = parts[-n:]
            if not any(other[-n:] == tail for h, other in files.items() if h != g and Path(h) != Path(g)):
                return "/".join(tail) if n > 1 else Path(g).stem
        return g

    return [label(g) for g in genotypes]


def _check_image_format(out: Path) -> None:
    """The heatmap's file type is its suffix (none: PNG): one matplotlib cannot write is refused before the work."""
    from matplotlib.figure import Figure

    kinds = Figure().canvas.get_supported_filetypes()
    suffix = out.suffix.lstrip(".").lower()
    if suffix and suffix not in kinds:
        raise UserInputError(f"--out: {str(out)!r}: a heatmap is written as an image, not {suffix!r}; use one of "
                             f"{', '.join(sorted(kinds))}")


def _heatmap(matrix: list[list[float]], labels: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1))
    image = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    top = max(max(row) for row in matrix) or 1.0
    for i in range(n):
        for j in range(n):  # dark text on viridis' bright (large) end, white on its dark end
            ax.text(j, i, f"{matrix[i][j]:.3f}", ha="center", va="center", fontsize=8,
                    color="black" if matrix[i][j] > 0.55 * top else "white")
    fig.colorbar(image, ax=ax, label="M (distance units)")
    ax.set_title("Architecture distance M (thesis Eq 4.8)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    app.command("distance")(distance)
