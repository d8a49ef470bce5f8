"""What can be searched: ops, genotypes, cells, networks, named spaces (torch only).

Importing the package registers the genotype kinds of the applications with
:func:`dartboard.spaces.genotype.register_kind` (``flux_mlp``: PMSM, ``colornas``: ColorNAS), so that
``genotype.from_dict`` reads every kind whichever module of the package was imported first. Both modules
are torch-free.
"""

from dartboard.spaces import colour_genotype, pmsm_genotype  # noqa: F401  (register their genotype kinds)
