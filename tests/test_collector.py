"""Python's cyclic collector run less often (dartboard/collector.py): a command and a Train worker collect their
youngest generation every 10,000 allocations; building a searcher runs no collection (the collector is paused while
the supernet's modules are built); a searcher holds no reference cycle, so that it is freed when its last reference
goes rather than by a full collection that walks every object of the process."""

from __future__ import annotations

import gc
import weakref

import pytest

from dartboard.collector import THRESHOLDS, collect_less_often, collector_paused
from dartboard.searchers import registry
from dartboard.searchers.registry import SEARCHERS, DataShape, build_searcher, get_searcher_spec

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


@pytest.fixture
def default_thresholds():
    """Python's default thresholds for the test, the process's own again after it."""
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_a_command_collects_less_often_and_keeps_a_higher_setting(default_thresholds):
    collect_less_often()
    assert gc.get_threshold() == THRESHOLDS == (10_000, 10, 10)
    gc.set_threshold(50_000, 20, 20)  # a caller's own, higher setting
    collect_less_often()
    assert gc.get_threshold() == (50_000, 20, 20)


def test_the_command_line_sets_the_thresholds_before_its_command_runs(default_thresholds):
    from dartboard.platform.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert gc.get_threshold() == THRESHOLDS


@pytest.mark.parametrize("loop", ["search_job", "final_job"])
def test_a_train_workers_loop_sets_the_thresholds_first(loop, default_thresholds):
    from dartboard.platform.ray.final_job import final_loop_per_worker
    from dartboard.platform.ray.worker import search_loop_per_worker

    run = {"search_job": search_loop_per_worker, "final_job": final_loop_per_worker}[loop]
    with pytest.raises(Exception):  # noqa: B017,PT011 - outside a Train run the loop fails, after its first line
        run({})
    assert gc.get_threshold() == THRESHOLDS
