"""Building a network with Python's cyclic garbage collector paused.

A supernet is thousands of modules, each a handful of dicts; building one allocates tens of thousands of
container objects that all survive. Each 700 allocations start a collection of the youngest generation, and the
survivors soon start full collections, each of which walks every object the process holds (torch's, the other
libraries', the networks built before): measured, about a third of the time of building DARTS' tiny supernet and
taking its first step (``benchmarks/HISTORY.md``). Nothing the build allocates is garbage, so the collector has
nothing to find there; it runs again once the build is over.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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
