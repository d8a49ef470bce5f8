"""Searcher registry: every searcher and published preset is a name (timm-style).

A builder takes the user's options (a flat dict of hyperparameters), the dataset's
shape and the device, and returns a ready searcher. Unknown options are refused with
the option's name and the accepted ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dartboard.registries import Registry
from dartboard.searchers.base import Searcher


@dataclass(frozen=True)
class DataShape:
    in_channels: int
    input_size: int
    num_classes: int


Builder = Callable[[dict[str, Any], DataShape, str], Searcher]


@dataclass(frozen=True)
class SearcherSpec:
    name: str
    build: Builder
    description: str
    options: tuple[str, ...] = ()  # accepted option names (for validation and sweeps)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # The scaled-down profile used on small data (digits); None = the platform's default profile.
    small_data_defaults: Mapping[str, Any] | None = None


SEARCHERS: Registry[SearcherSpec] = Registry("searcher")


def register_searcher(name: str, description: str, options: tuple[str, ...] = (),
                      defaults: Mapping[str, Any] | None = None,
                      small_data_defaults: Mapping[str, Any] | None = None) -> Callable[[Builder], Builder]:
    def wrap(build: Builder) -> Builder:
        SEARCHERS.add(name, SearcherSpec(name, build, description, tuple(options), dict(defaults or {}),
                                         None if small_data_defaults is None else dict(small_data_defaults)))
        return build

    return wrap


def get_searcher_spec(name: str) -> SearcherSpec:
    _load_builtin()
    return SEARCHERS.lookup(name)


def check_options(name: str, options: Mapping[str, Any], accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"searcher {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(sorted(accepted))}")


def build_searcher(name: str, options: Mapping[str, Any], shape: DataShape, device: str = "cpu") -> Searcher:
    spec = get_searcher_spec(name)
    opts = {**spec.defaults, **dict(options)}
    check_options(name, opts, spec.options)
    return spec.build(opts, shape, device)


def dataclass_options(cls: type) -> tuple[str, ...]:
    """Option names of a config dataclass, without those the platform sets itself."""
    skip = {"num_classes", "in_channels", "input_size", "device"}
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in skip)


def _load_builtin() -> None:
    """Import the modules that register the built-in searchers."""
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)


BUILTIN_MODULES = ["dartboard.searchers.darts_presets", "dartboard.searchers.ddarts", "dartboard.searchers.dartopti",
                   "dartboard.searchers.presets"]
