"""``nasiam-mlp`` (S) and ``nasiam-mlp-reduced`` (S'): the projector and predictor heads of a
Siamese network as chains of softmax-mixed layers (thesis 5.1, Algorithm 4).

The layout's units are layers: the projector's (type 0) then the predictor's (type 1), so that
the groupings apply (``per_cell_type``: one alpha group per head, the thesis's alpha_e and
alpha_p; ``per_cell``: one group per layer). A group's rows are its layers, labelled as chain
edges ``(i, i + 1)``.

The supernet holds the backbone (a small CNN), the mixed chains and, for MoCo, a momentum key
encoder with its own copies of the backbone and projector (:meth:`NasiamSupernet.attach_momentum_encoder`;
in ``state_dict``, never among the alphas). Its forward takes ``[batch, 2, C, H, W]`` (two augmented
views) and returns a :class:`SiameseOutput`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dartboard.errors import UserInputError
from dartboard.spaces.genotype import MlpGenotype
from dartboard.spaces.mlp_heads import NASIAM_OPS, NASIAM_REDUCED_OPS, MixedLayer, SmallCNN
from dartboard.spaces.supernet import AlphaGroup

PROJECTOR_MAX_LAYERS = 6  # thesis 5.1.1 / ALGORITHMS.md: projector up to 6 layers ...
PREDICTOR_MAX_LAYERS = 4  # ... predictor up to 4
HEAD_NAMES = ("projector", "predictor")


@dataclass(frozen=True)
class HeadLayout:
    """Per layer its candidate ops and its head (0 projector, 1 predictor)."""

    primitives: tuple[tuple[str, ...], ...]
    types: tuple[int, ...]
    type_names: tuple[str, ...]
    reductions: tuple[int, ...] = ()
    start: None = None
    siamese: bool = True  # what the siamese objectives check for

    @property
    def layers(self) -> int:
        return len(self.types)

    def count(self, head: int) -> int:
        return sum(1 for t in self.types if t == head)


@dataclass
class SiameseOutput:
    """What a forward of two views gives the objective: projections ``z``, predictions ``p``
    (None without a predictor), MoCo keys ``k`` (normalised) and the queue as it was before
    this batch's keys entered it."""

    z1: torch.Tensor
    z2: torch.Tensor
    p1: torch.Tensor | None = None
    p2: torch.Tensor | None = None
    k1: torch.Tensor | None = None
    k2: torch.Tensor | None = None
    queue: torch.Tensor | None = None


def _head_length(config: Any, field: str, limit: int, low: int) -> int:
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= limit:
        raise ValueError(f"{field}: expected an integer from {low} to {limit} (the space's maximum), got {value!r}")
    return value


@dataclass(frozen=True)
class NasiamSpace:
    """A SearchSpace of MLP heads with the op set ``ops``."""

    name: str
    ops: tuple[str, ...]
    description: str = ""
    network_defaults: Any = None

    def layout(self, config: Any) -> HeadLayout:
        n_proj = _head_length(config, "projector_layers", PROJECTOR_MAX_LAYERS, 1)
        n_pred = _head_length(config, "predictor_layers", PREDICTOR_MAX_LAYERS, 0)
        types = (0,) * n_proj + (1,) * n_pred
        return HeadLayout((self.ops,) * len(types), types, HEAD_NAMES[: 2 if n_pred else 1])

    def supernet(self, layout: HeadLayout, cell_group: Sequence[int], group_names: Sequence[str], config: Any
                 ) -> NasiamSupernet:
        return NasiamSupernet(layout, cell_group, group_names, in_channels=config.in_channels, C=config.C,
                              space=self.name)


NASIAM_SPACES = (
    NasiamSpace("nasiam-mlp", NASIAM_OPS, "NASiam S (thesis 5.1.2): projector/predictor MLP heads, 7 ops", {}),
    NasiamSpace("nasiam-mlp-reduced", NASIAM_REDUCED_OPS, "NASiam S' (thesis 5.2.2): S without the pooling ops", {}),
)


def _check_views(x: torch.Tensor) -> None:
    if x.dim() != 5 or x.shape[1] != 2:
        raise UserInputError(f"nasiam: expected a batch of two views [batch, 2, channels, height, width], got shape "
                         f"{tuple(x.shape)}; search on a two-view dataset such as digits-views (augmentations on) "
                         f"or digits-views-noaug (the no-augmentation ablation)")


class MomentumEncoder(nn.Module):
    """MoCo's key encoder: its own copies of the backbone and the projector (distinct parameters,
    no gradient), following ``k <- m k + (1 - m) q``, and the queue of normalised keys."""

    def __init__(self, backbone: nn.Module, projector: nn.ModuleList, momentum: float, queue_size: int, dim: int):
        super().__init__()
        self.momentum = float(momentum)
        self.backbone, self.projector = copy.deepcopy(backbone), copy.deepcopy(projector)
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", nn.functional.normalize(torch.randn(int(queue_size), dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def follow(self, backbone: nn.Module, projector: nn.ModuleList) -> None:
        m = self.momentum
        for mine, theirs in ((self.backbone, backbone), (self.projector, projector)):
            for k, q in zip(mine.parameters(), theirs.parameters(), strict=True):
                k.mul_(m).add_(q.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        size, n = self.queue.shape[0], keys.shape[0]
        if size % n:
            raise UserInputError(f"moco queue_size: {size} is not divisible by the {n} keys each step enqueues "
                             f"(both views of a batch of {n // 2}); choose a multiple of {n}")
        ptr = int(self.queue_ptr)
        self.queue[ptr:ptr + n] = keys.detach().to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)


class NasiamSupernet(nn.Module):
    """Backbone + mixed projector (+ mixed predictor) applied to both views."""

    def __init__(self, layout: HeadLayout, cell_group: Sequence[int], group_names: Sequence[str], *, in_channels: int,
                 C: int, space: str = "nasiam-mlp"):
        super().__init__()
        self.layout, self.cell_group, self.space = layout, tuple(cell_group), space
        if len(self.cell_group) != layout.layers:
            raise ValueError(f"grouping: expected a group for each of the {layout.layers} layers")
        self.backbone = SmallCNN(in_channels, C)
        self.dim = self.backbone.out_dim
        n_proj, last = layout.count(0), layout.layers - 1
        self.projector = nn.ModuleList(MixedLayer(layout.primitives[i], self.dim) for i in range(n_proj))
        # no BN on the predictor's output (thesis 5.1.2)
        self.predictor = nn.ModuleList(MixedLayer(layout.primitives[i], self.dim, bn=i != last)
                                       for i in range(n_proj, layout.layers))
        self.key_encoder: MomentumEncoder | None = None
        self.groups = [AlphaGroup(name, tuple((i, i + 1) for i in range(len(self.cells_of(g)))),
                                  tuple(layout.primitives[u] for u in self.cells_of(g)))
                       for g, name in enumerate(group_names)]
        # (group, row) of every layer
        self._rows = [(g, self.cells_of(g).index(u)) for u, g in enumerate(self.cell_group)]

    @property
    def layers(self) -> list[MixedLayer]:
        return [*self.projector, *self.predictor]

    def cells_of(self, group: int) -> list[int]:
        return [u for u, g in enumerate(self.cell_group) if g == group]

    def attach_momentum_encoder(self, momentum: float, queue_size: int) -> None:
        """MoCo: a key encoder copied from the backbone and projector as they are now."""
        self.key_encoder = MomentumEncoder(self.backbone, self.projector, momentum, queue_size, self.dim)

    # ------------------------------------------------------------------ forward
    def _chain(self, layers: Sequence[MixedLayer], first: int, h: torch.Tensor,
               group_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        for i, layer in enumerate(layers):
            g, row = self._rows[first + i]
            h = layer(h, group_weights[g][row])
        return h

    def forward(self, x: torch.Tensor, group_weights: Sequence[torch.Tensor]) -> SiameseOutput:
        _check_views(x)
        n_proj = len(self.projector)
        zs, ps = [], []
        for v in (0, 1):
            z = self._chain(self.projector, 0, self.backbone(x[:, v]), group_weights)
            zs.append(z)
            ps.append(self._chain(self.predictor, n_proj, z, group_weights) if len(self.predictor) else None)
        out = SiameseOutput(zs[0], zs[1], ps[0], ps[1])
        if self.key_encoder is not None:
            self._keys(x, group_weights, out)
        return out

    def _keys(self, x: torch.Tensor, group_weights: Sequence[torch.Tensor], out: SiameseOutput) -> None:
        """MoCo keys. A forward that trains the weights (train mode, mixing weights without gradient,
        i.e. the engine's weight step) first moves the key encoder towards the query encoder, then
        enqueues its keys; the alpha step and evaluation leave encoder and queue as they are."""
        enc = self.key_encoder
        weight_step = self.training and torch.is_grad_enabled() and not any(w.requires_grad for w in group_weights)
        with torch.no_grad():
            if weight_step:
                enc.follow(self.backbone, self.projector)
            weights = [w.detach() for w in group_weights]
            keys = [nn.functional.normalize(self._chain(enc.projector, 0, enc.backbone(x[:, v]), weights), dim=1)
                    for v in (0, 1)]
            out.k1, out.k2, out.queue = keys[0], keys[1], enc.queue.clone()
            if weight_step:
                enc.enqueue(torch.cat(keys))

    # ------------------------------------------------------------------ op masks
    def active_ops(self) -> list[list[list[int]]]:
        return [[list(layer.active)] for layer in self.layers]

    def set_active_ops(self, masks: Sequence[Sequence[Sequence[int]]]) -> None:
        for layer, (active,) in zip(self.layers, masks, strict=True):
            layer.active = tuple(active)

    def mask_group(self, group: int, keep: torch.Tensor) -> None:
        keep = keep.cpu()
        layers = self.layers
        for row, u in enumerate(self.cells_of(group)):
            layers[u].active = tuple(k for k in layers[u].active if bool(keep[row, k]))

    def group_active(self, group: int) -> torch.Tensor:
        units = self.cells_of(group)
        out = torch.zeros((len(units), max(len(p) for p in self.groups[group].primitives)), dtype=torch.bool)
        layers = self.layers
        for row, u in enumerate(units):
            out[row, list(layers[u].active)] = True
        return out

    # ------------------------------------------------------------------ genotype
    def genotype(self, choices: Sequence[Any]) -> MlpGenotype:
        """Per group the discretizer's cell over the chain edges (DARTS parse: the argmax op of every
        layer); a layer is the first op into its node (identity when a threshold parse kept none).
        Identity layers vanish, so depth is searched."""
        ops = [next((e.op for e in choices[g].edges if e.dst == row + 1), "identity") for g, row in self._rows]
        chains = {name: tuple(op for op, t in zip(ops, self.layout.types, strict=True) if t == head
                              and op != "identity")
                  for head, name in enumerate(self.layout.type_names)}
        meta = {"space": self.space, "dim": self.dim, "projector_layers": self.layout.count(0),
                "predictor_layers": self.layout.count(1)}
        return MlpGenotype(chains, meta)
