"""Named spaces and published genotypes, addressable by name (a timm-style registry).

``SPACES[name]`` is a search space: anything with the
:class:`~dartboard.spaces.supernet.SearchSpace` protocol (``layout(config)`` and
``supernet(layout, cell_group, group_names, config)``). The cell spaces of DARTS are
:class:`~dartboard.spaces.supernet.CellSpace` (the candidate ops of every edge of the normal and the
reduction cell); the applications' own (MLP chains, activation functions, colour models) are defined in
their modules and registered here, so that no space module imports this one. ``GENOTYPES[name]()``
returns a published genotype (:mod:`dartboard.spaces.published`, shown here too).
"""

from __future__ import annotations

from typing import Any

from dartboard.registries import Registry
from dartboard.spaces import tiny
from dartboard.spaces.colornas import ColourSpace
from dartboard.spaces.nasiam import NASIAM_SPACES
from dartboard.spaces.ops import DARTOPTI_PRIMITIVES, DARTS_PRIMITIVES
from dartboard.spaces.pmsm import PMSM_SPACES
from dartboard.spaces.published import GENOTYPES, home_folder, register_genotype, resolve  # noqa: F401  (the catalog's names)
from dartboard.spaces.supernet import CellSpace

SPACES: Registry[Any] = Registry("space")
get_space = SPACES.lookup


def register_space(space: Any) -> Any:
    """Register a search space (a :class:`CellSpace` or any other SearchSpace) under ``space.name``."""
    return SPACES.add(space.name, space)


register_space(CellSpace.uniform("darts", DARTS_PRIMITIVES, description="DARTS: 7 ops + none"))
register_space(CellSpace.uniform("darts-none", DARTS_PRIMITIVES[1:], description="DARTS without none (FairDARTS)"))
register_space(CellSpace.uniform("s_o", DARTOPTI_PRIMITIVES, description="DARTOpti S_o: 12 ops"))

# tiny81: 2 cells x 2 edges x 3 ops = 81 architectures, exhaustively evaluated (dartboard.bench.table).
register_space(CellSpace.uniform(tiny.TINY81_NAME, tiny.TINY81_OPS, steps=tiny.TINY81_STEPS,
                                 description="mini space of 81 members with a shipped table (Zela & Hutter)",
                                 network_defaults={k: v for k, v in tiny.TINY81_SEARCH_OPTIONS.items()
                                                   if k != "space"}))
register_space(CellSpace.uniform(tiny.TINY625_NAME, tiny.TINY625_OPS, steps=tiny.TINY81_STEPS,
                                 description="tiny81's two cells with 5 ops: 625 members (the larger table)",
                                 network_defaults={k: v for k, v in tiny.TINY81_SEARCH_OPTIONS.items()
                                                   if k != "space"}))

# R-DARTS spaces S1-S4 (Zela et al. 2020; ALGORITHMS.md R-DARTS). S1 has two preselected ops
# per edge: the per-edge pairs of the RobustDARTS S1 (the two ops with the highest DARTS alpha
# on each edge), as listed in the RobustDARTS search-space definition (mirrored in
# Sunshine-Ye/Beta-DARTS sota/cnn/spaces.py, `primitives_1`); op order as there.
_S1_NORMAL = (("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"),
              ("skip_connect", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"), ("max_pool_3x3", "skip_connect"),
              ("skip_connect", "sep_conv_3x3"), ("skip_connect", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"),
              ("skip_connect", "sep_conv_3x3"), ("max_pool_3x3", "skip_connect"), ("skip_connect", "dil_conv_3x3"),
              ("dil_conv_3x3", "dil_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5"))
_S1_REDUCE = (("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "dil_conv_3x3"), ("max_pool_3x3", "avg_pool_3x3"),
              ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"), ("max_pool_3x3", "avg_pool_3x3"),
              ("max_pool_3x3", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"),
              ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"),
              ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"))
register_space(CellSpace("s1", _S1_NORMAL, _S1_REDUCE, description="R-DARTS S1: two preselected ops per edge"))
register_space(CellSpace.uniform("s2", ("skip_connect", "sep_conv_3x3"), description="R-DARTS S2"))
register_space(CellSpace.uniform("s3", ("none", "skip_connect", "sep_conv_3x3"), description="R-DARTS S3"))
register_space(CellSpace.uniform("s4", ("noise", "sep_conv_3x3"), description="R-DARTS S4: noise N(0,1)"))
for _space in NASIAM_SPACES:  # NASiam S and S' (MLP heads of Siamese networks)
    register_space(_space)
for _space in PMSM_SPACES:  # the PMSM flux model's depth and activation-function spaces (thesis 6.2)
    register_space(_space)
# ColorNAS (thesis appendix A): one cell supernet per colour channel + a meta-learner; the cell space of its
# channels is named in its options and looked up here.
register_space(ColourSpace(cell_spaces=get_space))
