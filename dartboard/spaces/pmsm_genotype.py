"""The ``flux_mlp`` genotype: a PMSM flux model (thesis 6.2), torch-free.

    {"schema": "dartboard.genotype", "version": 1, "kind": "flux_mlp",
     "hidden_layers": 3, "width": 16, "decoupled": false,
     "activation": {"binary": "add", "unary1": "exp", "unary2": "max0"},
     "meta": {...}}

An MLP ``(I_d, I_q) -> (lambda_d, lambda_q)`` with ``hidden_layers`` hidden layers of ``width``
units, each followed by the activation ``A(x) = B(U1(x), U2(x))`` (thesis 6.2.2); ``decoupled``:
two scalar networks ``lambda_d = f2(I_d)``, ``lambda_q = f1(I_q)`` (Eq 6.12) instead of one.
The names of the primitives (and their formulas) are here; their torch code is in
:mod:`dartboard.spaces.pmsm`. Plain activations are compositions too: ReLU is
``mask(max0, .)``, tanh ``mask(tanh, .)`` (``mask(x, y) = x``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dartboard.spaces.genotype import GenotypeError, register_kind

KIND = "flux_mlp"

#: binary primitives B(x, y) of the activation space, with their formula
BINARY: dict[str, str] = {"add": "{x} + {y}", "prod": "{x} * {y}", "sub": "{x} - {y}", "max": "max({x}, {y})",
                          "min": "min({x}, {y})", "mask": "{x}"}
#: unary primitives U(x), with their formula
UNARY: dict[str, str] = {"max0": "max(x, 0)", "min0": "min(x, 0)", "exp": "exp(x)", "tanh": "tanh(x)", "x": "x",
                         "abs": "|x|", "sin": "sin(x)", "cos": "cos(x)", "one": "1", "square": "x^2"}
#: plain activations by name, as compositions
NAMED_ACTIVATIONS: dict[str, tuple[str, str, str]] = {"relu": ("mask", "max0", "x"), "tanh": ("mask", "tanh", "x")}
MAX_HIDDEN_LAYERS = 64
MAX_WIDTH = 4096


@dataclass(frozen=True)
class ActivationSpec:
    binary: str = "mask"
    unary1: str = "max0"
    unary2: str = "x"

    def formula(self) -> str:
        """``A(x)`` as a formula, reduced where both unaries are one: ``max(u, u)`` and ``min(u, u)`` are ``u``,
        ``u - u`` is ``0`` (a search picks the binary and each unary apart, so such pairs do come out)."""
        u1, u2 = UNARY[self.unary1], UNARY[self.unary2]
        if self.unary1 == self.unary2 and self.binary in ("max", "min"):
            return u1
        if self.unary1 == self.unary2 and self.binary == "sub":
            return "0"
        return BINARY[self.binary].format(x=u1, y=u2)

    @classmethod
    def named(cls, name: str) -> ActivationSpec:
        if name not in NAMED_ACTIVATIONS:
            raise GenotypeError(f"activation: unknown activation {name!r}; named ones: {', '.join(NAMED_ACTIVATIONS)} "
                                "(or {binary, unary1, unary2})")
        return cls(*NAMED_ACTIVATIONS[name])


@dataclass(frozen=True)
class FluxMlpGenotype:
    hidden_layers: int
    width: int = 16
    activation: ActivationSpec = ActivationSpec()
    decoupled: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)
    kind: str = field(default=KIND, init=False)

    def describe(self) -> str:
        shape = "two scalar MLPs f2(I_d), f1(I_q)" if self.decoupled else "MLP (I_d, I_q) -> (lambda_d, lambda_q)"
        return (f"{shape}: {self.hidden_layers} hidden layer(s) of {self.width} units, "
                f"activation A(x) = {self.activation.formula()}")


def encode(g: FluxMlpGenotype) -> dict[str, Any]:
    a = g.activation
    return {"hidden_layers": g.hidden_layers, "width": g.width, "decoupled": g.decoupled,
            "activation": {"binary": a.binary, "unary1": a.unary1, "unary2": a.unary2}, "meta": dict(g.meta)}


def _int_in(data: Mapping[str, Any], key: str, default: Any, low: int, high: int) -> int:
    value = data.get(key, default)
    if value is None:
        raise GenotypeError(f"{key}: missing field")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GenotypeError(f"{key}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def _activation(raw: Any) -> ActivationSpec:
    if isinstance(raw, str):
        return ActivationSpec.named(raw)
    if not isinstance(raw, Mapping):
        raise GenotypeError(f"activation: expected a name ({', '.join(NAMED_ACTIVATIONS)}) or an object "
                            f"{{binary, unary1, unary2}}, got {raw!r}")
    unknown = sorted(set(raw) - {"binary", "unary1", "unary2"})
    if unknown:
        raise GenotypeError(f"activation: unknown field {', '.join(map(repr, unknown))}; "
                            "fields: binary, unary1, unary2")
    for key, table in (("binary", BINARY), ("unary1", UNARY), ("unary2", UNARY)):
        if key not in raw:
            raise GenotypeError(f"activation.{key}: missing field")
        if raw[key] not in table:
            raise GenotypeError(f"activation.{key}: unknown primitive {raw[key]!r}; known: {', '.join(table)}")
    return ActivationSpec(raw["binary"], raw["unary1"], raw["unary2"])


def decode(data: Mapping[str, Any]) -> FluxMlpGenotype:
    known = {"schema", "version", "kind", "hidden_layers", "width", "decoupled", "activation", "meta"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise GenotypeError(f"{KIND}: unknown field {', '.join(map(repr, unknown))}; "
                            f"fields: {', '.join(sorted(known))}")
    hidden = _int_in(data, "hidden_layers", None, 1, MAX_HIDDEN_LAYERS)
    width = _int_in(data, "width", 16, 1, MAX_WIDTH)
    decoupled = data.get("decoupled", False)
    if not isinstance(decoupled, bool):
        raise GenotypeError(f"decoupled: expected true or false, got {decoupled!r}")
    meta = data.get("meta", {})
    if not isinstance(meta, Mapping):
        raise GenotypeError(f"meta: expected an object, got {meta!r}")
    return FluxMlpGenotype(hidden, width, _activation(data.get("activation", "relu")), decoupled, dict(meta))


register_kind(KIND, FluxMlpGenotype, encode, decode)
