"""What a trial asks of the cluster, and a clear refusal of what no cluster of this size can give."""

from __future__ import annotations

import math
import os

from dartboard.platform.config import StudyConfig

MIN_DRIVER_CPUS = 0.01


def check_resources(cfg: StudyConfig, cpus: float, gpus: float) -> None:
    """Refuse a trial that no node set of this size could ever run (one clear error, before start)."""
    r = cfg.resources
    need_cpu = r.workers * r.cpus_per_worker + r.trial_driver_cpus
    need_gpu = r.workers * r.gpus_per_worker
    if need_gpu > gpus:
        raise ValueError(f"resources.gpus_per_worker: a trial needs {r.workers} worker(s) x {r.gpus_per_worker:g} GPU "
                         f"= {need_gpu:g} GPU(s) but the cluster has {gpus:g}")
    if need_cpu > cpus:
        raise ValueError(f"resources.cpus_per_worker: a trial needs {r.workers} worker(s) x {r.cpus_per_worker:g} CPU "
                         f"+ {r.trial_driver_cpus:g} for its driver = {need_cpu:g} CPUs but the cluster has {cpus:g}")


def driver_cpus(cfg: StudyConfig) -> float:
    # Tune refuses an empty resource request; the trial's driver only waits on its trainer.
    return max(cfg.resources.trial_driver_cpus, MIN_DRIVER_CPUS)


def local_num_cpus(cfg: StudyConfig) -> int:
    """Logical CPUs of a local Ray: this machine's, or enough for ``max_concurrent`` trials (drivers
    included), so that a trial's workers never wait on CPUs another trial's idle driver holds."""
    if cfg.ray_num_cpus:
        return cfg.ray_num_cpus
    r = cfg.resources
    per_trial = r.workers * r.cpus_per_worker + driver_cpus(cfg)
    return max(os.cpu_count() or 1, math.ceil(per_trial * cfg.max_concurrent))
