"""The one ``ray.init`` of dartboard: a private local instance (or a cluster's address).

A private instance starts only what a dartboard job uses (``lighter_private_start``): no dashboard and no API
server behind it (``DARTBOARD_RAY_DASHBOARD=1`` starts both), no autoscaler monitor (nothing to scale), no log
monitor unless the workers' output goes to the driver (``--verbose``), and not the idle workers Ray starts for a
first driver: every actor of a dartboard job has the job's runtime environment, so none can use them. Ray's own
``ray start --no-monitor``, ``--include-log-monitor=false`` and a minimal install (no dashboard packages) run the
same way. On 2 cores the dashboard and the idle workers took 1.5 s of Ray's start (5.6 -> 4.1 s), the API server and
the two monitors about 2 CPU s before the first trial (``benchmarks/HISTORY.md``).
PLATFORM-NOTES once needed the dashboard's state API: Ray Train's placement-group cleaner uses it to free the
workers of a trial that ASHA stops. dartboard frees them itself (``trial.release_placement_group``), leaves that
cleaner out on a private instance (``trainer.DartboardTrainer``) and ends a stopped trial's run when its actor is
reused (``trial.ReusableTrial``); ``tests/test_sweep_ray.py`` and ``tests/test_sweep_faults.py`` run stopped
trials followed by others on such an instance. Ray Train's state actor, which polls that API every 30 s to mark
runs whose controller died, does not poll on an instance without it (``STATE_RECONCILIATION_ENV``). Without the API
server, Ray's dashboard agent looks for its address once a second and logs each miss to its own log in Ray's
session directory (``dashboard_agent.log``, about 0.6 KB/s), as where Ray's dashboard fails to start."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dartboard.errors import ServiceError, one_line
from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.envvars import PRIVATE_INSTANCE_ENV, TRAIN_METRICS_ENV
from dartboard.platform.ray.resources import local_num_cpus

# Worker start-up imports torch in fresh processes; Ray Train's 60 s default is tight on 2 busy cores.
WORKER_START_TIMEOUT_S = "600"
# Ray Train starts a PreemptionWatcher actor per run that polls the nodes' drain state every 5 s. A private
# local instance has no node that can be preempted: there the watcher only costs a process and its polling
# (the digits sweep: 27 % less wall time and 28 % less CPU without it, ``benchmarks/HISTORY.md``).
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
#: ``1``: a private local instance starts Ray's dashboard too (http://127.0.0.1:8265)
DASHBOARD_ENV = "DARTBOARD_RAY_DASHBOARD"
# Ray Train's state actor asks the state API (Ray's API server) every 30 s whether each live run's controller is
# alive; a private instance without that server turns the polling off (dartboard ends the runs it stops itself).
STATE_RECONCILIATION_ENV = "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION"


def dashboard_wanted() -> bool:
    return os.environ.get(DASHBOARD_ENV) == "1"


def worker_env(local: bool = False) -> dict[str, str]:
    """The environment every Ray worker of this job gets (the job's runtime environment): Train's worker
    start timeout, the epoch gate of the tests and, on a private local instance, no preemption watcher
    (unless the user's environment sets it) and the private-instance mark."""
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_START_TIMEOUT_S)
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]}
    if os.environ.get(PREEMPTION_WATCHER_ENV):
        env[PREEMPTION_WATCHER_ENV] = os.environ[PREEMPTION_WATCHER_ENV]
    elif local:
        env[PREEMPTION_WATCHER_ENV] = "0"
    if os.environ.get(TRAIN_METRICS_ENV):
        env[TRAIN_METRICS_ENV] = os.environ[TRAIN_METRICS_ENV]
    if local:
        env[PRIVATE_INSTANCE_ENV] = "1"
    if os.environ.get(STATE_RECONCILIATION_ENV):
        env[STATE_RECONCILIATION_ENV] = os.environ[STATE_RECONCILIATION_ENV]
    elif local and not dashboard_wanted():
        env[STATE_RECONCILIATION_ENV] = "0"
    from dartboard.platform.ray.worker import EPOCH_GATE_ENV

    if os.environ.get(EPOCH_GATE_ENV):
        env[EPOCH_GATE_ENV] = os.environ[EPOCH_GATE_ENV]
    return env


VERBOSE_ENV = "DARTBOARD_VERBOSE"  # set by `dartboard --verbose` (cli/main.py)


def verbose() -> bool:
    """Ray's own output wanted: Tune's status tables, Ray's INFO logs and warnings, the trials' output."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def tune_verbosity() -> int:
    """Tune's ``RunConfig(verbose=...)``: 0 (silent; dartboard prints its own summary) unless --verbose."""
    return 1 if verbose() else 0


def quiet_ray() -> None:
    """Without --verbose: Ray's loggers show errors only and its deprecation notices are not printed."""
    import logging
    import warnings

    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Tune's newer console output prints its experiment header and result paths even at verbose=0;
    # its classic reporter prints nothing at verbose=0 (read when a Tuner runs).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for category in (DeprecationWarning, FutureWarning, UserWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category, module=r"ray(\.|$)")


def init_ray(cfg: StudyConfig | None = None, *, address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start (or join) Ray once per process; True when this call started it. Quiet unless ``verbose()``:
    the workers' output stays in Ray's session logs and the trials' results carry their errors."""
    import ray

    if ray.is_initialized():
        return False
    handler = _own_sigterm_handler()
    ray_worker_log = logging.getLogger("ray._private.worker")
    ray_worker_log.addFilter(_not_the_sigterm_notice)
    try:
        _init(cfg, address, num_cpus)
    finally:
        ray_worker_log.removeFilter(_not_the_sigterm_notice)
        if handler is not None:  # ray.init set its own (sys.exit) on the main thread
            signal.signal(signal.SIGTERM, handler)
    return True


def reclaim_sigterm() -> None:
    """On the main thread, after a ``ray.init`` made in another thread: the process's own SIGTERM handler (a Python
    function, e.g. the command line's) is installed again. Ray's core worker installs a native failure handler for
    SIGTERM when it connects, from whichever thread: it prints ``*** SIGTERM received`` and a stack of addresses,
    then calls the handler it replaced. ``signal.getsignal`` still names the Python handler; ``init_ray`` on the
    main thread installs it again itself. Ray's native handler stays for the crash signals (SIGSEGV, SIGABRT...)."""
    handler = _own_sigterm_handler()
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)


def _not_the_sigterm_notice(record: logging.LogRecord) -> bool:
    """Drops Ray's warning (shown with --verbose) that ``ray.init`` off the main thread sets no SIGTERM handler:
    intended, as the process's own handler is the one to keep either way."""
    return not record.getMessage().startswith("SIGTERM handler is not set")


def _own_sigterm_handler() -> Any:
    """The process's SIGTERM handler where it is a Python function and this is the main thread, else None. On the
    main thread ``ray.init`` replaces it with one that calls ``sys.exit``; the command line's (raise like Ctrl-C,
    unwind, exit 143) is then put back. A process without one of its own keeps Ray's."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGTERM)
    return handler if callable(handler) else None


#: Ray's config of a private instance (``_system_config``): no idle workers for a first driver (no actor of a
#: dartboard job can use them: they all carry the job's runtime environment), and Ray's socket connections retried
#: every 100 ms instead of every 1 s, 100 times (Ray's 10 s in all). The raylet connects to the object store it has
#: just started; where the store's socket is not up at that first try, Ray's 1 s wait paused the raylet's start for
#: a whole second before its servers and agents started (3 of 8 starts of a study, 2 of 6 bare ``ray.init``s): the
#: first trial started 0.4-0.5 s later in those runs.
PRIVATE_SYSTEM_CONFIG = {"prestart_worker_first_driver": False, "raylet_client_connect_timeout_milliseconds": 100,
                         "raylet_client_num_connect_attempts": 100}


def _init(cfg: StudyConfig | None, address: str | None, num_cpus: int | None) -> None:
    import ray

    loud = verbose()
    if not loud:
        quiet_ray()
    output = {"log_to_driver": loud, "logging_level": logging.INFO if loud else logging.ERROR}
    address = address or (cfg.ray_address if cfg is not None else None)
    env = worker_env(local=not address)
    if address:
        from dartboard.platform.checks import check_ray_address

        check_ray_address(address)
        ray.init(address=address, runtime_env={"env_vars": env}, **output)
    else:
        # address="local": always a new private instance, never another `ray start` cluster on this machine.
        cpus = num_cpus or (local_num_cpus(cfg) if cfg is not None else os.cpu_count() or 1)
        try:
            with lighter_private_start(dashboard=dashboard_wanted(), log_monitor=loud):
                ray.init(address="local", num_cpus=cpus, include_dashboard=dashboard_wanted(),
                         runtime_env={"env_vars": env}, _system_config=dict(PRIVATE_SYSTEM_CONFIG),
                         **output)
        except Exception as err:
            if "timed out during startup" not in str(err):
                raise
            raise ServiceError(f"ray: the local Ray instance did not start in time ({one_line(err)}); the "
                               "machine is probably overloaded: retry when it is less busy") from err


@contextmanager
def lighter_private_start(*, dashboard: bool, log_monitor: bool) -> Iterator[None]:
    """Around the ``ray.init`` that starts a private instance: the instance starts no autoscaler monitor, no log
    monitor unless ``log_monitor`` (it only forwards the workers' output to drivers) and, unless ``dashboard``, no
    API server (the dashboard's process, which ``include_dashboard=False`` still starts for Ray's job and state
    APIs). ``ray.init`` takes none of these as arguments: the block gives it node parameters that say so (the
    fields behind ``ray start --no-monitor`` and ``--include-log-monitor``) and a head node whose API server step
    starts nothing, as on a minimal install of Ray. Without the dashboard, Ray's dashboard agent runs as on a minimal
    install too (``--minimal``: no gRPC and HTTP servers, no metrics export, no modules serving the dashboard): the
    raylet waits for its agents before it takes a driver, and the full agent's 0.7 CPU s of start-up delayed that
    and the first trial actors' start (a study's first trial 0.27 s sooner, median of 14 pairs). A Ray release
    without these internals starts its defaults."""
    from ray._private import node as ray_node
    from ray._private import parameter
    from ray._private import utils as ray_utils

    params = getattr(parameter, "RayParams", None)
    start_api_server = getattr(ray_node.Node, "start_api_server", None)
    if params is None or start_api_server is None or not {"no_monitor", "include_log_monitor"} <= set(
            params.__init__.__code__.co_varnames):
        yield
        return
    dependency_error = getattr(ray_utils, "get_dashboard_dependency_error", None)  # None: Ray's full agent

    class PrivateParams(params):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.no_monitor = True
            if not log_monitor:
                self.include_log_monitor = False

    parameter.RayParams = PrivateParams
    if not dashboard:
        ray_node.Node.start_api_server = _no_api_server
        if dependency_error is not None:
            ray_utils.get_dashboard_dependency_error = _minimal_agent
    try:
        yield
    finally:
        parameter.RayParams = params
        ray_node.Node.start_api_server = start_api_server
        if dependency_error is not None:
            ray_utils.get_dashboard_dependency_error = dependency_error


def _minimal_agent() -> ImportError:
    """Ray's test for its dashboard packages, on a private instance without the dashboard: "missing", so that Ray
    starts its dashboard agent with ``--minimal`` (the agent's own test, in its process, is Ray's)."""
    return ImportError("dartboard: a private Ray instance without the dashboard runs a minimal dashboard agent")


def _no_api_server(self: Any, **_: Any) -> None:
    """``Node.start_api_server`` on a private instance without the dashboard: nothing is started (the node's
    dashboard address stays None, as where Ray's dashboard packages are missing)."""


def stop_ray() -> None:
    """``ray.shutdown()`` of the instance ``init_ray`` started, without Ray's one-second wait on the autoscaler
    monitor: Ray asks each of its processes to exit and waits up to 1 s before killing it, one after the other,
    and the monitor never exits when asked (1.0 of Ray's 1.4 s stop on a private instance). A private instance has
    nothing to scale, so its monitor (where one was started: ``lighter_private_start`` starts none, a Ray release
    without its internals does) is killed outright first. A Ray release that renames Ray's node internals gets a
    plain ``ray.shutdown()``."""
    import ray
    from ray._private import worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    for info in (getattr(node, "all_processes", None) or {}).get("monitor", []):
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
    ray.shutdown()
