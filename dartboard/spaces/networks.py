"""Supernets and final networks (DARTS model_search / model structure), any input size.

Both networks share one skeleton: a stem, ``layers`` cells with reductions at
``layers//3`` and ``2*layers//3`` (unless given), global pooling and a linear
classifier. The stem adapts to the input: a 3x3 convolution to ``stem_multiplier*C``
channels for inputs up to 32 pixels (CIFAR, 8x8 digits), the DARTS ImageNet stem
(downsampling by 8) for larger ones, unless ``stem`` names one (``cifar`` or ``imagenet``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dartboard.spaces.cells import DiscreteCell, SearchCell, edge_list
from dartboard.spaces.genotype import CellGenotype, CellsGenotype, DartsGenotype, GenotypeError


def default_reductions(layers: int) -> tuple[int, ...]:
    return tuple(sorted({layers // 3, 2 * layers // 3})) if layers >= 3 else ()


#: ``stem`` of a network: chosen by the input size (ImageNet above 32 px), or named.
STEMS = ("auto", "cifar", "imagenet")


def _stem(in_channels: int, C_stem: int, C: int, input_size: int,
          stem: str = "auto") -> tuple[nn.Module, nn.Module | None]:
    """CIFAR stem (one module) or ImageNet stem (two modules, both downsampling)."""
    if stem not in STEMS:
        raise ValueError(f"stem: expected one of {', '.join(STEMS)}, got {stem!r}")
    if stem == "cifar" or (stem == "auto" and input_size <= 32):
        return nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem)), None
    stem0 = nn.Sequential(
        nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
        nn.ReLU(inplace=True), nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C),
    )
    stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                          nn.BatchNorm2d(C))
    return stem0, stem1


class _Skeleton(nn.Module):
    """Stem, cell channels bookkeeping and classifier shared by both networks."""

    def _init_skeleton(self, C: int, num_classes: int, layers: int, in_channels: int, input_size: int,
                       stem_multiplier: int, reductions: Sequence[int] | None, stem: str = "auto") -> None:
        for name, value in (("C", C), ("num_classes", num_classes), ("layers", layers), ("in_channels", in_channels),
                            ("input_size", input_size), ("stem_multiplier", stem_multiplier)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.reductions = tuple(default_reductions(layers) if reductions is None else reductions)
        for r in self.reductions:
            if not 0 <= r < layers:
                raise ValueError(f"reductions: position {r} is outside 0..{layers - 1}")
        self.stem0, self.stem1 = _stem(in_channels, stem_multiplier * C, C, input_size, stem)
        self.imagenet_stem = self.stem1 is not None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)

    def _stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stem1 is None:
            s = self.stem0(x)
            return s, s
        s0 = self.stem0(x)
        return s0, self.stem1(s0)

    def _first_channels(self) -> tuple[int, int, bool]:
        """(C_pp, C_p, reduction_prev) seen by the first cell."""
        if self.imagenet_stem:
            return self.C, self.C, True
        c = self.stem0[0].out_channels
        return c, c, False


class SearchNetwork(_Skeleton):
    """The DARTS supernet. ``forward(x, weights)`` takes one mixing-weight tensor per cell,
    shaped ``[n_edges, n_ops]``: which cells share architecture parameters, and how alphas
    become weights, is the searcher's business.
    """

    def __init__(self, edge_primitives: Sequence[Sequence[Sequence[str]]] | None = None, *, C: int = 16,
                 num_classes: int = 10, layers: int = 8, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, in_channels: int = 3, input_size: int = 32,
                 reductions: Sequence[int] | None = None, node_bn: bool = False,
                 normal_primitives: Sequence[Sequence[str]] | None = None,
                 reduce_primitives: Sequence[Sequence[str]] | None = None):
        """``edge_primitives[i]`` lists the candidate ops of every edge of cell ``i``; or give
        ``normal_primitives``/``reduce_primitives`` (one list per edge) for all cells of a type."""
        super().__init__()
        self._init_skeleton(C, num_classes, layers, in_channels, input_size, stem_multiplier, reductions)
        self.steps, self.multiplier = steps, multiplier
        self.edges = edge_list(steps)
        if edge_primitives is None:
            if normal_primitives is None:
                raise ValueError("give edge_primitives or normal_primitives")
            reduce_primitives = reduce_primitives if reduce_primitives is not None else normal_primitives
            edge_primitives = [reduce_primitives if i in self.reductions else normal_primitives
                               for i in range(layers)]
        if len(edge_primitives) != layers:
            raise ValueError(f"edge_primitives: expected one entry per cell ({layers}), got {len(edge_primitives)}")
        C_pp, C_p, reduction_prev = self._first_channels()
        C_curr = C
        cells = []
        for i in range(layers):
            reduction = i in self.reductions
            if reduction:
                C_curr *= 2
            cells.append(SearchCell(edge_primitives[i], steps, multiplier, C_pp, C_p, C_curr, reduction,
                                    reduction_prev, node_bn))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(C_p, num_classes)

    @property
    def edge_primitives(self) -> list[list[tuple[str, ...]]]:
        return [cell.edge_primitives for cell in self.cells]

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(weights) != len(self.cells):
            raise ValueError(f"weights: expected one tensor per cell ({len(self.cells)}), got {len(weights)}")
        s0, s1 = self._stem_forward(x)
        for cell, w in zip(self.cells, weights, strict=True):
            s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary classifier (AuxiliaryHeadCIFAR), for any feature-map size."""

    def __init__(self, C: int, num_classes: int, spatial: int):
        super().__init__()
        # 8x8 (CIFAR): AvgPool 5, stride 3 -> 2x2, as in DARTS; smaller maps pool adaptively.
        pool = (nn.AvgPool2d(5, stride=spatial - 5, padding=0, count_include_pad=False) if spatial > 5
                else nn.AdaptiveAvgPool2d(2))
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), pool,
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def cells_for_layers(genotype: DartsGenotype | CellsGenotype, layers: int,
                     reductions: Sequence[int] | None = None) -> tuple[list[CellGenotype], tuple[int, ...]]:
    """The cell genotype at every position of a ``layers``-cell network.

    A per-cell genotype with a different number of cells is deepened with thesis
    Algorithm 2 (:func:`dartboard.spaces.deepen.deepen`) when that module exists.
    """
    if isinstance(genotype, DartsGenotype):
        reds = tuple(default_reductions(layers) if reductions is None else reductions)
        return [genotype.reduce if i in reds else genotype.normal for i in range(layers)], reds
    if not isinstance(genotype, CellsGenotype):
        what = f"a {genotype.kind!r} genotype" if isinstance(getattr(genotype, "kind", None), str) and not \
            isinstance(genotype, dict) else f"a {type(genotype).__name__}, not a genotype"
        raise GenotypeError(f"genotype: a cell network is built from a darts or cells genotype, got {what} (a "
                            f"genotype's dict is read with genotype.from_dict, a catalog name with catalog.resolve)")
    if len(genotype.cells) == layers:
        reds = tuple(genotype.reductions if reductions is None else reductions)
        return list(genotype.cells), reds
    from dartboard.spaces.deepen import deepen

    mapping = deepen(len(genotype.cells), layers)
    reds = tuple(default_reductions(layers) if reductions is None else reductions)
    return [genotype.cells[m] for m in mapping], reds


class DiscreteNetwork(_Skeleton):
    """The final network of a genotype (DARTS NetworkCIFAR / NetworkImageNet)."""

    def __init__(self, genotype: DartsGenotype | CellsGenotype, *, C: int = 36, num_classes: int = 10,
                 layers: int = 20, auxiliary: bool = False, in_channels: int = 3, input_size: int = 32,
                 stem_multiplier: int = 3, reductions: Sequence[int] | None = None, drop_path_prob: float = 0.0,
                 stem: str = "auto"):
        super().__init__()
        cell_genotypes, reds = cells_for_layers(genotype, layers, reductions)
        self._init_skeleton(C, num_classes, layers, in_channels, input_size, stem_multiplier, reds, stem)
        self.genotype = genotype
        self.drop_path_prob = drop_path_prob
        C_pp, C_p, reduction_prev = self._first_channels()
        spatial = input_size if not self.imagenet_stem else -(-input_size // 8)
        C_curr = C
        cells = []
        self.aux_position = 2 * layers // 3
        self.auxiliary_head = None
        for i, cell_genotype in enumerate(cell_genotypes):
            reduction = i in self.reductions
            if reduction:
                C_curr *= 2
                spatial = -(-spatial // 2)
            cell = DiscreteCell(cell_genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
            cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if auxiliary and i == self.aux_position:
                self.auxiliary_head = AuxiliaryHead(C_p, num_classes, spatial)
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits; in training with an auxiliary head, (logits, auxiliary logits)."""
        s0, s1 = self._stem_forward(x)
        aux = None
        for i, cell in enumerate(self.cells):
            cell.drop_prob = self.drop_path_prob
            s0, s1 = s1, cell(s0, s1)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, aux) if aux is not None else logits


def count_parameters(module: nn.Module, exclude: str | None = "auxiliary") -> int:
    """Number of parameters, leaving out those whose name contains ``exclude``."""
    return sum(p.numel() for name, p in module.named_parameters() if exclude is None or exclude not in name)


def multiply_adds(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of a zero input of ``input_shape`` (batch included) through the
    ``Conv2d`` and ``Linear`` modules of ``net`` (the DARTS papers' "multi-adds"; biases and the rest left
    out): a convolution costs (its output elements) x (in_channels / groups) x (kernel area), a linear layer
    (its output elements) x in_features. The same count as torch's ``FlopCounterMode`` / 2 on these
    networks (tested), without it: that mode imports ``torch._dynamo`` (``dartboard info darts-v2``: 3.85 CPU s
    with it, 2.19 without)."""
    total = 0

    def conv(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]

    def linear(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
               for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            net(torch.zeros(*input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


class TypedSearchNetwork(SearchNetwork):
    """A supernet whose cells may have different numbers of intermediate nodes (one per cell
    type, DARTOpti); each search cell concatenates all its nodes, like the handcrafted cells."""

    def __init__(self, edge_primitives: Sequence[Sequence[Sequence[str]]], cell_steps: Sequence[int], *, C: int,
                 num_classes: int, in_channels: int, input_size: int, stem_multiplier: int,
                 reductions: Sequence[int]):
        _Skeleton.__init__(self)  # the cells differ from SearchNetwork's: build them here
        layers = len(cell_steps)
        self._init_skeleton(C, num_classes, layers, in_channels, input_size, stem_multiplier, reductions)
        self.steps, self.multiplier = max(cell_steps), max(cell_steps)
        self.edges = edge_list(self.steps)
        C_pp, C_p, reduction_prev = self._first_channels()
        C_curr = C
        cells = []
        for i, (prims, steps) in enumerate(zip(edge_primitives, cell_steps, strict=True)):
            reduction = i in self.reductions
            if reduction:
                C_curr *= 2
            cells.append(SearchCell(prims, steps, steps, C_pp, C_p, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_pp, C_p = C_p, steps * C_curr
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(C_p, num_classes)
