"""Torch's process group for every dartboard Train run, configured without importing torch where torch
has no work: in the processes that only steer a run.

Ray's ``TorchConfig`` lives in ``ray.train.torch.config``, which imports torch at its top. A Train run's
backend config travels to Train's controller, and a trial's trainer is built in Tune's trial actor: with
``TorchConfig`` both import torch (about 2 CPU seconds each on the 2-core machine) only to unpickle a
config, although neither touches a tensor. :class:`TorchProcessGroup` is the same config in a module that
imports no torch. Everything that needs torch runs on the Train workers and calls Ray's own code there,
imported lazily: the process group (``_setup_torch_process_group``: gloo on CPU, NCCL on GPU with its
async error handling), the ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` variables, the CUDA device of each
worker, and the shutdown. What runs on the controller is the part of Ray's ``_TorchBackend.on_start``
that picks the backend and the master address. TPU backends are not supported (dartboard requests CPUs
and GPUs only).

Measured (``benchmarks/HISTORY.md``): ``benchmarks/train_run_overhead.py`` and the digits sweep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.train.backend import Backend, BackendConfig


@dataclass
class TorchProcessGroup(BackendConfig):
    """``TorchConfig`` without torch at import time. ``backend``: ``gloo``, ``nccl`` or None (NCCL when
    the workers have GPUs, else gloo); ``init_method``: ``env`` or ``tcp``; ``timeout_s``: of the process
    group's collectives."""

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return TorchBackend

    @property
    def train_func_context(self):
        return CudaDeviceContext

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": self.init_method, "timeout_s": self.timeout_s}


class CudaDeviceContext:
    """Around the train function on each worker: its CUDA device made current (Ray's own context)."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        TorchConfigContextManager().__enter__()

    def __exit__(self, *exc) -> bool:
        return False


def pick_backend(requested: str | None, resources: dict[str, float]) -> str:
    """The process group's backend: the requested one, else NCCL for GPU workers and gloo on CPU."""
    if resources.get("TPU", 0) > 0:
        raise ValueError("resources: TPU workers are not supported by dartboard's Train runs (CPU or GPU only)")
    if requested:
        return requested
    return "nccl" if resources.get("GPU", 0) > 0 else "gloo"


def init_url(init_method: str, addr: str, port: int) -> str:
    if init_method == "env":
        return "env://"
    if init_method == "tcp":
        from ray._common.network_utils import build_address

        return f"tcp://{build_address(addr, port)}"
    raise ValueError(f"init_method: {init_method!r} is not supported; use 'env' or 'tcp'")


# ------------------------------------------------------------------ run on the workers (torch is there)
def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


def _set_rank_variables() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def _init_process_group(**kwargs: Any) -> None:
    import torch.distributed as dist
    from ray.train.torch.config import _setup_torch_process_group

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    _setup_torch_process_group(**kwargs)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class TorchBackend(Backend):
    """Ray's ``_TorchBackend`` steps for CPU and GPU workers, with the torch calls made on the workers."""

    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: TorchProcessGroup) -> None:
        from ray.train._internal.utils import get_address_and_port

        backend = pick_backend(backend_config.backend, worker_group.get_resources_per_worker())
        addr, port = worker_group.execute_single(0, get_address_and_port)
        url = init_url(backend_config.init_method, addr, port)
        if backend_config.init_method == "env":
            worker_group.execute(_set_master, addr=addr, port=port)
        worker_group.execute(_set_rank_variables)  # before init_process_group, as Ray's backend does
        n = len(worker_group)
        ray.get([worker_group.execute_single_async(i, _init_process_group, backend=backend, world_rank=i,
                                                   world_size=n, init_method=url, timeout_s=backend_config.timeout_s)
                 for i in range(n)])

    def on_shutdown(self, worker_group, backend_config: TorchProcessGroup) -> None:
        from ray._private import ray_constants
        from ray.exceptions import GetTimeoutError
        from ray.train.constants import (
            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
        )

        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout = ray_constants.env_integer(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        try:
            ray.get(futures, timeout=timeout)
        except GetTimeoutError:
            import logging

            logging.getLogger("dartboard").warning("torch process group shutdown timed out after %s s", timeout)
