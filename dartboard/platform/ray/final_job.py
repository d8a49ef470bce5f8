"""Final training as a Ray Train job: the DARTS evaluation protocol (``training/protocol.py``) with DDP
over N workers (gloo on CPU, NCCL on GPU), the training split sharded per worker, a checkpoint every
epoch in the trial checkpoint format (``checkpoint.py``: ``searcher.pt`` holds the trainer's state),
and Ray Train's ``FailureConfig``: a lost worker (or node) restarts the group from the last committed
checkpoint, and a relaunch of the same command (a lost driver) continues the same run.

The global batch is ``batch_size``; each of the W ranks takes ``batch_size / W`` samples of it per step
(``DistributedSampler``: rank r gets positions r, r + W, ... of one seeded permutation), so the summed
gradient is the global batch's. BatchNorm statistics are per rank (no SyncBatchNorm on CPU): a W-worker
run matches a 1-worker run closely, not bit for bit. Rank 0's last checkpoint holds the trained network
(``weights.safetensors``, ``genotype.json``, ``network.json``, ``train.json``), copied to the output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dartboard.collector import collect_less_often
from dartboard.errors import UserInputError, one_line
from dartboard.model_files import GENOTYPE_FILE, NETWORK_FILE, TRAIN_FILE, WEIGHTS_FILE
from dartboard.platform.ray import checkpoint as ck
from dartboard.platform.ray.storage import run_checkpoints
from dartboard.platform.ray.worker import (
    EPOCH_GATE_ENV,
    _broadcast,
    _epoch_gate,
    _numbers,
    allreduce_mean,
    ddp_wrapper,
    gather_digests,
    per_rank_batch,
)

RUN_NAME = "final"  # one training per output folder: a relaunch with the same --out resumes it
RAY_DIR = "ray"  # under the output folder: Ray Train's storage (checkpoints, snapshot)
RANK_SEED_STRIDE = 7919  # rank r > 0 reseeds with seed + stride * r after the (shared) initialisation
PID_FILE = "worker-0.pid"  # written next to the epoch gate's log: the process a fault test kills
MODEL_FILES = (WEIGHTS_FILE, GENOTYPE_FILE, NETWORK_FILE, TRAIN_FILE)


def job_identity(genotype: dict[str, Any], train: dict[str, Any], dataset: str, image_size: int = 32
                 ) -> dict[str, Any]:
    """What must agree between a checkpoint and the training that resumes from it (all but the device;
    the input size of image folders included)."""
    return {"genotype": genotype, "dataset": dataset, "image_size": int(image_size),
            "train": {k: v for k, v in train.items() if k != "device"}}


def weights_digest(net: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for key, value in net.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def broadcast_buffers(net: torch.nn.Module) -> None:
    """Rank 0's BatchNorm running statistics everywhere. DDP broadcasts them before each forward, so
    after the epoch's last step every rank holds its own; the checkpoint and the test use rank 0's."""
    import torch.distributed as dist

    with torch.no_grad():
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)


def sharded_train_loader(train: Any, batch_size: int, seed: int, rank: int, world: int):
    from torch.utils.data import DataLoader, DistributedSampler

    from dartboard.data.datasets import check_batch

    per_rank = per_rank_batch(batch_size, world)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    check_batch(per_rank, {"training split's shard of one rank": len(sampler)})
    return DataLoader(train, batch_size=per_rank, sampler=sampler, drop_last=True), sampler


# ------------------------------------------------------------------ the worker loop
def final_loop_per_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``. ``config``: ``genotype`` (dict), ``train`` (TrainConfig fields),
    ``dataset``, ``data_root``, ``image_size``, ``threads``, ``mlflow`` (an ``EpochLogger`` or None: rank 0
    logs each epoch's metrics into the training's MLflow run as the epoch ends)."""
    collect_less_often()  # dartboard/collector.py
    import ray.train
    import ray.train.torch

    from dartboard.data.catalog import load_dataset
    from dartboard.platform.tracking.epochs import log_epoch_safely
    from dartboard.searchers.base import seed_everything, set_rng_state
    from dartboard.spaces import genotype as gt
    from dartboard.training.final import TrainConfig, check_cutout, network_of
    from dartboard.training.protocol import FinalTrainer

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    cfg = TrainConfig(**{**config["train"], "device": str(device)})
    genotype = gt.from_dict(config["genotype"])
    seed_everything(cfg.seed)
    splits = load_dataset(config["dataset"], config["data_root"], int(config.get("image_size", 32)))
    check_cutout(cfg, splits.info.input_size)
    net = network_of(genotype, cfg, splits.info).to(device)
    loader, sampler = sharded_train_loader(splits.train, cfg.batch_size, cfg.seed, rank, world)
    trainer = FinalTrainer(net, cfg, device, ddp_wrapper(device) if world > 1 else None)
    if rank > 0:  # the same init everywhere (DDP broadcasts it), then each rank its own drop-path/cutout draws
        seed_everything(cfg.seed + RANK_SEED_STRIDE * rank)
    identity = job_identity(config["genotype"], config["train"], config["dataset"], config.get("image_size", 32))
    progress: dict[str, Any] = {"history": [], "resumed_at": [], "done": False, "identity": identity}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            check_same_training(Path(d), identity)
            state = ck.load_state(Path(d) / ck.STATE_FILE)
            trainer.load_state_dict(state)
            if rank < len(state.get("rng_ranks", [])):
                set_rng_state(state["rng_ranks"][rank])
            progress = ck.read_progress(Path(d))
        progress["resumed_at"].append(trainer.epoch)
    if progress["done"]:  # finished before the driver was lost: report the last result again
        ray.train.report({**progress["history"][-1], "finished_before": 1.0})
        return
    for epoch in range(trainer.epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        metrics = allreduce_mean({k: v for k, v in trainer.train_epoch(loader).items() if k != "epoch"}, device, world)
        if world > 1:
            broadcast_buffers(net)
        digests = gather_digests(weights_digest(net), world)
        report = {**metrics, "epoch": trainer.epoch, "workers": world, "restarts": len(progress["resumed_at"]),
                  "replicas_identical": float(len(set(digests)) == 1), "replica_digests": digests}
        if rank == 0:  # as the epoch ends; an epoch repeated after a restart is already in the run: skipped
            log_epoch_safely(config.get("mlflow"), trainer.epoch - 1, report)
        last = trainer.epoch == cfg.epochs
        progress["history"].append(_numbers(report))
        progress["done"] = last
        out = Path(tempfile.mkdtemp(prefix="dartboard-final-")) if last else None
        if out is not None:
            report.update(_finish(net, genotype, cfg, splits, (config["dataset"], config["data_root"]), device, rank,
                                  out, progress))
            progress["history"][-1] = _numbers(report)
        _report(report, trainer, progress, rank, world, json.dumps(gt.to_dict(genotype), sort_keys=True), out)
        _gate(rank, trainer.epoch)


def check_same_training(folder: Path, identity: dict[str, Any]) -> None:
    """A checkpoint of another genotype, data set or training config is refused, never loaded."""
    check_identity(str(folder), ck.read_progress(folder).get("identity"), identity)


def check_identity(where: str, recorded: dict[str, Any] | None, identity: dict[str, Any]) -> None:
    """``recorded`` (the identity in the checkpoint at ``where``) must be this training's ``identity``."""
    if recorded is None:
        raise UserInputError(f"checkpoint {where}: not a final-training checkpoint (no identity in "
                             f"{ck.PROGRESS_FILE}); use a new output folder")
    differ = [k for k in ("genotype", "dataset") if recorded.get(k) != identity[k]]
    if recorded.get("image_size", 32) != identity.get("image_size", 32):  # recorded since 2026-12-03; 32 before
        differ.append("image_size")
    differ += [f"train.{k}" for k in sorted(identity["train"]) if recorded["train"].get(k) != identity["train"][k]]
    if differ:
        raise UserInputError(f"checkpoint {where}: it belongs to another training ({', '.join(differ)} differ); "
                             f"use a new output folder, or the same genotype and settings to resume it")


def _finish(net, genotype, cfg, splits, data: tuple[str, str | None], device: torch.device, rank: int, out: Path,
            progress: dict[str, Any]) -> dict[str, float]:
    """Rank 0 evaluates on the test split and writes the model files into ``out``; all ranks agree."""
    from dartboard.data.datasets import make_loader
    from dartboard.platform.tracking.models import NETWORK_FILE, network_spec
    from dartboard.spaces.networks import count_parameters
    from dartboard.training.final import evaluate, save_trained

    values = [0.0, 0.0, float(count_parameters(net))]
    if rank == 0:
        values[:2] = evaluate(net, make_loader(splits.test, 256, shuffle=False, seed=cfg.seed), device)
        save_trained(net, genotype, cfg, out, {"test_acc": values[0], "test_loss": values[1],
                                               "history": progress["history"]})
        (out / NETWORK_FILE).write_text(json.dumps(network_spec(cfg, splits.info, *data)))
    values = _broadcast(values, device)
    return {"test_acc": values[0], "test_loss": values[1], "parameters": values[2]}


def gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _report(report: dict[str, Any], trainer: Any, progress: dict[str, Any], rank: int, world: int,
            genotype_json: str, model_dir: Path | None) -> None:
    import ray.train

    from dartboard.searchers.base import rng_state

    rngs = gather_objects(rng_state(), world)  # every rank resumes its own random stream
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            ck.save_state({**trainer.state_dict(), "rng_ranks": rngs}, Path(d) / ck.STATE_FILE)
            (Path(d) / ck.PROGRESS_FILE).write_text(json.dumps(progress))
            (Path(d) / ck.GENOTYPE_FILE).write_text(genotype_json)
            if model_dir is not None:
                for name in MODEL_FILES:
                    shutil.copy2(model_dir / name, Path(d) / name)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(report, checkpoint=checkpoint)
    if model_dir is not None:
        shutil.rmtree(model_dir, ignore_errors=True)


def _gate(rank: int, epoch: int) -> None:
    """Tests hold the job after an epoch (``EPOCH_GATE_ENV``) and may kill rank 0 (its pid is written)."""
    gate = os.environ.get(EPOCH_GATE_ENV)
    if gate and rank == 0:
        (Path(gate) / PID_FILE).write_text(str(os.getpid()))
    _epoch_gate(RUN_NAME, epoch, rank)


# ------------------------------------------------------------------ the driver
def make_final_trainer(genotype: dict[str, Any], train: dict[str, Any], dataset: str, data_root: str | None,
                       storage_path: str, *, workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                       max_failures: int = 2, image_size: int = 32, mlflow: Any = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from dartboard.platform.ray.trainer import DartboardTrainer

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if use_gpu else {})
    return DartboardTrainer(
        final_loop_per_worker,
        train_loop_config={"genotype": genotype, "train": train, "dataset": dataset, "data_root": data_root,
                           "image_size": image_size, "mlflow": mlflow, "threads": max(1, int(cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=RUN_NAME, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )


def check_resources(workers: int, cpus_per_worker: float, gpus_per_worker: float, cpus: float, gpus: float) -> None:
    """More than the cluster has is refused before anything starts (one clear error)."""
    if workers < 1:
        raise UserInputError(f"--workers: expected at least 1 worker, got {workers}")
    if workers * gpus_per_worker > gpus:
        raise UserInputError(f"--gpus-per-worker: {workers} worker(s) x {gpus_per_worker:g} GPU = "
                             f"{workers * gpus_per_worker:g} GPU(s) asked for, but the cluster has {gpus:g}")
    if workers * cpus_per_worker > cpus:
        raise UserInputError(f"--workers: {workers} worker(s) x {cpus_per_worker:g} CPU = "
                             f"{workers * cpus_per_worker:g} CPUs asked for, but the cluster has {cpus:g}")


def train_on_ray(genotype: Any, cfg: Any, dataset: str, data_root: str | None, out_dir: str | Path, *,
                 workers: int, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, address: str | None = None,
                 max_failures: int = 2, storage: str | None = None, image_size: int = 32, mlflow: Any = None):
    """Run (or resume) the final training of ``genotype`` as a Ray Train job; the model files land in
    ``out_dir``, the checkpoints under ``storage`` (default ``out_dir/ray``; a multi-node cluster needs
    storage every node sees: NFS, s3://, gs://); ``mlflow``: an ``EpochLogger`` that rank 0 calls after
    each epoch. Returns a ``TrainResult`` and the last metrics."""
    from dataclasses import asdict

    import ray

    from dartboard.data.catalog import absolute_root
    from dartboard.platform.ray.session import init_ray, stop_ray
    from dartboard.spaces import genotype as gt
    from dartboard.training.final import TrainResult

    train = {k: v for k, v in asdict(cfg).items() if k != "device"}
    data_root = absolute_root(data_root)  # the workers' working folder is not this command's
    per_rank_batch(cfg.batch_size, workers)  # refused here, not in every worker
    if address is None:
        check_resources(workers, cpus_per_worker, gpus_per_worker, float("inf"), float(torch.cuda.device_count()))
    out = Path(out_dir).resolve()
    storage = storage or str(out / RAY_DIR)
    identity = job_identity(gt.to_dict(genotype), train, dataset, image_size)
    # refused here, before Ray starts, on local and remote storage alike (the workers check again)
    for where, progress in run_checkpoints(f"{storage}/{RUN_NAME}"):
        check_identity(where, progress.get("identity"), identity)
    started = init_ray(address=address, num_cpus=max(os.cpu_count() or 1, int(workers * cpus_per_worker) + 1))
    try:
        total = ray.cluster_resources()
        check_resources(workers, cpus_per_worker, gpus_per_worker, float(total.get("CPU", 0)),
                        float(total.get("GPU", 0)))
        start = time.perf_counter()
        trainer = make_final_trainer(gt.to_dict(genotype), train, dataset, data_root, storage, workers=workers,
                                     cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                                     max_failures=max_failures, image_size=image_size, mlflow=mlflow)
        try:
            result = trainer.fit()
        except Exception as err:
            from dartboard.platform.ray.trainer import input_error_of

            found = input_error_of(err)
            if found is None:
                raise
            raise UserInputError(f"{one_line(found[1])} (rank {found[0]} of the Ray Train job)") from None
        seconds = time.perf_counter() - start
    finally:
        if started:  # this call's own Ray instance (a study's or a test's stays up)
            stop_ray()
    with result.checkpoint.as_directory() as d:
        progress = ck.read_progress(Path(d))
        _publish(Path(d), out)
    m = dict(result.metrics)
    from dartboard.training.final import sha256_file

    weights = out / MODEL_FILES[0]
    history = [{k: v for k, v in h.items() if k in ("epoch", "train_loss", "train_acc", "lr")}
               for h in progress["history"]]
    return TrainResult(m["test_acc"], m["test_loss"], int(m["parameters"]), seconds, weights, sha256_file(weights),
                       history), {**m, "resumed_at": progress.get("resumed_at", [])}


def _publish(checkpoint: Path, out: Path) -> None:
    """Copy the model files into ``out``: each written beside its target first, then renamed over it; a genotype
    file already there that holds the same genotype (a search's, a pulled one) is kept as it is."""
    from dartboard.spaces import genotype as gt

    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if name == GENOTYPE_FILE and gt.holds(out / name, gt.load(checkpoint / name)):
            continue
        partial = out / f".{name}.partial"
        shutil.copy2(checkpoint / name, partial)
        os.replace(partial, out / name)
