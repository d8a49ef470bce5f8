"""ColorNAS (thesis appendix A, Fig A.1): one cell supernet per channel of a colour model, their
pooled features concatenated and fed to an MLP meta-learner (stacked generalisation).

The space ``colornas`` (:class:`ColourSpace`, registered in
:data:`~dartboard.spaces.catalog.SPACES`) follows the :class:`~dartboard.spaces.supernet.SearchSpace`
protocol, so the one engine searches it like any cell space. Its layout lays the channels' cells
end to end (channel ``c`` owns cells ``c*L .. c*L+L-1``) with one cell type per channel and cell
kind (``R_normal``, ``R_reduce``, ``G_normal``, ...): the grouping ``per_cell_type`` gives every
channel its own normal and reduce alphas (the thesis' 2|C| sets), ``per_cell`` one set per cell. Each channel is a
:class:`~dartboard.spaces.supernet.CellSupernet` (the DARTS ``SearchNetwork`` on one input
channel) whose classifier is replaced by the identity, so it returns its pooled features.

Space options (the engine option ``space_options``): ``colour_model`` (rb, rgb, rgby), ``yellow``
(``printed`` | ``min``, see :mod:`dartboard.spaces.colour`), ``meta_hidden`` (hidden widths of the
meta-learner) and ``cell_space`` (the candidate ops of every channel's cells; beta-DARTS: darts-none).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dartboard.spaces.cells import edge_list
from dartboard.spaces.colour import COLORNAS, RGB_CHANNELS, ColourModel, check_yellow, colour_model_spec
from dartboard.spaces.colour_genotype import ColourGenotype
from dartboard.spaces.genotype import CellsGenotype, DartsGenotype, Genotype, GenotypeError
from dartboard.spaces.supernet import AlphaGroup, CellLayout, CellSpace, CellSupernet, plain_layout

#: The thesis (A.2.1) gives no width for the meta-learner MLP: dartboard's choice, one hidden layer.
META_HIDDEN: tuple[int, ...] = (128,)
CELL_SPACE = "darts-none"  # beta-DARTS (the thesis' per-channel backbone) searches the DARTS ops without none


@dataclass(frozen=True)
class ColourOptions:
    """The options of the colornas space (engine option ``space_options``), checked by name."""

    colour_model: str = "rgb"
    yellow: str = "printed"
    meta_hidden: tuple[int, ...] = META_HIDDEN
    cell_space: str = CELL_SPACE

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> ColourOptions:
        options = dict(options or {})
        known = [f for f in cls.__dataclass_fields__]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"space_options: space {COLORNAS!r} has no option {', '.join(map(repr, unknown))}; "
                             f"its options: {', '.join(known)}")
        out = cls(**options)
        colour_model_spec(out.colour_model)
        check_yellow(out.yellow)
        hidden = out.meta_hidden if isinstance(out.meta_hidden, (list, tuple)) else [out.meta_hidden]
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"space_options.meta_hidden: expected a list of widths >= 1, got {out.meta_hidden!r}")
        return cls(out.colour_model, out.yellow, tuple(hidden), out.cell_space)


@dataclass(frozen=True)
class ColourLayout:
    """The cells of every channel end to end: ``channel`` is the per-channel layout (``L`` cells);
    ``types``/``type_names``: one type per channel x cell kind; ``reductions``: global positions."""

    channel: CellLayout
    channels: tuple[str, ...]
    options: ColourOptions
    types: tuple[int, ...] = field(init=False)
    type_names: tuple[str, ...] = field(init=False)
    reductions: tuple[int, ...] = field(init=False)
    start: None = None

    def __post_init__(self) -> None:
        L, kinds = self.channel.layers, self.channel.type_names
        object.__setattr__(self, "types", tuple(c * len(kinds) + t for c in range(len(self.channels))
                                                for t in self.channel.types))
        object.__setattr__(self, "type_names", tuple(f"{ch}_{k}" for ch in self.channels for k in kinds))
        object.__setattr__(self, "reductions", tuple(c * L + r for c in range(len(self.channels))
                                                     for r in self.channel.reductions))

    @property
    def layers(self) -> int:
        return self.channel.layers * len(self.channels)

    @property
    def cells_per_channel(self) -> int:
        return self.channel.layers


def meta_learner(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """The MLP meta-learner: Linear-ReLU per hidden width, then a linear layer to the classes."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def _as_features(network: nn.Module) -> int:
    """Make a cell network return its pooled features instead of logits; the features' width."""
    width = network.classifier.in_features
    network.classifier = nn.Identity()
    return width


def check_rgb_input(in_channels: int, colour_model: str) -> None:
    if in_channels != RGB_CHANNELS:
        raise ValueError(f"colour_model: {colour_model!r} converts RGB images (3 channels), but the data has "
                         f"{in_channels} channel(s); use RGB data (colour-digits, cifar10, cifar100), not "
                         f"grayscale digits")


class ColourSupernet(nn.Module):
    """One :class:`CellSupernet` per channel + the meta-learner; the Supernet protocol over all
    channels' groups (a group's cells may lie in several channels; each channel sees its own)."""

    def __init__(self, layout: ColourLayout, cell_group: Sequence[int], group_names: Sequence[str], config: Any):
        super().__init__()
        self.layout, self.cell_group, opts = layout, tuple(cell_group), layout.options
        check_rgb_input(config.in_channels, opts.colour_model)
        if len(self.cell_group) != layout.layers or any(not 0 <= g < len(group_names) for g in self.cell_group):
            raise ValueError(f"grouping: the colornas space has {layout.layers} cells ({len(layout.channels)} channels "
                             f"x {layout.cells_per_channel}) and needs one alpha group per channel and cell kind "
                             f"('per_cell_type', the thesis) or per cell ('per_cell'), got groups {list(cell_group)} "
                             f"named {list(group_names)}")
        self.colour = ColourModel(opts.colour_model, opts.yellow)
        L = layout.cells_per_channel
        self.local_groups: list[list[int]] = []  # channel c: the global group of each of its local groups
        nets, width = [], 0
        for c in range(len(layout.channels)):
            own = self.cell_group[c * L:(c + 1) * L]
            used = sorted(set(own))
            self.local_groups.append(used)
            net = CellSupernet(layout.channel, [used.index(g) for g in own], [group_names[g] for g in used],
                               C=config.C, num_classes=config.num_classes, in_channels=1,
                               input_size=config.input_size, stem_multiplier=config.stem_multiplier,
                               multiplier=config.multiplier, node_bn=config.node_bn)
            width += _as_features(net.network)
            nets.append(net)
        self.channels = nn.ModuleList(nets)
        self.meta = meta_learner(width, opts.meta_hidden, config.num_classes)
        self.groups = [self._group(g, name) for g, name in enumerate(group_names)]

    def _owners(self, group: int) -> list[tuple[int, int]]:
        """(channel, local group) of every channel with cells in ``group``."""
        return [(c, used.index(group)) for c, used in enumerate(self.local_groups) if group in used]

    def _group(self, g: int, name: str) -> AlphaGroup:
        owners = self._owners(g)
        if owners:
            c, local = owners[0]
            group = self.channels[c].groups[local]
            for c2, local2 in owners[1:]:
                if self.channels[c2].groups[local2].primitives != group.primitives:
                    raise ValueError(f"grouping: group {name!r} spans cells with different ops")
            return AlphaGroup(name, group.rows, group.primitives)
        # a group no cell uses (a cell type without cells, e.g. no reduction in 2 cells): the type's own ops
        kind = g % len(self.layout.channel.type_names) if g < len(self.layout.type_names) else 0
        prims = (self.layout.channel.primitives[self.layout.channel.types.index(kind)]
                 if kind in self.layout.channel.types else self.layout.channel.primitives[0])
        return AlphaGroup(name, tuple(edge_list(self.layout.channel.steps[0])), prims)

    def cells_of(self, group: int) -> list[int]:
        return [i for i, g in enumerate(self.cell_group) if g == group]

    def channel_features(self, x: torch.Tensor, group_weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The pooled features of every channel's network on its channel of the colour model's image."""
        x = self.colour(x)
        return [net(x[:, c:c + 1], [group_weights[g] for g in self.local_groups[c]])
                for c, net in enumerate(self.channels)]

    def forward(self, x: torch.Tensor, group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.meta(torch.cat(self.channel_features(x, group_weights), dim=1))

    # ------------------------------------------------------------------ op masks (CRB), per channel
    def active_ops(self) -> list[list[list[int]]]:
        return [cell for net in self.channels for cell in net.active_ops()]

    def set_active_ops(self, masks: Sequence[Sequence[Sequence[int]]]) -> None:
        L = self.layout.cells_per_channel
        for c, net in enumerate(self.channels):
            net.set_active_ops(masks[c * L:(c + 1) * L])

    def mask_group(self, group: int, keep: torch.Tensor) -> None:
        for c, local in self._owners(group):
            self.channels[c].mask_group(local, keep)

    def group_active(self, group: int) -> torch.Tensor:
        owners = self._owners(group)
        if owners:
            c, local = owners[0]
            return self.channels[c].group_active(local)
        return torch.zeros(len(self.groups[group].rows), max(len(p) for p in self.groups[group].primitives),
                           dtype=torch.bool)

    # ------------------------------------------------------------------ genotype
    def genotype(self, choices: Sequence[Any]) -> Genotype:
        """One discrete cell per group -> a ``colornas`` genotype: each channel's cells + the meta-learner."""
        channels = tuple(net.genotype([choices[g] for g in self.local_groups[c]])
                         for c, net in enumerate(self.channels))
        opts = self.layout.options
        return ColourGenotype(opts.colour_model, channels, opts.meta_hidden, opts.yellow)


def colour_layout(config: Any, cell_spaces: Callable[[str], Any]) -> ColourLayout:
    """The layout of the colornas space for an engine config (its ``space_options`` checked here);
    ``cell_spaces``: the lookup of a named space (``catalog.get_space``), for the channels' cell space."""
    opts = ColourOptions.parse(getattr(config, "space_options", None))
    if config.start is not None:
        raise ValueError("start: the colornas space searches plain DARTS cells per channel (no handcrafted start)")
    cells = cell_spaces(opts.cell_space)
    if not isinstance(cells, CellSpace):
        raise ValueError(f"space_options.cell_space: {opts.cell_space!r} is not a cell space")
    if cells.steps != config.steps:
        raise ValueError(f"steps: cell space {cells.name!r} has {cells.steps} steps, config says {config.steps}")
    return ColourLayout(plain_layout(cells, config.layers, config.reductions),
                        colour_model_spec(opts.colour_model).channels, opts)


@dataclass(frozen=True)
class ColourSpace:
    """The ``colornas`` search space (SearchSpace protocol; registered in the catalog with the catalog's
    lookup as ``cell_spaces``)."""

    cell_spaces: Callable[[str], Any] = field(compare=False, repr=False)
    name: str = COLORNAS
    description: str = ("ColorNAS (thesis appendix A): one cell supernet per colour channel + MLP meta-learner "
                        "(space_options: colour_model, yellow, meta_hidden, cell_space)")
    network_defaults: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def layout(self, config: Any) -> ColourLayout:
        return colour_layout(config, self.cell_spaces)

    def supernet(self, layout: ColourLayout, cell_group: Sequence[int], group_names: Sequence[str], config: Any
                 ) -> ColourSupernet:
        return ColourSupernet(layout, cell_group, group_names, config)


# ---------------------------------------------------------------------------------- final network
class ColourNetwork(nn.Module):
    """The final ColorNAS network of a ``colornas`` genotype: the colour model, one
    :class:`~dartboard.spaces.networks.DiscreteNetwork` per channel (C channels, ``layers`` cells,
    returning pooled features) and the meta-learner."""

    def __init__(self, genotype: ColourGenotype, *, C: int, num_classes: int, layers: int, in_channels: int,
                 input_size: int, drop_path_prob: float = 0.0, auxiliary: bool = False):
        super().__init__()
        from dartboard.spaces.networks import DiscreteNetwork

        names = colour_model_spec(genotype.colour_model).channels
        if len(genotype.channels) != len(names):
            raise GenotypeError(f"channels: colour model {genotype.colour_model!r} has {len(names)} channels "
                                f"({', '.join(names)}), the genotype {len(genotype.channels)}")
        if auxiliary:
            raise ValueError("auxiliary: a ColorNAS network has no auxiliary head (thesis A.3.1 trains without it)")
        check_rgb_input(in_channels, genotype.colour_model)
        self.genotype, self.colour = genotype, ColourModel(genotype.colour_model, genotype.yellow)
        nets, width = [], 0
        for ch in genotype.channels:
            if not isinstance(ch, (DartsGenotype, CellsGenotype)):
                raise GenotypeError(f"channels: expected darts or cells genotypes, got {ch.kind!r}")
            net = DiscreteNetwork(ch, C=C, num_classes=num_classes, layers=layers, in_channels=1,
                                  input_size=input_size, drop_path_prob=drop_path_prob)
            width += _as_features(net)
            nets.append(net)
        self.channels = nn.ModuleList(nets)
        # not ``meta``: torch.export's graph modules have a ``meta`` dict of their own, and an exported ColourNetwork
        # (ONNX, pt2) failed on the clash; weights saved under ``meta.`` load through _renamed_meta_keys
        self.meta_learner = meta_learner(width, genotype.meta_hidden, num_classes)
        self.register_load_state_dict_pre_hook(_renamed_meta_keys)

    @property
    def meta(self) -> nn.Module:
        """The meta-learner, by its name before 2026-12-07."""
        return self.meta_learner

    @property
    def drop_path_prob(self) -> float:
        return self.channels[0].drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, value: float) -> None:
        for net in self.channels:
            net.drop_path_prob = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.colour(x)
        return self.meta_learner(torch.cat([net(x[:, c:c + 1]) for c, net in enumerate(self.channels)], dim=1))


def _renamed_meta_keys(module, state_dict, prefix, *args) -> None:
    """Weights of a ColourNetwork saved before its meta-learner was renamed (``meta.`` -> ``meta_learner.``)."""
    old = prefix + "meta."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "meta_learner." + key[len(old):]] = state_dict.pop(key)
