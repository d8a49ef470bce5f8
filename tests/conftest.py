"""Test-suite wide settings: GPU tests skip themselves without CUDA; slow tests run only when
asked for (``-m slow`` or ``DARTBOARD_SLOW=1``)."""

import os
import sys

import pytest
import torch

from dartboard.collector import collect_less_often

collect_less_often()  # the test processes collect as the commands and Train workers do (dartboard/collector.py)
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per xdist worker: the workers share the cores
    torch.set_num_threads(1)
    # ... and so does every process a test starts (console scripts, drivers, servers; Ray's workers inherit
    # it from the instance the test starts). With two OpenMP threads next to another busy process, torch's
    # spin-waits burn the CPU the other worker needs: a digits search with one core busy elsewhere took
    # 56 CPU s (48 s wall) with two threads against 22 CPU s (22 s wall) with one. A user's setting wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ray starts its workers at niceness 15 (its default, RAY_worker_niceness): below the other xdist worker,
    # which lowers its own priority to NON_RAY_NICENESS (below) so that the Ray tests go first. The Ray
    # instances the tests start run their workers at the test worker's priority.
    os.environ.setdefault("RAY_worker_niceness", "0")


#: Test modules that share the session's local Ray instance (those whose tests use ``ray_local``).
_SHARED_RAY_MODULES: set[str] = set()


#: Niceness of a worker once it runs tests without the ``ray`` marker (README's xdist command).
NON_RAY_NICENESS = 10
_niced = False


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown when xdist is not installed or not loaded
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``: the Ray group is the first unit handed out, so one worker starts the Ray tests at
    once and holds them alone, the other takes every other group (and the Ray worker takes more groups only
    when its last Ray tests are under way, xdist's rule)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class RayFirst(LoadGroupScheduling):
        def _assign_work_unit(self, node) -> None:
            queue = getattr(self, "workqueue", None)  # xdist internals: if a release renames them, the order
            if hasattr(queue, "move_to_end") and "ray" in queue and not getattr(self, "assigned_work", {}).get(node):
                queue.move_to_end("ray", last=False)  # is plain loadgroup's again, nothing breaks
            super()._assign_work_unit(node)

    return RayFirst(config, log)


def pytest_runtest_setup(item):
    """Under xdist, a worker lowers its CPU priority (for good) at its first test without the ``ray`` marker.
    The Ray tests hold the suite's wall time; at lower priority the other tests fill the CPU the Ray tests
    leave idle (the suite, measured: 21 min 0 s with the Ray workers below the other tests, 18 min 37 s with
    them first). Priority only orders who runs first: no test's outcome depends on it."""
    global _niced
    if not _niced and os.environ.get("PYTEST_XDIST_WORKER") and "ray" not in item.keywords:
        os.nice(NON_RAY_NICENESS)
        _niced = True


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the xdist_group marks into groups
def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    run_slow = os.environ.get("DARTBOARD_SLOW") == "1" or "slow" in (config.getoption("-m") or "")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with -m slow or DARTBOARD_SLOW=1"))
        # With pytest-xdist (`-n 2 --dist loadgroup`, README's test command): the tests that start a Ray
        # cluster run one after the other on one worker (never two Ray clusters at once), the others
        # module by module (module fixtures, e.g. an MLflow server, are built once).
        item.add_marker(pytest.mark.xdist_group("ray" if "ray" in item.keywords else item.nodeid.split("::")[0]))
        if "ray_local" in getattr(item, "fixturenames", ()):
            _SHARED_RAY_MODULES.add(item.nodeid.split("::")[0])
    # The modules that share one Ray instance (``ray_local``) run first, then those with their own: the
    # shared instance starts once and stops once. Stable: the order within both kinds stays the collection's.
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in _SHARED_RAY_MODULES)


#: A tiny timm ViT for the DARIO tests (8x8 single-channel input, 3 blocks of 2 heads).
TINY_VIT = {"img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 3, "num_heads": 2, "in_chans": 1,
            "num_classes": 3, "mlp_ratio": 2.0}
TINY_VIT_NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tiny_vit():
    from dartboard.spaces.vit import create_vit

    torch.manual_seed(0)
    return create_vit(TINY_VIT_NAME, **TINY_VIT).eval()


@pytest.fixture(scope="session")
def _ray_session_end():
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session_end):
    """A private local Ray instance (never another `ray start` cluster), shared by the test modules that use
    this fixture: it starts at the first of them and stops when a module that starts its own instance (or
    none) begins, or at the end of the session. The Ray tests run these modules first, one after the other
    (``pytest_collection_modifyitems``), so the suite starts it once instead of once per module."""
    ray = pytest.importorskip("ray")
    from dartboard.platform.ray.session import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=4)  # the platform's one ray.init (dashboard on)
    yield ray


@pytest.fixture(scope="module", autouse=True)
def _no_shared_ray_elsewhere(request):
    """Before a module that does not share the instance: stop it (such a module starts its own, with its
    own environment, e.g. the epoch gate or storage credentials, or runs drivers in other processes)."""
    if request.node.nodeid not in _SHARED_RAY_MODULES:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    yield
