"""The trainer of every dartboard Train run (a trial's search, a final training): Ray Train's
``DataParallelTrainer`` with torch's process group (``backend.TorchProcessGroup``), which is what
``TorchTrainer`` is, without importing torch in the processes that only steer the run (backend.py).

Ray Train starts a handful of actors per run, each a fresh Python process importing Ray (2 to 5 CPU
seconds each on a 2-core machine). Two of them have no work in dartboard's runs:

- the ``DatasetManager`` hands out Ray Data shards: dartboard passes no Ray Datasets (each worker loads
  its split itself), so a run without datasets goes without it, on any cluster;
- the detached ``PlacementGroupCleaner`` frees a run's placement group when its controller dies without
  freeing it. On a private local instance (``session.init_ray`` without an address) a dead driver takes
  the whole instance with it, and the placement group of a trial that Tune stops is freed by
  ``trial.release_placement_group``: there it goes too. A cluster keeps it;
- the controller's and the workers' metrics callbacks feed Ray's Prometheus export, which nothing scrapes
  on a private instance (``RAY_TRAIN_METRICS_ENABLED`` set by the user wins).

The controller of a run is Ray's, started as Ray starts it; this process keeps its handle while the run goes
(``abort_runs``), so that a Tune trial actor reused for the next trial can end the run of a trial that Tune
stopped (ASHA) before the run itself ended (``trial.ReusableTrial``).

Measured (``benchmarks/HISTORY.md``): the digits sweep's CPU time and the suite's Ray tests.
"""

from __future__ import annotations

import os
import threading

from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from dartboard.platform.ray.backend import TorchProcessGroup
from dartboard.platform.ray.envvars import PRIVATE_INSTANCE_ENV, TRAIN_METRICS_ENV


def private_instance() -> bool:
    """True when this process belongs to a job on a private local instance started by ``init_ray``: the
    mark of ``session.worker_env(local=True)``, read from the environment (actors) or from Ray's runtime
    context (the driver)."""
    import ray

    if os.environ.get(PRIVATE_INSTANCE_ENV) == "1":
        return True
    if not ray.is_initialized():
        return False
    env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    return env.get(PRIVATE_INSTANCE_ENV) == "1"


def idle_callback_types(has_datasets: bool, private: bool) -> tuple[type, ...]:
    """Ray Train's default callbacks that have no work in this run (an idle actor, an export nobody reads).
    Ray's internal names: if a Ray release moves them, runs keep all of Ray's callbacks (and
    ``tests/test_ray_session.py`` turns red)."""
    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        from ray.train.v2._internal.callbacks.metrics import ControllerMetricsCallback, WorkerMetricsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return ()

    idle: tuple[type, ...] = () if has_datasets else (DatasetsCallback,)
    if private:
        idle += (PlacementGroupCleanerCallback,)
        if not os.environ.get(TRAIN_METRICS_ENV):
            idle += (ControllerMetricsCallback, WorkerMetricsCallback)
    return idle


class DartboardTrainer(DataParallelTrainer):
    """A ``TorchTrainer`` without torch in Tune's trial actor and Train's controller, and without the
    per-run actors that have no work in this run (module docstring). ``backend_config`` defaults to
    :class:`TorchProcessGroup` (gloo on CPU, NCCL on GPU workers)."""

    def __init__(self, train_loop_per_worker, *, backend_config: TorchProcessGroup | None = None, **kwargs):
        super().__init__(train_loop_per_worker, backend_config=backend_config or TorchProcessGroup(), **kwargs)

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        idle = idle_callback_types(bool(self.datasets), private_instance())
        return [c for c in callbacks if not isinstance(c, idle)]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        """Ray's own (``DataParallelTrainer._initialize_and_run_controller``: the controller on this node,
        Train's environment variables, Ctrl-C aborting the run from a main thread), with the controller's handle
        kept in ``_RUNNING`` while it runs."""
        import ray
        from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
        from ray.train.v2._internal.constants import DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE as NO_WARN
        from ray.train.v2._internal.constants import get_env_vars_to_propagate
        from ray.train.v2._internal.execution.controller import TrainController

        controller_init_kwargs["failure_policy"] = input_errors_raise(controller_init_kwargs["failure_policy"])
        env_vars = get_env_vars_to_propagate()
        env_vars.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, NO_WARN)
        node = {ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()}
        actor = ray.remote(num_cpus=0, label_selector=node, runtime_env={"env_vars": env_vars})(TrainController)
        controller = actor.remote(**controller_init_kwargs)
        if threading.current_thread() is threading.main_thread():
            self._register_sigint_handler(controller)
        with _LOCK:
            _RUNNING.append(controller)
        try:
            ray.get(controller.run.remote())
            return ray.get(controller.get_result.remote())
        finally:
            with _LOCK:
                _RUNNING.remove(controller)


def input_error_of(err: BaseException) -> tuple[int, BaseException] | None:
    """(rank, error) of the first worker of a failed Train run whose error is about the user's input
    (``errors.is_user_error``: an image in the data folder that cannot be read, say), or None. Ray hands the
    worker's exception over as it was raised, or wrapped with it as ``cause``."""
    from dartboard.errors import is_user_error

    for rank, failure in sorted((getattr(err, "worker_failures", None) or {}).items()):
        for candidate in (failure, getattr(failure, "cause", None)):
            if isinstance(candidate, BaseException) and is_user_error(candidate):
                return rank, candidate
    return None


def input_errors_raise(policy):
    """Ray's failure policy, except that a run failed by the user's input is not tried again: the same data and
    options fail the same way (an unreadable image failed 3 times with the default 2 retries). Ray's internal
    class: if a Ray release moves it, its policy stays as it is."""
    try:
        from ray.train.v2._internal.execution.failure_handling import FailurePolicy
        from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
    except ImportError:
        return policy

    class InputErrorsRaise(FailurePolicy):
        def __init__(self, inner) -> None:
            super().__init__(inner.failure_config)
            self.inner = inner

        def make_decision(self, training_failed_error):
            if input_error_of(training_failed_error) is not None:
                return FailureDecision.RAISE
            return self.inner.make_decision(training_failed_error)

    return InputErrorsRaise(policy)


_LOCK = threading.Lock()
#: the controllers of this process's Train runs that have not returned yet
_RUNNING: list = []


def abort_runs() -> int:
    """Kill the controllers of this process's unfinished Train runs (their workers, owned by the controller, go
    with them; ``fit()`` of each raises ``RayActorError``). Returns how many it killed."""
    import ray

    with _LOCK:
        controllers = list(_RUNNING)
    for controller in controllers:
        ray.kill(controller, no_restart=True)
    return len(controllers)
