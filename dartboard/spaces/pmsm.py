"""PMSM flux models and their two search spaces (thesis 6.2.2).

- The model: an MLP ``M(I_d, I_q) -> (lambda_d, lambda_q)`` (:class:`FluxNet`, from a
  :class:`~dartboard.spaces.pmsm_genotype.FluxMlpGenotype`), or two scalar MLPs
  ``lambda_d = f2(I_d)``, ``lambda_q = f1(I_q)`` (Eq 6.12, ``decoupled``).
- ``pmsm-depth`` (step 1): ``layers`` = N mixed layers of {Linear+ReLU, Identity} between the
  input layer (Linear+ReLU) and the output layer, one alpha row per mixed layer (2N alphas); the
  derived model keeps the rows whose argmax is Linear+ReLU, so it has ``1 + kept`` hidden layers
  (identity layers vanish). ReLU is the placeholder the second step replaces.
- ``pmsm-activation`` (step 2): ``layers`` hidden layers (the depth step 1 found) each followed by
  one global activation ``A(x) = B(U1(x), U2(x))``: three alpha groups (B: 6 ops, U1 and U2: 10
  ops each), softmax-mixed: ``A(x) = sum_b w_b B_b(sum_u w1_u U_u(x), sum_u w2_u U_u(x))``.
- ``pmsm-depth-decoupled``, ``pmsm-activation-decoupled``: the same with the Eq 6.12 form.

``C`` is the hidden width. The supernet's forward takes the batch's inputs ``x = (I_d, I_q,
omega_e, v_d, v_q, R)`` and returns a :class:`FluxOutput`: the flux and its Jacobian w.r.t. the
currents at every sample (``torch.func``: ``vmap(jacrev)``), with ``x``, so that the objective
(:mod:`dartboard.searchers.parts.pmsm`, criterion C) has all it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import jacrev, vmap

from dartboard.spaces.genotype import Genotype, GenotypeError
from dartboard.spaces.pmsm_genotype import BINARY, UNARY, ActivationSpec, FluxMlpGenotype
from dartboard.spaces.supernet import AlphaGroup

EXP_MAX = 10.0  # exp is evaluated at min(x, EXP_MAX): exp(10) ~ 2.2e4
ACT_MAX = 1e4  # every activation's output is clamped to +-ACT_MAX: x^2, prod and exp cannot compound into inf
DEPTH_OPS = ("linear_relu", "identity")  # (with the tanh placeholder: linear_tanh, identity)
PLACEHOLDERS = ("relu", "tanh")  # step 1's activation: ReLU (thesis) or tanh (space pmsm-depth-tanh)


def guarded_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(min(x, EXP_MAX)): the exp primitive cannot overflow (its gradient is 0 above EXP_MAX)."""
    return torch.exp(torch.clamp(x, max=EXP_MAX))


UNARY_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max0": torch.relu, "min0": lambda x: torch.clamp(x, max=0.0), "exp": guarded_exp, "tanh": torch.tanh,
    "x": lambda x: x, "abs": torch.abs, "sin": torch.sin, "cos": torch.cos, "one": torch.ones_like,
    "square": lambda x: x * x,
}
BINARY_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": lambda x, y: x + y, "prod": lambda x, y: x * y, "sub": lambda x, y: x - y, "max": torch.maximum,
    "min": torch.minimum, "mask": lambda x, y: x,
}
assert tuple(UNARY_FNS) == tuple(UNARY) and tuple(BINARY_FNS) == tuple(BINARY)
UNARY_OPS, BINARY_OPS = tuple(UNARY), tuple(BINARY)


def activation_fn(spec: ActivationSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    b, u1, u2 = BINARY_FNS[spec.binary], UNARY_FNS[spec.unary1], UNARY_FNS[spec.unary2]
    return lambda x: torch.clamp(b(u1(x), u2(x)), -ACT_MAX, ACT_MAX)


def mixed_activation(x: torch.Tensor, w_binary: torch.Tensor, w_unary1: torch.Tensor, w_unary2: torch.Tensor
                     ) -> torch.Tensor:
    """sum_b w_b B_b(sum_u w1_u U_u(x), sum_u w2_u U_u(x)) (weights: [6], [10], [10]), clamped to +-ACT_MAX."""
    unaries = torch.stack([f(x) for f in UNARY_FNS.values()], 0)
    u1 = torch.tensordot(w_unary1.to(x.dtype), unaries, dims=1)
    u2 = torch.tensordot(w_unary2.to(x.dtype), unaries, dims=1)
    binaries = torch.stack([f(u1, u2) for f in BINARY_FNS.values()], 0)
    return torch.clamp(torch.tensordot(w_binary.to(x.dtype), binaries, dims=1), -ACT_MAX, ACT_MAX)


class FluxOutput(NamedTuple):
    """What a flux model returns for the objective: flux [B, 2] (lambda_d, lambda_q), its Jacobian
    [B, 2, 2] (rows lambda_d, lambda_q; columns I_d, I_q) and the batch's inputs x [B, 6]."""

    flux: torch.Tensor
    jac: torch.Tensor
    x: torch.Tensor


def flux_and_jacobian(flux_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> FluxOutput:
    """Flux and Jacobian w.r.t. the currents ``x[:, :2]`` at every sample (vmap of jacrev)."""
    def one(currents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = flux_fn(currents.unsqueeze(0)).squeeze(0)
        return out, out

    jac, flux = vmap(jacrev(one, has_aux=True))(x[:, :2])
    return FluxOutput(flux, jac, x)


# ------------------------------------------------------------------ discrete models
class Chain(nn.Module):
    """in -> [Linear(width) -> act] x hidden_layers -> Linear(out)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_layers: int, width: int,
                 act: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        dims = [in_dim] + [width] * hidden_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.out = nn.Linear(dims[-1], out_dim)
        self.act = act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h)


class FluxNet(nn.Module):
    """The network of a ``flux_mlp`` genotype: currents [B, 2] -> flux [B, 2]; ``forward(x)`` on a
    batch's inputs returns a :class:`FluxOutput` (flux and Jacobian), ``flux(currents)`` the flux."""

    def __init__(self, genotype: FluxMlpGenotype):
        super().__init__()
        if not isinstance(genotype, FluxMlpGenotype):
            kind = getattr(genotype, "kind", type(genotype).__name__)
            raise GenotypeError(f"kind: a {kind!r} genotype is not a PMSM flux model; expected flux_mlp")
        self.genotype = genotype
        act = activation_fn(genotype.activation)
        h, w = genotype.hidden_layers, genotype.width
        if genotype.decoupled:
            self.f2, self.f1 = Chain(1, 1, h, w, act), Chain(1, 1, h, w, act)  # lambda_d = f2(I_d), lambda_q = f1(I_q)
        else:
            self.net = Chain(2, 2, h, w, act)

    def flux(self, currents: torch.Tensor) -> torch.Tensor:
        if self.genotype.decoupled:
            return torch.cat([self.f2(currents[:, :1]), self.f1(currents[:, 1:2])], dim=1)
        return self.net(currents)

    def forward(self, x: torch.Tensor) -> FluxOutput:
        return flux_and_jacobian(self.flux, x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def multiply_adds(genotype: FluxMlpGenotype) -> int:
    """Multiply-adds of one flux evaluation (the Linear layers)."""
    h, w = genotype.hidden_layers, genotype.width
    one = (2 * w + (h - 1) * w * w + w * 2) if not genotype.decoupled else 2 * (w + (h - 1) * w * w + w)
    return one


# ------------------------------------------------------------------ layouts and supernets
@dataclass(frozen=True)
class ChainLayout:
    """The searched units of a chain space: the candidate ops of each unit, its type (units of a
    type can share alphas: grouping ``per_cell_type``), no reductions, no start."""

    primitives: tuple[tuple[str, ...], ...]
    types: tuple[int, ...]
    type_names: tuple[str, ...]
    reductions: tuple[int, ...] = ()
    start: Any = None

    @property
    def layers(self) -> int:
        return len(self.primitives)


class ChainSupernet(nn.Module):
    """Common part of the two PMSM supernets: groups of units (each unit a row of its group's
    alphas), op masks per unit (CRB), flux + Jacobian forward."""

    space_name = ""

    def __init__(self, layout: ChainLayout, cell_group: Sequence[int], group_names: Sequence[str], width: int,
                 decoupled: bool):
        super().__init__()
        self.layout, self.cell_group, self.width, self.decoupled = layout, tuple(cell_group), width, decoupled
        if len(self.cell_group) != layout.layers:
            raise ValueError(f"grouping: expected a group for each of the {layout.layers} units")
        self.groups = []
        for g, name in enumerate(group_names):
            units = self.cells_of(g)
            if not units:
                raise ValueError(f"grouping: group {name!r} has no unit in space {self.space_name!r}; use grouping "
                                 "per_cell_type (the space's own groups) or per_cell")
            if len({layout.primitives[u] for u in units}) != 1:
                raise ValueError(f"grouping: group {name!r} mixes units with different ops in space "
                                 f"{self.space_name!r}; use grouping per_cell_type or per_cell")
            self.groups.append(AlphaGroup(name, tuple((u, u + 1) for u in units), (layout.primitives[units[0]],)
                                          * len(units)))
        if any(not 0 <= g < len(self.groups) for g in self.cell_group):
            raise ValueError(f"grouping: space {self.space_name!r} has units of types {sorted(set(layout.types))}; "
                             f"the grouping names only {len(self.groups)} group(s): use grouping per_cell_type")
        self.active = [tuple(range(len(p))) for p in layout.primitives]

    def cells_of(self, group: int) -> list[int]:
        return [i for i, g in enumerate(self.cell_group) if g == group]

    def unit_weights(self, group_weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Mixing weights of every unit (its row of its group), masked ops at 0."""
        out = []
        for u, g in enumerate(self.cell_group):
            w = group_weights[g][self.cells_of(g).index(u)][: len(self.layout.primitives[u])]
            if len(self.active[u]) < len(w):
                keep = torch.zeros_like(w)
                keep[list(self.active[u])] = 1.0
                w = w * keep
            out.append(w)
        return out

    def flux(self, currents: torch.Tensor, unit_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.decoupled:
            return torch.cat([self.chain(self.f2, currents[:, :1], unit_weights),
                              self.chain(self.f1, currents[:, 1:2], unit_weights)], dim=1)
        return self.chain(self.net, currents, unit_weights)

    def chain(self, net: nn.Module, h: torch.Tensor, unit_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, group_weights: Sequence[torch.Tensor]) -> FluxOutput:
        weights = self.unit_weights(group_weights)
        return flux_and_jacobian(lambda currents: self.flux(currents, weights), x)

    # ------------------------------------------------------------------ op masks (CRB)
    def active_ops(self) -> list[list[list[int]]]:
        return [[list(a)] for a in self.active]

    def set_active_ops(self, masks: Sequence[Sequence[Sequence[int]]]) -> None:
        self.active = [tuple(m[0]) for m in masks]

    def mask_group(self, group: int, keep: torch.Tensor) -> None:
        keep = keep.cpu()
        for row, u in enumerate(self.cells_of(group)):
            self.active[u] = tuple(k for k in self.active[u] if bool(keep[row, k]))

    def group_active(self, group: int) -> torch.Tensor:
        units = self.cells_of(group)
        out = torch.zeros(len(units), len(self.layout.primitives[units[0]]), dtype=torch.bool)
        for row, u in enumerate(units):
            out[row, list(self.active[u])] = True
        return out

    def choices_per_unit(self, choices: Sequence[Sequence[str]]) -> list[str]:
        """The op chosen for every unit from the discretizer's per-group choices."""
        return [choices[g][self.cells_of(g).index(u)] for u, g in enumerate(self.cell_group)]


def _mixed_chain_modules(in_dim: int, out_dim: int, width: int, n_mixed: int) -> nn.Module:
    module = nn.Module()
    module.inp = nn.Linear(in_dim, width)
    module.mixed = nn.ModuleList(nn.Linear(width, width) for _ in range(n_mixed))
    module.out = nn.Linear(width, out_dim)
    return module


class DepthSupernet(ChainSupernet):
    """Step 1: input Linear+ReLU, N mixed layers w0 * ReLU(Linear(h)) + w1 * h, output Linear."""

    space_name = "pmsm-depth"

    def __init__(self, layout: ChainLayout, cell_group: Sequence[int], group_names: Sequence[str], width: int,
                 decoupled: bool, placeholder: str = "relu"):
        super().__init__(layout, cell_group, group_names, width, decoupled)
        self.placeholder = placeholder
        self.act = activation_fn(ActivationSpec.named(placeholder))
        n = layout.layers
        if decoupled:
            self.f2, self.f1 = _mixed_chain_modules(1, 1, width, n), _mixed_chain_modules(1, 1, width, n)
        else:
            self.net = _mixed_chain_modules(2, 2, width, n)

    def chain(self, net: nn.Module, h: torch.Tensor, unit_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        h = self.act(net.inp(h))
        for layer, w in zip(net.mixed, unit_weights, strict=True):
            h = w[0] * self.act(layer(h)) + w[1] * h
        return net.out(h)

    def genotype(self, choices: Sequence[Sequence[str]]) -> Genotype:
        ops = self.choices_per_unit(choices)
        kept = sum(op != "identity" for op in ops)
        return FluxMlpGenotype(1 + kept, self.width, ActivationSpec.named(self.placeholder), self.decoupled,
                               {"space": self.space_name, "mixed_layers": list(ops),
                                "note": f"{self.placeholder} is step 1's placeholder activation; step 2 "
                                        "(pmsm-activation) searches the activation"})


class ActivationSupernet(ChainSupernet):
    """Step 2: ``layers`` hidden layers, each followed by the mixed activation (one global A)."""

    space_name = "pmsm-activation"

    def __init__(self, layout: ChainLayout, cell_group: Sequence[int], group_names: Sequence[str], width: int,
                 decoupled: bool, hidden_layers: int):
        super().__init__(layout, cell_group, group_names, width, decoupled)
        self.hidden_layers = hidden_layers
        if decoupled:
            self.f2, self.f1 = (Chain(1, 1, hidden_layers, width, torch.relu),
                                Chain(1, 1, hidden_layers, width, torch.relu))
        else:
            self.net = Chain(2, 2, hidden_layers, width, torch.relu)

    def chain(self, net: nn.Module, h: torch.Tensor, unit_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        wb, wu1, wu2 = unit_weights
        for layer in net.hidden:
            h = mixed_activation(layer(h), wb, wu1, wu2)
        return net.out(h)

    def genotype(self, choices: Sequence[Sequence[str]]) -> Genotype:
        b, u1, u2 = self.choices_per_unit(choices)
        return FluxMlpGenotype(self.hidden_layers, self.width, ActivationSpec(b, u1, u2), self.decoupled,
                               {"space": self.space_name})


# ------------------------------------------------------------------ the registered spaces
@dataclass(frozen=True)
class DepthSpace:
    name: str
    description: str
    decoupled: bool = False
    network_defaults: Any = None
    row_kind = "layer"  # a row of alphas is a layer of the chain (a discretizer must parse layers)
    placeholder: str = "relu"

    def layout(self, config: Any) -> ChainLayout:
        ops = (f"linear_{self.placeholder}", "identity")
        return ChainLayout((ops,) * int(config.layers), (0,) * int(config.layers), ("depth",))

    def supernet(self, layout: ChainLayout, cell_group: Sequence[int], group_names: Sequence[str], config: Any
                 ) -> DepthSupernet:
        supernet = DepthSupernet(layout, cell_group, group_names, int(config.C), self.decoupled, self.placeholder)
        supernet.space_name = self.name
        return supernet


@dataclass(frozen=True)
class ActivationSpace:
    name: str
    description: str
    decoupled: bool = False
    network_defaults: Any = None
    row_kind = "layer"  # a row of alphas is a layer of the chain (a discretizer must parse layers)

    def layout(self, config: Any) -> ChainLayout:
        return ChainLayout((BINARY_OPS, UNARY_OPS, UNARY_OPS), (0, 1, 2), ("binary", "unary1", "unary2"))

    def supernet(self, layout: ChainLayout, cell_group: Sequence[int], group_names: Sequence[str], config: Any
                 ) -> ActivationSupernet:
        supernet = ActivationSupernet(layout, cell_group, group_names, int(config.C), self.decoupled,
                                      int(config.layers))
        supernet.space_name = self.name
        return supernet


#: the spaces of the flux model (registered by :mod:`dartboard.spaces.catalog`): step 1's depth search with each
#: placeholder activation, step 2's activation-function search, each also decoupled
PMSM_SPACES: list[DepthSpace | ActivationSpace] = []
for _decoupled, _suffix in ((False, ""), (True, "-decoupled")):
    _form = " (decoupled: lambda_d = f2(I_d), lambda_q = f1(I_q), Eq 6.12)" if _decoupled else ""
    for _act in PLACEHOLDERS:
        _name = "pmsm-depth" + ("" if _act == "relu" else f"-{_act}") + _suffix
        PMSM_SPACES.append(DepthSpace(_name, f"PMSM flux model, step 1: N = layers mixed layers of {{Linear+{_act}, "
                                      f"Identity}}, width C{_form}", _decoupled, {}, _act))
    PMSM_SPACES.append(ActivationSpace(f"pmsm-activation{_suffix}", "PMSM flux model, step 2: A(x) = B(U1(x), "
                                       f"U2(x)) after each of the layers hidden layers, width C{_form}",
                                       _decoupled, {}))
