"""The ``colornas`` genotype kind (thesis appendix A): one cell genotype (``darts`` or ``cells``) per
channel of a colour model, the RGBY yellow form, and the hidden widths of the MLP meta-learner on the
channels' concatenated pooled features. Registered with :func:`dartboard.spaces.genotype.register_kind`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dartboard.spaces.genotype import (  # the shared validators keep every kind's messages alike
    VERSION,
    CellsGenotype,
    DartsGenotype,
    GenotypeError,
    _int_list,
    _require,
    from_dict,
    register_kind,
    to_dict,
)


@dataclass(frozen=True)
class ColourGenotype:
    """ColorNAS: ``channels[i]`` is the cell genotype of the network of the colour model's channel i
    (``colour_model``: rb, rgb, rgby; ``yellow``: RGBY's yellow form), ``meta_hidden`` the hidden
    widths of the meta-learner."""

    colour_model: str
    channels: tuple[DartsGenotype | CellsGenotype, ...]
    meta_hidden: tuple[int, ...]
    yellow: str = "printed"
    kind: str = field(default="colornas", init=False)


def _encode(genotype: ColourGenotype) -> dict[str, Any]:
    from dartboard.spaces.colour import colour_model_spec

    names = colour_model_spec(genotype.colour_model).channels
    return {"colour_model": genotype.colour_model, "yellow": genotype.yellow,
            "channels": [{"name": n, **{k: v for k, v in to_dict(c).items() if k not in ("schema", "version")}}
                         for n, c in zip(names, genotype.channels, strict=True)],
            "meta_learner": {"hidden": list(genotype.meta_hidden)}}


def _decode(data: Mapping[str, Any]) -> ColourGenotype:
    from dartboard.spaces.colour import YELLOWS, colour_model_spec

    model = _require(data, "colour_model", "")
    try:
        names = colour_model_spec(model).channels
    except ValueError as err:
        raise GenotypeError(str(err)) from None
    yellow = data.get("yellow", "printed")
    if yellow not in YELLOWS:
        raise GenotypeError(f"yellow: expected one of {', '.join(YELLOWS)}, got {yellow!r}")
    raw = _require(data, "channels", "")
    if not isinstance(raw, list) or len(raw) != len(names):
        got = f"{len(raw)} channels" if isinstance(raw, list) else repr(raw)
        raise GenotypeError(f"channels: colour model {model!r} has {len(names)} channels ({', '.join(names)}), "
                            f"got {got}")
    channels = []
    for i, (name, ch) in enumerate(zip(names, raw, strict=True)):
        if not isinstance(ch, Mapping) or ch.get("name") != name or ch.get("kind") not in ("darts", "cells"):
            raise GenotypeError(f"channels[{i}]: expected a darts or cells genotype named {name!r}")
        try:  # a channel is a cell genotype, checked against the cell op registry
            channels.append(from_dict({k: v for k, v in ch.items() if k != "name"} | {"version": VERSION}))
        except GenotypeError as err:
            raise GenotypeError(f"channels[{i}] ({name}).{err}") from None
    hidden = _int_list(_require(_require(data, "meta_learner", ""), "hidden", "meta_learner"), "meta_learner.hidden")
    if any(h < 1 for h in hidden):
        raise GenotypeError(f"meta_learner.hidden: expected widths >= 1, got {list(hidden)}")
    return ColourGenotype(model, tuple(channels), hidden, yellow)


register_kind("colornas", ColourGenotype, _encode, _decode)
