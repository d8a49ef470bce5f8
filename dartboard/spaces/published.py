"""Published genotypes, addressable by name: ``GENOTYPES[name]()`` returns one, :func:`resolve` takes a
name or a genotype file. DARTS' two cells, the handcrafted networks of DARTOpti and the PMSM flux
models of the thesis; :mod:`dartboard.spaces.catalog` shows them with the named spaces.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dartboard.registries import Registry
from dartboard.spaces import handcrafted
from dartboard.spaces.genotype import GENOTYPE_FILE, CellGenotype, DartsGenotype, Genotype, GenotypeError, load
from dartboard.spaces.pmsm_genotype import ActivationSpec, FluxMlpGenotype

GENOTYPES: Registry[Callable[[], Genotype]] = Registry("genotype")
register_genotype = GENOTYPES.register


@register_genotype("darts-v1")
def darts_v1() -> DartsGenotype:
    """DARTS (first order), as published with DARTS."""
    return DartsGenotype(
        normal=CellGenotype.from_pairs([
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
        ]),
        reduce=CellGenotype.from_pairs([
            ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0),
        ]),
    )


@register_genotype("darts-v2")
def darts_v2() -> DartsGenotype:
    """DARTS (second order), as published with DARTS."""
    return DartsGenotype(
        normal=CellGenotype.from_pairs([
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2),
        ]),
        reduce=CellGenotype.from_pairs([
            ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1),
        ]),
    )


# Handcrafted networks encoded in S_o (DARTOpti).
for _name in handcrafted.HANDCRAFTED:
    register_genotype(_name)(getattr(handcrafted, _name))


#: the thesis's PMSM baseline (Fig 6.14 top: one hidden layer, tanh) and its result (two more hidden
#: layers, A(x) = exp(x) + max(x, 0)), at width 16
GENOTYPES.add("pmsm-baseline", lambda: FluxMlpGenotype(1, 16, ActivationSpec.named("tanh"), meta={
    "source": "thesis Fig 6.14 (top): one hidden layer, tanh"}))
GENOTYPES.add("pmsm-thesis", lambda: FluxMlpGenotype(3, 16, ActivationSpec("add", "exp", "max0"), meta={
    "source": "thesis Fig 6.14 (bottom): two more hidden layers, A(x) = exp(x) + max(x, 0)"}))


def resolve(name_or_path: str | Path) -> Genotype:
    """A catalog name (``darts-v2``), a path to a genotype JSON file, or a folder holding ``genotype.json`` (a
    search's output folder, a trained network's)."""
    text = str(name_or_path)
    if text in GENOTYPES:
        return GENOTYPES[text]()
    path = Path(text)
    if path.is_dir():
        if not (path / GENOTYPE_FILE).is_file():
            raise GenotypeError(f"genotype {text!r} is a folder without {GENOTYPE_FILE} (the file `dartboard search` "
                                f"writes in its output folder)")
        path = path / GENOTYPE_FILE
    if path.is_file():
        return load(path)
    raise GenotypeError(
        f"genotype {text!r} is neither a file nor a catalog name, nor a folder holding {GENOTYPE_FILE}; catalog "
        f"names: {', '.join(sorted(GENOTYPES))}"
    )


def home_folder(name_or_path: str | Path) -> Path | None:
    """Where the outputs made from a genotype go by default: the folder of its file (the folder itself where
    :func:`resolve` was given one); None for a catalog name."""
    path = Path(name_or_path)
    if str(name_or_path) in GENOTYPES:
        return None
    return path if path.is_dir() else path.parent if path.is_file() else None
