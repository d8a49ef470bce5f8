"""Ray's usage record of a run's callbacks, without the imports Ray makes to take it.

``Tuner.fit`` records which callbacks a run has (``ray.air._internal.usage.tag_callbacks``: a count per Ray
built-in callback class, the others as ``CustomCallback`` or ``CustomLoggerCallback``). To know the built-in
classes it imports Ray's logger integrations, MLflow's, W&B's, Comet's and Aim's among them: 0.9 s of CPU in the
driver before the first trial of every study, on 2 cores that are busy starting Ray and the first trials. A
study's callbacks are dartboard's own (``trial.TrialCallback``), none of them one of Ray's built-ins, so their
record is the custom counts, which :func:`light_callback_usage` writes the way Ray writes it. A list with a
callback named like one of Ray's built-ins gets Ray's own count."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: Ray's built-in callback classes that ``_count_callbacks`` counts by name (its logger integrations and Tune's
#: default loggers); a callback with one of these names gets Ray's own count.
RAY_CALLBACK_NAMES = frozenset({"WandbLoggerCallback", "MLflowLoggerCallback", "CometLoggerCallback",
                                "AimLoggerCallback", "CSVLoggerCallback", "JsonLoggerCallback", "TBXLoggerCallback"})


def custom_callback_counts(callbacks: Sequence[Any]) -> dict[str, int] | None:
    """Ray's count of ``callbacks`` where none is one of Ray's built-ins: ``{"CustomCallback": n,
    "CustomLoggerCallback": m}`` (non-callbacks left out, as Ray does); None where one has a built-in's name (Ray
    tells them by name alone)."""
    from ray.tune import Callback
    from ray.tune.logger import LoggerCallback

    counts: Counter[str] = Counter()
    for callback in callbacks:
        if type(callback).__name__ in RAY_CALLBACK_NAMES:
            return None
        if isinstance(callback, Callback):
            counts["CustomLoggerCallback" if isinstance(callback, LoggerCallback) else "CustomCallback"] += 1
    return dict(counts)


@contextmanager
def light_callback_usage() -> Iterator[None]:
    """Inside the block (around ``Tuner.fit``), Ray's ``tag_callbacks`` records dartboard's callbacks without
    importing Ray's logger integrations; outside it, Ray's own is back. A Ray release that moved it runs its own."""
    try:
        from ray.air._internal import usage
    except ImportError:
        yield
        return
    ray_tag = getattr(usage, "tag_callbacks", None)
    record, key = getattr(usage, "record_extra_usage_tag", None), getattr(usage, "TagKey", None)
    if ray_tag is None or record is None or not hasattr(key, "AIR_CALLBACKS"):
        yield
        return

    def tag_callbacks(callbacks: Sequence[Any] | None) -> bool:
        if not callbacks:
            return False
        counts = custom_callback_counts(callbacks)
        if counts is None:
            return ray_tag(callbacks)
        if counts:
            record(key.AIR_CALLBACKS, json.dumps(counts))
        return bool(counts)

    usage.tag_callbacks = tag_callbacks
    try:
        yield
    finally:
        usage.tag_callbacks = ray_tag
