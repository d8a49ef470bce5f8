"""Building a searcher costs no garbage collection: the collector is paused while the supernet's modules are built
(spaces/construction.py), and a searcher holds no reference cycle, so that it is freed when its last reference goes
rather than by a full collection that walks every object of the process."""

from __future__ import annotations

import gc
import weakref

import pytest

from dartboard.searchers import registry
from dartboard.searchers.registry import SEARCHERS, DataShape, build_searcher, get_searcher_spec
from dartboard.spaces.construction import collector_paused

SHAPE = DataShape(1, 8, 10)
TINY = {"C": 4, "layers": 2}
#: Searchers whose presets name their own data (applications) or whose supernet is not a cell supernet: built with
#: their own shapes elsewhere (tests/test_checkpoint_all_searchers.py); the cell presets are what this file checks.
OWN_DATA = {name for name, spec in SEARCHERS.items() if spec.preset.dataset is not None} | {"dario", "dartopti"}


@pytest.fixture
def collections():
    """The collections Python's cyclic collector runs while the test runs, by generation."""
    seen: list[int] = []

    def count(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(count)
    try:
        yield seen
    finally:
        gc.callbacks.remove(count)


def test_the_collector_is_paused_in_the_block_and_enabled_after_it_even_on_an_error():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("the build failed")
    assert gc.isenabled()


def test_a_collector_disabled_by_the_caller_stays_disabled():
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_building_a_searcher_runs_no_collection(collections, monkeypatch):
    during: list[int] = []
    build = registry._build

    def recorded(*args, **kwargs):  # the collections between the build's start and its end
        start = len(collections)
        try:
            return build(*args, **kwargs)
        finally:
            during.extend(collections[start:])

    monkeypatch.setattr(registry, "_build", recorded)
    searcher = build_searcher("darts", TINY, SHAPE)
    assert during == [], f"collections of generations {sorted(set(during))} during the build"
    assert gc.isenabled() and searcher.supernet is not None
    # the same build with the collector running does collect: the check above can fail
    start = len(collections)
    build("darts", get_searcher_spec("darts"), TINY, SHAPE, "cpu")
    assert collections[start:], "a supernet's build started no collection: this test could not see one"


@pytest.mark.parametrize("name", sorted(set(SEARCHERS) - OWN_DATA))
def test_a_searcher_is_freed_when_its_last_reference_goes(name):
    spec = get_searcher_spec(name)
    searcher = build_searcher(name, {k: v for k, v in TINY.items() if k in spec.options}, SHAPE)
    engine, supernet = weakref.ref(searcher), weakref.ref(searcher.supernet)
    gc.disable()  # no collection may free it: only reference counting
    try:
        del searcher
        assert engine() is None and supernet() is None, f"{name}: the searcher is kept alive by a reference cycle"
    finally:
        gc.enable()
