"""One small registry type for every named thing (ops, activations, discretizers, spaces,
catalog genotypes): a dict that refuses duplicates and names the known entries on a miss."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dartboard.errors import UserInputError

T = TypeVar("T")


class Registry(dict[str, T]):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, name: str, value: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = value
        return value

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda value: self.add(name, value)

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            known = ", ".join(sorted(self))
            raise UserInputError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None
