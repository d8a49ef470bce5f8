"""From a preset and the user's options to a running engine: the one builder of every search.

Options are one flat mapping (a YAML ``options:`` block, ``--set KEY=VALUE`` flags, a
study's sampled hyperparameters). A key is one of:

- a field of :class:`~dartboard.searchers.config.EngineConfig` (``arch_lr``, ``C``, ``order``, ...);
- a part kind (``activation``, ``schedule``, ``discretizer``, ...; see :data:`PART_KINDS`), given as
  a name or ``{name: ..., **options}``; the list kinds ``regularizers`` and ``hooks`` take a list
  of those. A part given here replaces the preset's;
- ``<kind>_options``: options merged into a singular part (``schedule_options: {k: 5}``);
- a dotted path to one part option: ``discretizer.sigma_threshold``, ``schedule.k``,
  ``regularizers.zero_one.weight``, ``hooks.rdarts.mode`` (sweepable like any key), or to one
  option of the space: ``space_options.colour_model``;
- a preset's alias for such a path (D-DARTS: ``w01`` is ``regularizers.zero_one.weight``).

Unknown keys, parts and part options are refused with the known ones listed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from dartboard.searchers.config import EngineConfig
from dartboard.searchers.discretize import DISCRETIZERS, build_discretizer
from dartboard.searchers.engine import Engine, Parts
from dartboard.searchers.parts import PartRegistry, split_spec
from dartboard.searchers.parts.ablation import Ablation  # noqa: F401  (registers the regularizer)
from dartboard.searchers.parts.activations import ACTIVATIONS
from dartboard.searchers.parts.arch_optimizers import ARCH_OPTIMIZERS
from dartboard.searchers.parts.groupings import GROUPINGS
from dartboard.searchers.parts.hooks import HOOKS
from dartboard.searchers.parts.inits import ALPHA_INITS
from dartboard.searchers.parts.oneshot import ONESHOT_PARTS  # noqa: F401  (registers the one-shot methods' parts)
from dartboard.searchers.parts.pmsm import FluxCriterion  # noqa: F401  (registers the PMSM parts)
from dartboard.searchers.parts.rdarts import RDartsHook  # noqa: F401  (registers the hook)
from dartboard.searchers.parts.regularizers import REGULARIZERS
from dartboard.searchers.parts.schedules import SCHEDULES
from dartboard.searchers.parts.seams import MIXED_OPS, OBJECTIVES, PERTURBATIONS
from dartboard.searchers.parts.siamese import SimSiam  # noqa: F401  (registers the NASiam parts)

#: Singular part kinds: registry and the DARTS choice.
PART_KINDS: dict[str, tuple[PartRegistry, str]] = {
    "grouping": (GROUPINGS, "normal_reduce"),
    "alpha_init": (ALPHA_INITS, "randn"),
    "activation": (ACTIVATIONS, "softmax"),
    "arch_optimizer": (ARCH_OPTIMIZERS, "adam"),
    "schedule": (SCHEDULES, "alternate"),
    "perturbation": (PERTURBATIONS, "none"),
    "mixed_op": (MIXED_OPS, "none"),
    "discretizer": (DISCRETIZERS, "darts"),
    "objective": (OBJECTIVES, "classification"),
}
#: Part kinds that take a list.
LIST_KINDS: dict[str, PartRegistry] = {"regularizers": REGULARIZERS, "hooks": HOOKS}
#: Set by the platform from the data set, never by the user.
PLATFORM_FIELDS = ("num_classes", "in_channels", "input_size", "device")
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(EngineConfig) if f.name not in PLATFORM_FIELDS)


def option_names(aliases: Mapping[str, str] = {}) -> tuple[str, ...]:  # noqa: B006  (read only)
    """Every top-level option a search accepts (dotted paths aside)."""
    return (CONFIG_FIELDS + tuple(PART_KINDS) + tuple(f"{k}_options" for k in PART_KINDS) + tuple(LIST_KINDS)
            + tuple(aliases))


def _as_mapping(kind: str, spec: Any) -> dict[str, Any]:
    name, options = split_spec(kind, spec)
    return {"name": name, **options}


def _set_path(specs: dict[str, Any], path: str, value: Any) -> None:
    """One option by its path: ``<part>.<option>``, ``<regularizers|hooks>.<name>.<option>`` or, as a study's params
    name it, ``<regularizers|hooks>[<name>].<option>``."""
    listed = re.fullmatch(r"(regularizers|hooks)\[([^\]]+)\]\.([^.]+)", path)
    head, _, rest = (f"{listed[1]}.{listed[2]}.{listed[3]}" if listed else path).partition(".")
    if head in PART_KINDS and rest and "." not in rest:
        specs[head] = {**_as_mapping(head, specs[head]), rest: value}
        return
    if head in LIST_KINDS and rest.count(".") == 1:
        name, option = rest.split(".")
        entries = [_as_mapping(head, s) for s in specs[head]]
        hits = [i for i, e in enumerate(entries) if e["name"] == name]
        if len(hits) != 1:
            present = ", ".join(e["name"] for e in entries) or "none"
            raise ValueError(f"{path}: this search has {'no' if not hits else 'several'} {head} named {name!r} "
                             f"(its {head}: {present})")
        entries[hits[0]][option] = value
        specs[head] = entries
        return
    raise ValueError(f"{path}: a dotted option is <part>.<option> ({', '.join(PART_KINDS)}) or "
                     f"<regularizers|hooks>.<name>.<option> (or <regularizers|hooks>[<name>].<option>)")


def resolve(preset: Mapping[str, Any], options: Mapping[str, Any], aliases: Mapping[str, str] = {}  # noqa: B006
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config fields, part specs) of ``preset`` with the user's ``options`` applied."""
    merged = {**preset, **options}
    known = option_names(aliases)
    unknown = sorted(k for k in merged if "." not in k and k not in known)
    if unknown:
        raise ValueError(f"unknown option {', '.join(map(repr, unknown))}; options: {', '.join(known)} "
                         f"(or a dotted path such as discretizer.sigma_threshold)")
    config, specs = _whole_parts(merged)
    _merge_part_options(merged, specs)
    for key, value in merged.items():  # then single options by path
        path = aliases.get(key, key if "." in key else None)
        if path is not None and path.startswith("space_options."):  # one option of the space (ColorNAS)
            config["space_options"] = {**(config.get("space_options") or {}), path.partition(".")[2]: value}
        elif path is not None:
            _set_path(specs, path, value)
    return config, specs


def _whole_parts(merged: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Config fields and whole parts (the defaults where neither preset nor user gives one)."""
    specs: dict[str, Any] = {kind: default for kind, (_, default) in PART_KINDS.items()}
    specs.update({kind: [] for kind in LIST_KINDS})
    config: dict[str, Any] = {}
    for key, value in merged.items():  # whole parts and config fields first
        if key in LIST_KINDS:
            specs[key] = _part_list(key, value)
        elif key in PART_KINDS:
            specs[key] = value
        elif key in CONFIG_FIELDS:
            config[key] = value
    return config, specs


def _part_list(kind: str, value: Any) -> list[Any]:
    """``regularizers`` / ``hooks``: a list of names or ``{"name": ..., **options}`` mappings. A single name
    or a mapping is refused (``list()`` would read a name's letters or a mapping's keys)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{kind}: expected a list of names or {{name: ..., options}} mappings, such as "
                         f"[{{name: zero_one, weight: 10}}], got {value!r}")
    return list(value)


def _merge_part_options(merged: Mapping[str, Any], specs: dict[str, Any]) -> None:
    for key, value in merged.items():
        if key.endswith("_options") and key[: -len("_options")] in PART_KINDS:
            kind = key[: -len("_options")]
            if not isinstance(value, Mapping):
                raise ValueError(f"{key}: expected a mapping of {kind} options, got {value!r}")
            specs[kind] = {**_as_mapping(kind, specs[kind]), **value}


def build_parts(specs: Mapping[str, Any]) -> Parts:
    built = {kind: registry.build(specs[kind]) for kind, (registry, _) in PART_KINDS.items() if kind != "discretizer"}
    return Parts(**built, discretizer=build_discretizer(specs["discretizer"]),
                 regularizers=[REGULARIZERS.build(s) for s in specs["regularizers"]],
                 hooks=[HOOKS.build(s) for s in specs["hooks"]])


def build_engine(name: str, preset: Mapping[str, Any], options: Mapping[str, Any], platform: Mapping[str, Any],
                 aliases: Mapping[str, str] = {}) -> Engine:  # noqa: B006
    """The engine of ``preset`` + ``options``; ``platform``: the data shape and the device."""
    config, specs = resolve(preset, options, aliases)
    try:
        engine_config = EngineConfig(**config, **platform)
    except TypeError as err:  # a value of the wrong kind, e.g. arch_betas=3
        raise ValueError(f"bad option value: {err}") from None
    return Engine(engine_config, build_parts(specs), name)
