"""Python's cyclic garbage collector, run less often where dartboard allocates much and frees little.

A collection of the oldest generation walks every object the process holds (torch's, Ray's, MLflow's, the networks
built so far: half a million in a search command), and it starts whenever the objects that survived younger
collections reach a quarter of those it holds. Importing the libraries and building a supernet allocate hundreds of
thousands of container objects that all survive, so with Python's default thresholds a one-epoch digits search ran 8
of those collections and spent 11-13 % of its CPU time in the collector (``benchmarks/HISTORY.md``). Two remedies:

- :func:`collector_paused` around a build: a supernet is thousands of modules, each a handful of dicts, none of them
  garbage, so the collector has nothing to find there; it runs again once the build is over;
- :func:`collect_less_often` in a process that runs a command or a Ray Train worker: the youngest generation is
  collected every 10,000 allocations instead of every 700, so the survivors of the imports reach the oldest
  generation in far fewer, larger steps. Reference counting frees objects as always; only garbage in reference
  cycles waits longer (up to 10,000 allocations more).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: The collector's thresholds in a command's or a Train worker's process (Python's default: 700, 10, 10).
THRESHOLDS = (10_000, 10, 10)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the ``with`` block; enabled again after it if it was enabled
    before (a caller that disabled it keeps it disabled). Reference counting frees objects as always."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def collect_less_often() -> None:
    """This process's collector at :data:`THRESHOLDS`, unless its youngest generation's threshold is already as
    high (a caller's own setting is kept)."""
    if gc.get_threshold()[0] < THRESHOLDS[0]:
        gc.set_threshold(*THRESHOLDS)
