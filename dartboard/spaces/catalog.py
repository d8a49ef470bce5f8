"""Named spaces and published genotypes, addressable by name (a timm-style registry).

``GENOTYPES[name]()`` returns a genotype; ``SPACES[name]`` a search space: anything with the
:class:`~dartboard.spaces.supernet.SearchSpace` protocol (``layout(config)`` and
``supernet(layout, cell_group, group_names, config)``). The cell spaces of DARTS are
:class:`CellSpace` (the candidate ops of every edge of the normal and the reduction cell);
applications register their own (MLP chains, activation functions, colour models).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dartboard.registries import Registry
from dartboard.spaces import colour, handcrafted, tiny
from dartboard.spaces.cells import edge_list
from dartboard.spaces.genotype import CellGenotype, DartsGenotype, Genotype, GenotypeError, load
from dartboard.spaces.nasiam import NASIAM_SPACES
from dartboard.spaces.ops import DARTOPTI_PRIMITIVES, DARTS_PRIMITIVES

GENOTYPES: Registry[Callable[[], Genotype]] = Registry("genotype")
SPACES: Registry[Any] = Registry("space")
register_genotype = GENOTYPES.register
get_space = SPACES.lookup


@dataclass(frozen=True)
class CellSpace:
    """Candidate ops per edge for normal and reduction cells (``steps`` intermediate nodes)."""

    name: str
    normal: tuple[tuple[str, ...], ...]
    reduce: tuple[tuple[str, ...], ...]
    steps: int = 4
    description: str = ""
    # Supernet settings the space implies (e.g. tiny81: 1 step, 2 cells), applied under the user's options.
    network_defaults: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def uniform(cls, name: str, primitives: Sequence[str], steps: int = 4, description: str = "",
                network_defaults: Mapping[str, Any] | None = None) -> CellSpace:
        per_edge = tuple(tuple(primitives) for _ in edge_list(steps))
        return cls(name, per_edge, per_edge, steps, description, dict(network_defaults or {"steps": steps}))

    def primitives(self, reduction: bool) -> tuple[tuple[str, ...], ...]:
        return self.reduce if reduction else self.normal

    @property
    def n_ops(self) -> int:
        return len(self.normal[0])

    # ------------------------------------------------------------------ the SearchSpace protocol
    def layout(self, config: Any) -> Any:
        """The cells of the supernet: the plain DARTS layout, or the layout of ``config.start``."""
        from dartboard.spaces.supernet import plain_layout, start_layout

        if getattr(config, "space_options", None):
            raise ValueError(f"space_options: the cell space {self.name!r} takes no options, "
                             f"got {config.space_options}")
        if config.start is None:
            if self.steps != config.steps:
                raise ValueError(f"steps: space {self.name!r} has {self.steps} steps, config says {config.steps}")
            return plain_layout(self, config.layers, config.reductions)
        return start_layout(self, config.start)

    def supernet(self, layout: Any, cell_group: Sequence[int], group_names: Sequence[str], config: Any) -> Any:
        from dartboard.spaces.supernet import CellSupernet

        return CellSupernet(layout, cell_group, group_names, C=config.C, num_classes=config.num_classes,
                            in_channels=config.in_channels, input_size=config.input_size,
                            stem_multiplier=config.stem_multiplier, multiplier=config.multiplier,
                            node_bn=config.node_bn)


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
# ColorNAS (thesis appendix A): one cell supernet per colour channel + a meta-learner (dartboard.spaces.colornas).
register_space(colour.ColourSpace())


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


def resolve(name_or_path: str | Path) -> Genotype:
    """A catalog name (``darts-v2``) or a path to a genotype JSON file."""
    text = str(name_or_path)
    if text in GENOTYPES:
        return GENOTYPES[text]()
    if Path(text).is_file():
        return load(text)
    raise GenotypeError(
        f"genotype {text!r} is neither a file nor a catalog name; catalog names: {', '.join(sorted(GENOTYPES))}"
    )


from dartboard.spaces import pmsm as _pmsm  # noqa: E402,F401  (registers the PMSM spaces and genotypes)
