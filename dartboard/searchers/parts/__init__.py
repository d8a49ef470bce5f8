"""The named parts a search is composed of (DESIGN.md, "the one idea").

Every kind of part has a :class:`PartRegistry`: a name -> factory table whose factories take
the part's options as keyword arguments. A part is given as a name or as a mapping
``{"name": ..., **options}``; an unknown name or option is refused with an error that names
it and lists the known ones (no ``**kwargs`` swallows a typo).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from dartboard.registries import Registry
from dartboard.searchers.config import is_int, is_number

PartSpec = str | Mapping[str, Any]


def split_spec(kind: str, spec: PartSpec) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``{"name": ..., **options}`` -> (name, options)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        return spec["name"], {k: v for k, v in spec.items() if k != "name"}
    raise ValueError(f"{kind}: expected a name or a mapping with a 'name', got {spec!r}")


def accepted_options(factory: Callable[..., Any], skip: int = 0) -> list[str]:
    params = list(inspect.signature(factory).parameters.values())[skip:]
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        raise TypeError(f"{factory!r}: a part factory lists its options by name (no *args/**kwargs)")
    return [p.name for p in params]


class PartRegistry(Registry[Callable[..., Any]]):
    """Parts of one kind. ``skip``: leading positional parameters that are not options
    (a discretizer's weights, rows and primitives)."""

    def __init__(self, kind: str, skip: int = 0):
        super().__init__(kind)
        self.skip = skip

    def add(self, name: str, value: Callable[..., Any]) -> Callable[..., Any]:
        accepted_options(value, self.skip)  # refuse **kwargs at registration
        return super().add(name, value)

    def options(self, name: str) -> list[str]:
        return accepted_options(self.lookup(name), self.skip)

    def check(self, spec: PartSpec) -> tuple[str, dict[str, Any]]:
        name, options = split_spec(self.kind, spec)
        accepted = self.options(name)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
                             f"its options: {', '.join(accepted) or '(none)'}")
        return name, options

    def build(self, spec: PartSpec) -> Any:
        name, options = self.check(spec)
        try:
            return self.lookup(name)(**options)
        except ValueError as err:  # an option's value: said with the part it belongs to
            if type(err) is not ValueError:
                raise
            raise ValueError(f"{self.kind} {name!r}: {err}") from None


def number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
           integer: bool = False) -> Any:
    """A part's numeric option checked: a finite number (an integer where ``integer``) within [low, high], else
    a ValueError naming the option and what it takes (a string from --set, a bool, a NaN are refused too)."""
    what = "an integer" if integer else "a number"
    if low is not None and high is not None:
        what += f" in [{low:g}, {high:g}]"
    elif low is not None:
        what += f" >= {low:g}"
    ok = is_int(value) or (is_number(value) and (not integer or float(value).is_integer()))  # 10.0 is one, 1.5 not
    if not ok or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(value) if integer else float(value)
