"""Searcher registry: every searcher is a preset of the one engine, addressable by name
(timm-style). ``build_searcher(name, options, shape, device)`` applies the user's options to
the preset (:mod:`dartboard.searchers.compose`) and returns a ready searcher; unknown options
are refused with the option's name and the accepted ones. Listing the searchers and their
defaults imports no torch (the engine is imported when a searcher is built or its options are
asked for): a study's trial actor reads the defaults only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dartboard.collector import collector_paused
from dartboard.registries import Registry
from dartboard.searchers.presets import PRESETS, Preset

if TYPE_CHECKING:
    from dartboard.searchers.engine import Engine


@dataclass(frozen=True)
class DataShape:
    in_channels: int
    input_size: int
    num_classes: int


@dataclass(frozen=True)
class SearcherSpec:
    """A searcher by name: a preset of the one engine, or (``factory``) a searcher that is not a bilevel
    cell search but speaks the same Searcher protocol (DARIO's single-level gate search), built by
    ``factory(options, shape, device)`` with the preset's options as the accepted ones."""

    name: str
    preset: Preset
    factory: Callable[[Mapping[str, Any], DataShape, str], Any] | None = None

    @property
    def description(self) -> str:
        return self.preset.description

    @property
    def defaults(self) -> Mapping[str, Any]:
        return self.preset.options

    @property
    def options(self) -> tuple[str, ...]:
        """Accepted top-level option names (for validation and sweeps)."""
        if self.factory is not None:
            return tuple(self.preset.options)
        from dartboard.searchers.compose import option_names

        return option_names(self.preset.aliases)

    @property
    def small_data_defaults(self) -> Mapping[str, Any] | None:
        return self.preset.small_data_defaults


SEARCHERS: Registry[SearcherSpec] = Registry("searcher")
for _name, _preset in PRESETS.items():
    SEARCHERS.add(_name, SearcherSpec(_name, _preset))


def _dario(options: Mapping[str, Any], shape: DataShape, device: str) -> Any:
    from dartboard.searchers.dario.study import DarioStudySearcher

    return DarioStudySearcher(dict(options), shape.in_channels, shape.input_size, shape.num_classes, device)


def _register_dario() -> None:
    from dartboard.searchers.dario_options import DARIO_STUDY_DEFAULTS  # data: the searcher is imported when built

    preset = Preset("DARIO (thesis ch. 6, Algorithm 5): data-agnostic pruning of a ViT's blocks/heads by a "
                    "zero-cost proxy; pre-trains a small local ViT first unless given a checkpoint",
                    dict(DARIO_STUDY_DEFAULTS), small_data_defaults={})
    SEARCHERS.add("dario", SearcherSpec("dario", preset, _dario))


_register_dario()


def get_searcher_spec(name: str) -> SearcherSpec:
    return SEARCHERS.lookup(name)


def build_searcher(name: str, options: Mapping[str, Any] | None, shape: DataShape, device: str = "cpu") -> Engine:
    """The searcher ``name`` (a preset or a registered searcher) with ``options`` (None: its defaults) on data of
    ``shape``; options it does not have, or values it cannot use, are a ``ValueError`` naming the searcher."""
    spec = get_searcher_spec(name)
    if options is None:
        options = {}
    elif not isinstance(options, Mapping):
        raise ValueError(f"searcher {name!r}: options: expected a mapping of option names to values, got {options!r}")
    with collector_paused():  # thousands of modules, none of them garbage (dartboard/collector.py)
        return _build(name, spec, options, shape, device)


def _build(name: str, spec: SearcherSpec, options: Mapping[str, Any], shape: DataShape, device: str) -> Engine:
    if spec.factory is not None:
        try:
            return spec.factory(dict(options), shape, device)
        except ValueError as err:
            raise ValueError(f"searcher {name!r}: {err}") from None
    from dartboard.searchers.compose import build_engine

    platform = {"num_classes": shape.num_classes, "in_channels": shape.in_channels, "input_size": shape.input_size,
                "device": device}
    try:
        return build_engine(name, spec.preset.options, dict(options), platform, spec.preset.aliases)
    except ValueError as err:
        raise ValueError(f"searcher {name!r}: {err}") from None
