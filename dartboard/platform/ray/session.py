"""The one ``ray.init`` of dartboard: a private local instance (or a cluster's address), always with
the dashboard/state API (``ray[default]``): without it Ray Train cannot free the placement group of a
trial that ASHA stops early, and the next trial waits forever (PLATFORM-NOTES)."""

from __future__ import annotations

import os

from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.resources import local_num_cpus

# Worker start-up imports torch in fresh processes; Ray Train's 60 s default is tight on 2 busy cores.
WORKER_START_TIMEOUT_S = "600"


def worker_env() -> dict[str, str]:
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_START_TIMEOUT_S)
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]}
    from dartboard.platform.ray.worker import EPOCH_GATE_ENV

    if os.environ.get(EPOCH_GATE_ENV):
        env[EPOCH_GATE_ENV] = os.environ[EPOCH_GATE_ENV]
    return env


def init_ray(cfg: StudyConfig | None = None, *, address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start (or join) Ray once per process; True when this call started it."""
    import ray

    env = worker_env()
    if ray.is_initialized():
        return False
    address = address or (cfg.ray_address if cfg is not None else None)
    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
    else:
        # address="local": always a new private instance, never another `ray start` cluster on this machine.
        cpus = num_cpus or (local_num_cpus(cfg) if cfg is not None else os.cpu_count() or 1)
        ray.init(address="local", num_cpus=cpus, include_dashboard=True, runtime_env={"env_vars": env})
    return True
