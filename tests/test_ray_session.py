"""The one ``ray.init`` path (platform/ray/session.py): what every worker's environment gets. A private
local instance turns Ray Train's preemption watcher off (no node of it can be preempted; the watcher costs
a process per Train run and a poll every 5 s); a cluster keeps Ray's default; the user's setting wins."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from dartboard.platform import checks  # noqa: E402
from dartboard.platform.ray import session  # noqa: E402


@pytest.fixture
def captured(monkeypatch):
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(checks, "check_ray_address", lambda address: None)  # no cluster at "head": not asked here
    monkeypatch.delenv(session.PREEMPTION_WATCHER_ENV, raising=False)
    return calls


def test_a_private_local_instance_runs_without_the_preemption_watcher(captured):
    assert session.init_ray(num_cpus=2) is True
    (kw,) = captured
    assert kw["address"] == "local"
    assert kw["runtime_env"]["env_vars"][session.PREEMPTION_WATCHER_ENV] == "0"


def test_a_private_instance_starts_without_the_dashboard_and_idle_workers_unless_asked(captured, monkeypatch):
    monkeypatch.delenv(session.DASHBOARD_ENV, raising=False)
    session.init_ray(num_cpus=2)
    monkeypatch.setenv(session.DASHBOARD_ENV, "1")
    session.init_ray(num_cpus=2)
    assert [kw["include_dashboard"] for kw in captured] == [False, True]
    config = {"prestart_worker_first_driver": False, "raylet_client_connect_timeout_milliseconds": 100,
              "raylet_client_num_connect_attempts": 100}
    assert all(kw["_system_config"] == config for kw in captured)


def test_a_private_instance_starts_no_monitors_and_no_api_server_unless_asked(monkeypatch):
    """``ray.init`` gets node parameters without the autoscaler monitor and (unless --verbose sends the workers'
    output to the driver) the log monitor, and a head node whose API server step starts nothing and whose dashboard
    agent runs minimal (unless the dashboard is asked for); Ray Train's state actor then does not poll the missing
    state API. All of it only while ``ray.init`` runs, and never for a cluster."""
    import ray
    from ray._private import node as ray_node
    from ray._private import parameter
    from ray._private import utils as ray_utils

    rays_params, rays_api_server = parameter.RayParams, ray_node.Node.start_api_server
    rays_dependency_check = ray_utils.get_dashboard_dependency_error
    seen: list[dict] = []

    def init(**kw):
        params = parameter.RayParams()
        seen.append({"no_monitor": params.no_monitor, "log_monitor": params.include_log_monitor,
                     "api_server": ray_node.Node.start_api_server is rays_api_server,
                     "minimal_agent": ray_utils.get_dashboard_dependency_error() is not None,
                     "state_polling": kw["runtime_env"]["env_vars"].get(session.STATE_RECONCILIATION_ENV)})

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(checks, "check_ray_address", lambda address: None)  # no cluster at "head": not asked here
    for name in (session.DASHBOARD_ENV, session.VERBOSE_ENV, session.STATE_RECONCILIATION_ENV):
        monkeypatch.delenv(name, raising=False)
    session.init_ray(num_cpus=1)
    monkeypatch.setenv(session.VERBOSE_ENV, "1")
    session.init_ray(num_cpus=1)
    monkeypatch.setenv(session.DASHBOARD_ENV, "1")
    session.init_ray(num_cpus=1)
    monkeypatch.delenv(session.DASHBOARD_ENV)
    monkeypatch.setenv(session.STATE_RECONCILIATION_ENV, "1")  # the user's setting wins
    session.init_ray(num_cpus=1)
    monkeypatch.delenv(session.STATE_RECONCILIATION_ENV)
    session.init_ray(address="ray://head:10001")
    assert seen == [
        {"no_monitor": True, "log_monitor": False, "api_server": False, "minimal_agent": True, "state_polling": "0"},
        {"no_monitor": True, "log_monitor": None, "api_server": False, "minimal_agent": True,
         "state_polling": "0"},  # Ray's default log monitor
        {"no_monitor": True, "log_monitor": None, "api_server": True, "minimal_agent": False, "state_polling": None},
        {"no_monitor": True, "log_monitor": None, "api_server": False, "minimal_agent": True, "state_polling": "1"},
        {"no_monitor": False, "log_monitor": None, "api_server": True, "minimal_agent": False,
         "state_polling": None},  # a cluster
    ]
    assert parameter.RayParams is rays_params and ray_node.Node.start_api_server is rays_api_server
    assert ray_utils.get_dashboard_dependency_error is rays_dependency_check


def test_a_cluster_keeps_rays_default_watcher(captured):
    session.init_ray(address="ray://head:10001")
    (kw,) = captured
    assert kw["address"] == "ray://head:10001"
    assert session.PREEMPTION_WATCHER_ENV not in kw["runtime_env"]["env_vars"]


def test_the_users_setting_reaches_the_workers_either_way(captured, monkeypatch):
    monkeypatch.setenv(session.PREEMPTION_WATCHER_ENV, "1")
    session.init_ray(num_cpus=2)
    session.init_ray(address="ray://head:10001")
    assert [kw["runtime_env"]["env_vars"][session.PREEMPTION_WATCHER_ENV] for kw in captured] == ["1", "1"]


def test_a_private_local_instance_marks_its_workers_and_a_cluster_does_not(captured):
    session.init_ray(num_cpus=2)
    session.init_ray(address="ray://head:10001")
    marks = [kw["runtime_env"]["env_vars"].get(session.PRIVATE_INSTANCE_ENV) for kw in captured]
    assert marks == ["1", None]


# ---- the TorchTrainer of every Train run (platform/ray/trainer.py): Ray Train's per-run actors that have
# no work in a dartboard run are left out; what stays is Ray's default.
def _callbacks(monkeypatch, private: bool, datasets=None, metrics_env: str | None = None) -> set[str]:
    from ray.train import RunConfig, ScalingConfig

    from dartboard.platform.ray.trainer import DartboardTrainer

    monkeypatch.delenv(session.TRAIN_METRICS_ENV, raising=False)
    if metrics_env is not None:
        monkeypatch.setenv(session.TRAIN_METRICS_ENV, metrics_env)
    if private:
        monkeypatch.setenv(session.PRIVATE_INSTANCE_ENV, "1")
    else:
        monkeypatch.delenv(session.PRIVATE_INSTANCE_ENV, raising=False)
    trainer = DartboardTrainer(lambda config: None, scaling_config=ScalingConfig(num_workers=1), datasets=datasets,
                               run_config=RunConfig(name="t", storage_path="/tmp/dartboard-trainer-test"))
    return {type(c).__name__ for c in trainer._create_default_callbacks()}


CLUSTER_ONLY = {"PlacementGroupCleanerCallback", "ControllerMetricsCallback", "WorkerMetricsCallback"}


def test_a_private_instance_runs_without_the_cleaner_the_metrics_and_the_dataset_manager(monkeypatch):
    names = _callbacks(monkeypatch, private=True)
    assert not names & (CLUSTER_ONLY | {"DatasetsCallback"})
    assert {"BackendSetupCallback", "AcceleratorSetupCallback", "UserCallbackHandler"} <= names


def test_a_cluster_keeps_rays_callbacks_but_the_dataset_manager_of_a_run_without_datasets(monkeypatch):
    names = _callbacks(monkeypatch, private=False)
    assert CLUSTER_ONLY <= names and "DatasetsCallback" not in names


def test_a_run_with_ray_datasets_keeps_its_dataset_manager_and_the_users_metrics_setting_wins(monkeypatch):
    names = _callbacks(monkeypatch, private=True, datasets={"train": lambda: None}, metrics_env="1")  # lazy
    assert {"DatasetsCallback", "ControllerMetricsCallback", "WorkerMetricsCallback"} <= names
    assert "PlacementGroupCleanerCallback" not in names


# ---- torch's process group without torch where nothing touches a tensor (platform/ray/backend.py)
def test_the_trial_actors_imports_and_the_backend_config_bring_no_torch():
    """What Tune's trial actor imports (the trial function, the trainer) and runs before its Train run (the
    trial's search config: the searcher's defaults, the dataset's name checked; its Train run's trainer), and what
    Train's controller unpickles (the backend config), in a fresh interpreter: torch is not among the modules."""
    import subprocess
    import sys

    code = ("import sys, cloudpickle\n"
            "import dartboard.platform.ray.trial, dartboard.platform.ray.trainer\n"
            "from dartboard.platform.ray.backend import TorchProcessGroup\n"
            "from dartboard.platform.ray.runner import load_study\n"
            "from dartboard.platform.ray.space import trial_key, trial_run_config\n"
            "from dartboard.platform.ray.worker import make_trainer\n"
            "blob = cloudpickle.dumps(TorchProcessGroup(backend='gloo'))\n"
            "cfg = cloudpickle.loads(blob)\n"
            "assert cfg.backend == 'gloo' and cfg.to_dict()['timeout_s'] == 1800, cfg\n"
            "for name, sampled in (('digits', {'w_lr': 0.01, 'C': 4, 'layers': 3}),\n"
            "                      ('pmsm-depth', {}), ('dario-outer', {'threshold': 0.5})):\n"
            "    study = load_study(name, {'storage': '/tmp/no-such-dartboard-dir', 'final_training': None})\n"
            "    run = trial_run_config(study, sampled)\n"
            "    assert run['searcher'] == study.variants[0].searcher, run\n"
            "    key = trial_key(study, sampled, 't')\n"
            "    make_trainer(run, name='t', storage_path='/tmp/no-such-dartboard-dir', key=key)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_the_backend_is_nccl_on_gpu_workers_gloo_on_cpu_and_the_request_wins():
    from dartboard.platform.ray.backend import init_url, pick_backend

    assert pick_backend(None, {"CPU": 1.0}) == "gloo"
    assert pick_backend(None, {"CPU": 1.0, "GPU": 1.0}) == "nccl"
    assert pick_backend("gloo", {"GPU": 1.0}) == "gloo"
    with pytest.raises(ValueError, match="TPU workers are not supported"):
        pick_backend(None, {"TPU": 4})
    assert init_url("env", "10.0.0.1", 29500) == "env://"
    assert init_url("tcp", "10.0.0.1", 29500) == "tcp://10.0.0.1:29500"
    with pytest.raises(ValueError, match="init_method: 'file' is not supported"):
        init_url("file", "h", 1)


@pytest.mark.ray
def test_stopping_a_private_instance_kills_its_autoscaler_monitor_then_lets_ray_stop_the_rest(monkeypatch):
    """Ray asks each process to exit and gives it up to 1 s; its autoscaler monitor never exits when asked.
    ``stop_ray`` kills the monitor of the instance outright before Ray's own stop, which then stops the rest."""
    import signal

    import ray
    from ray._private import worker as ray_worker

    if ray.is_initialized():
        ray.shutdown()
    # A private instance as Ray starts it, monitor included (``init_ray``'s starts none: a Ray release without the
    # internals ``lighter_private_start`` uses starts one).
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    node = ray_worker._global_node
    processes = {name: [info.process for info in infos] for name, infos in node.all_processes.items()}
    (monitor,) = processes["monitor"]
    others = [p for name, ps in processes.items() if name != "monitor" for p in ps]
    at_shutdown = {}
    real_shutdown = ray.shutdown

    def shutdown(*args, **kwargs):
        at_shutdown.update(monitor=monitor.poll(), others_alive=sum(p.poll() is None for p in others))
        real_shutdown(*args, **kwargs)

    monkeypatch.setattr(ray, "shutdown", shutdown)
    session.stop_ray()
    assert at_shutdown == {"monitor": -signal.SIGKILL, "others_alive": len(others)} and len(others) >= 2
    assert not ray.is_initialized() and all(p.poll() is not None for p in others)


@pytest.mark.ray
def test_a_private_instance_runs_its_tasks_and_actors_without_the_monitors_and_the_api_server(monkeypatch):
    """The instance ``init_ray`` starts (not verbose, no dashboard) has Ray's GCS, raylet and agents (the
    dashboard agent minimal) but no autoscaler monitor, log monitor or API server; tasks and actors run on it and
    ``stop_ray`` stops all of it."""
    import ray
    from ray._private import ray_constants
    from ray._private import worker as ray_worker

    for name in (session.DASHBOARD_ENV, session.VERBOSE_ENV):
        monkeypatch.delenv(name, raising=False)
    if ray.is_initialized():
        ray.shutdown()
    assert session.init_ray(num_cpus=1) is True
    try:
        processes = {name: [info.process for info in infos]
                     for name, infos in ray_worker._global_node.all_processes.items()}
        assert {ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET} <= set(processes)
        assert not {ray_constants.PROCESS_TYPE_MONITOR, ray_constants.PROCESS_TYPE_LOG_MONITOR,
                    ray_constants.PROCESS_TYPE_DASHBOARD} & set(processes), sorted(processes)
        # Ray's config as the GCS hands it to every process of the instance, the raylet's start among them: its
        # socket connections retried every 100 ms (Ray's default: 1 s, which paused the raylet's start now and then)
        (gcs,) = processes[ray_constants.PROCESS_TYPE_GCS_SERVER]
        config = _config_list(gcs.pid)
        assert (config["raylet_client_connect_timeout_milliseconds"], config["raylet_client_num_connect_attempts"]
                ) == (100, 100), config
        (raylet,) = processes[ray_constants.PROCESS_TYPE_RAYLET]
        (agent,) = [a.split("=", 1)[1] for a in _args(raylet.pid) if a.startswith("--dashboard_agent_command=")]
        assert "--minimal" in agent.split(), agent

        @ray.remote(num_cpus=0)
        def square(x: int) -> int:
            return x * x

        @ray.remote(num_cpus=0)
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def add(self, k: int) -> int:
                self.n += k
                return self.n

        counter = Counter.remote()
        assert ray.get([square.remote(3), counter.add.remote(2), counter.add.remote(5)], timeout=120) == [9, 2, 7]
    finally:
        session.stop_ray()
    assert not ray.is_initialized()
    assert all(p.poll() is not None for ps in processes.values() for p in ps)


def _config_list(pid: int) -> dict:
    """The Ray config a process of an instance was started with (its ``--config_list``, base64 JSON)."""
    import base64
    import json

    (encoded,) = [a.split("=", 1)[1] for a in _args(pid) if a.startswith("--config_list=")]
    return json.loads(base64.b64decode(encoded))


def _args(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline") as f:
        return f.read().split("\0")


SIGTERM_AFTER_A_BACKGROUND_START = """
import os, signal, sys, time
from dartboard.platform.config import StudyConfig
from dartboard.platform.ray import runner

def handler(signum, frame):
    print("the process's own handler", flush=True)
    raise SystemExit(143)

def checks_still_running():  # the signal comes while the study's checks run, after Ray's start
    assert start._ready.wait(120)
    for _ in range(600):  # the main thread looks every 50 ms; 30 s at most, then the signal comes anyway
        if start._reclaimed:
            break
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)

signal.signal(signal.SIGTERM, handler)
start = runner._RayInBackground(StudyConfig(name="t", searcher="darts", ray_num_cpus=1))
try:
    if sys.argv[1] == "during the checks":
        runner._behind_ray_start(checks_still_running, waiting=start.reclaim_sigterm)
    start.result()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
finally:
    start.stop()
"""


@pytest.mark.ray
@pytest.mark.parametrize("when", ["after the checks", "during the checks"])
def test_sigterm_after_ray_started_in_the_background_reaches_only_the_processs_handler(tmp_path, when):
    """Ray's core worker installs a native failure handler for SIGTERM when it connects, from any thread (it prints
    ``*** SIGTERM received`` and a stack of addresses, then calls the handler it replaced). Once the study runner's
    background start is done, a SIGTERM reaches the process's own handler alone (exit 143, no banner), after the
    study's checks and while they still run."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_A_BACKGROUND_START, when], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 143, output
    assert "the process's own handler" in proc.stdout, output
    assert "SIGTERM received" not in output, output


@pytest.mark.ray
def test_ray_started_beside_the_checks_outlives_its_start_and_leaves_the_sigterm_handler(monkeypatch):
    """The study runner starts Ray in a thread while the main thread checks the study. Ray's processes die with
    the thread that forked them, so that thread stays until the runner stops Ray; and ``ray.init`` sets its own
    SIGTERM handler only on the main thread, so the command line's (exit 143 after the ``finally`` blocks) stays.
    Ray's warning about that handler is not shown, even with --verbose."""
    import logging
    import signal

    import ray

    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray import runner

    if ray.is_initialized():
        ray.shutdown()

    def handler(signum, frame):
        raise KeyboardInterrupt

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    records = Records()
    ray_worker_log = logging.getLogger("ray._private.worker")
    ray_worker_log.addHandler(records)
    monkeypatch.setenv(session.VERBOSE_ENV, "1")  # Ray's loggers at their own levels
    previous = signal.signal(signal.SIGTERM, handler)
    start = runner._RayInBackground(StudyConfig(name="t", searcher="darts", ray_num_cpus=1))
    try:
        start.result()

        @ray.remote(num_cpus=0)
        def pid() -> int:
            import os

            return os.getpid()

        assert ray.get(pid.remote(), timeout=120) > 0  # the instance works after init_ray returned
        assert signal.getsignal(signal.SIGTERM) is handler
        started = set(ray._private.worker._global_node.all_processes)
        assert "log_monitor" in started and not {"monitor", "dashboard"} & started, started  # --verbose
    finally:
        start.stop()
        signal.signal(signal.SIGTERM, previous)
        ray_worker_log.removeHandler(records)
    assert not ray.is_initialized()
    assert records.messages and not [m for m in records.messages if "SIGTERM" in m], records.messages


def test_ray_init_on_the_main_thread_keeps_the_sigterm_handler_the_process_installed(monkeypatch):
    """On the main thread ``ray.init`` replaces the SIGTERM handler with its own (``sys.exit``): the command line's
    (raise like Ctrl-C, unwind, exit 143) is put back, e.g. for ``dartboard train --workers N``; a process with no
    handler of its own keeps Ray's."""
    import signal
    import sys

    import ray

    def rays(signum, frame):
        sys.exit(signum)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: signal.signal(signal.SIGTERM, rays))  # as Ray's own does

    def mine(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert session.init_ray(num_cpus=1) is True
        assert signal.getsignal(signal.SIGTERM) is mine
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        session.init_ray(num_cpus=1)
        assert signal.getsignal(signal.SIGTERM) is rays
    finally:
        signal.signal(signal.SIGTERM, previous)
