"""The Ray Train worker: one search as a ``ray.train.torch.TorchTrainer`` with N workers.

Per rank: the same seed builds the same searcher (so the alphas start identical; rank 0's are
broadcast anyway), the search split is sharded with a ``DistributedSampler``, the network weights
train under DDP and the alpha gradients are averaged over ranks (``searcher.distribute``), so every
rank takes the same alpha step and derives the same genotype. Any searcher works through the
Searcher protocol (``dartboard.searchers.protocol``).

Every epoch the all-reduced metrics are reported with a checkpoint of ``searcher.state_dict()``
(weights, alphas, optimizers, schedulers, schedule/regularizer state, masks, history, RNG), saved
as plain containers with ``torch.save`` and read back with ``torch.load(weights_only=True)``: no
unpickling of arbitrary objects. A loss that becomes NaN/inf ends the run with a ``nonfinite``
report and a marker checkpoint, so that a retry does not train the diverged trial again.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dartboard.training.checkpoint import load_state, save_state

STATE_FILE = "searcher.pt"
STATUS_FILE = "status.json"


# ------------------------------------------------------------------ distributed pieces
def average_grads_hook(world_size: int) -> Callable[[Sequence[torch.Tensor]], None]:
    """``reduce_arch_grads``: all-reduce each alpha gradient in place and divide by the world size."""
    import torch.distributed as dist

    def reduce(grads: Sequence[torch.Tensor]) -> None:
        for g in grads:
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            g.div_(world_size)

    return reduce


def allreduce_mean(metrics: dict[str, float], device: torch.device, world_size: int) -> dict[str, float]:
    """The mean of each metric over ranks (keys sorted so every rank packs the same vector)."""
    if world_size == 1:
        return dict(metrics)
    import torch.distributed as dist

    keys = sorted(metrics)
    vec = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    return {k: float(v) / world_size for k, v in zip(keys, vec.tolist(), strict=True)}


def broadcast_arch(searcher: Any) -> None:
    """Make rank 0's alphas everyone's (identical seeds already give identical alphas)."""
    import torch.distributed as dist

    with torch.no_grad():
        for p in searcher.arch_parameters():
            dist.broadcast(p.data, src=0)


def replica_digest(searcher: Any, genotype: Any) -> str:
    """sha256 over the raw bytes of the alphas, the network parameters and the derived genotype:
    equal digests on all ranks mean bit-identical replicas."""
    import hashlib

    h = hashlib.sha256()
    for p in searcher.arch_parameters() + searcher.weight_parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    h.update(genotype_json(genotype).encode())
    return h.hexdigest()


def genotype_json(genotype: Any) -> str:
    from dartboard.spaces import genotype as gt

    try:
        return json.dumps(gt.to_dict(genotype), sort_keys=True)
    except (TypeError, gt.GenotypeError):  # a searcher deriving something else than a genotype
        return json.dumps(repr(genotype))


def gather_digests(digest: str, world: int) -> list[str]:
    if world == 1:
        return [digest]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, digest)
    return [str(d) for d in out]


def ddp_wrapper(device: torch.device):
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # Masked ops (MixedOp.active) leave parameters without gradient: find_unused_parameters.
    return lambda module: DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def sharded_loaders(cfg: Any, splits: Any, rank: int, world: int, searcher: Any = None):
    """The search split's train/val halves, each sharded over ranks (equal batch counts per rank)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from dartboard.data.datasets import search_split
    from dartboard.platform.run import train_fraction

    train, val = search_split(splits.train, cfg.seed, train_fraction(cfg, searcher))
    per_rank = max(1, cfg.batch_size // world)  # the global batch stays cfg.batch_size
    samplers = [DistributedSampler(d, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed + i, drop_last=True)
                for i, d in enumerate((train, val))]
    if len(samplers[0]) < per_rank:
        raise ValueError(f"batch_size: {cfg.batch_size} is larger than one rank's shard ({len(samplers[0])} samples)")
    loaders = [DataLoader(d, batch_size=per_rank, sampler=s, drop_last=True)
               for d, s in zip((train, val), samplers, strict=True)]
    return loaders, samplers, (train, val)


class NonFiniteLossError(FloatingPointError):
    """A trial whose loss became NaN or inf."""


def nonfinite_reason(metrics: dict[str, float], epoch: int) -> str | None:
    for key in ("train_loss", "val_loss"):
        if key in metrics and not math.isfinite(metrics[key]):
            return f"{key} became {metrics[key]} in epoch {epoch}"
    return None


# ------------------------------------------------------------------ the worker loop
def search_loop_per_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the search TorchTrainer. ``config``: ``run`` (SearchRunConfig
    fields), ``objective`` (SweepObjective fields or None)."""
    import ray
    import ray.train
    import ray.train.torch

    from dartboard.bench.regret import attach_if_tiny81
    from dartboard.data.datasets import load_dataset
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.run import data_shape
    from dartboard.searchers.base import seed_everything
    from dartboard.searchers.loop import run_epoch
    from dartboard.searchers.registry import build_searcher

    cfg = SearchRunConfig(**config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(cfg.seed)
    splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    searcher = build_searcher(cfg.searcher, cfg.searcher_options(), data_shape(splits), str(device))
    attach_if_tiny81(searcher)  # in the tabular space, every epoch's report carries the looked-up regret
    (train_loader, val_loader), samplers, halves = sharded_loaders(cfg, splits, rank, world, searcher)
    epochs = searcher.epochs

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            status = Path(d) / STATUS_FILE
            if status.is_file():  # the trial diverged before: say so again, do not retrain
                ray.train.report(json.loads(status.read_text()))
                return
            searcher.load_state_dict(load_state(Path(d) / STATE_FILE))
    if world > 1:
        searcher.distribute(ddp_wrapper(device), average_grads_hook(world))
        broadcast_arch(searcher)

    pg = ray.util.get_current_placement_group()
    pg_id = pg.id.hex() if pg is not None else ""  # lets the sweep driver free it when ASHA stops the trial
    start_epoch = searcher.epoch
    for epoch in range(start_epoch, epochs):
        for s in samplers:
            s.set_epoch(epoch)
        metrics = allreduce_mean(run_epoch(searcher, train_loader, val_loader), device, world)
        done_epochs = epoch + 1
        reason = nonfinite_reason(metrics, done_epochs)
        if reason is not None:
            _report_nonfinite(rank, reason, done_epochs, config.get("required_metrics", ()))
            return
        stop = searcher.stop_requested
        try:
            genotype = searcher.derive()
        except FloatingPointError as err:  # NaN/inf alphas with finite losses: the same divergence
            _report_nonfinite(rank, f"{err} in epoch {done_epochs}", done_epochs, config.get("required_metrics", ()))
            return
        digests = gather_digests(replica_digest(searcher, genotype), world)
        report = {**metrics, "node_id": ray.get_runtime_context().get_node_id(), "placement_group_id": pg_id,
                  "replicas_identical": float(len(set(digests)) == 1), "replica_digests": digests,
                  "epoch": done_epochs, "objective": metrics.get("val_acc", 0.0),
                  "search_done": float(done_epochs == epochs or stop), "genotype": genotype_json(genotype)}
        last = done_epochs == epochs or stop
        if last and (config.get("objective") or {}).get("kind") == "derived":
            report["derived_acc"] = _derived_accuracy(genotype, splits, halves, config["objective"], cfg, device,
                                                      rank, world)
            report["objective"] = report["derived_acc"]
        _report_with_checkpoint(report, searcher, rank)
        if stop:
            break


def _report_with_checkpoint(report: dict[str, Any], searcher: Any, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            save_state(searcher.state_dict(), Path(d) / STATE_FILE)
            (Path(d) / "genotype.json").write_text(report["genotype"])
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(report, checkpoint=checkpoint)


def _report_nonfinite(rank: int, reason: str, epoch: int, required: Sequence[str] = ()) -> None:
    import ray.train

    # Tune refuses a result without the metrics its searcher/scheduler expect: they are NaN here
    # (Optuna never receives them as values; ASHA's comparisons ignore NaN).
    status = {**{k: math.nan for k in required}, "nonfinite": 1.0, "error": reason, "epoch": epoch,
              "search_done": 0.0}
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            (Path(d) / STATUS_FILE).write_text(json.dumps(status))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(status, checkpoint=checkpoint)


def _derived_accuracy(genotype: Any, splits: Any, halves: Any, objective: dict[str, Any], cfg: Any,
                      device: torch.device, rank: int, world: int) -> float:
    """Train the derived architecture briefly on the search-train half, score it on the val half
    (never on the test split: the sweep selects on this number). Rank 0 trains; all ranks agree."""
    from dartboard.data.datasets import Splits
    from dartboard.training.final import TrainConfig, train_genotype

    acc = 0.0
    if rank == 0:
        tcfg = TrainConfig(channels=objective["train_channels"], layers=objective["train_layers"],
                           epochs=objective["train_epochs"], batch_size=objective["train_batch_size"],
                           seed=cfg.seed, device=str(device))
        acc = train_genotype(genotype, Splits(halves[0], halves[1], splits.info), tcfg).test_acc
    if world > 1:
        import torch.distributed as dist

        t = torch.tensor([acc], dtype=torch.float64, device=device)
        dist.broadcast(t, src=0)
        acc = float(t.item())
    return acc


def make_trainer(run: dict[str, Any], *, name: str, storage_path: str, workers: int = 1, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, max_failures: int = 2, objective: dict[str, Any] | None = None,
                 callbacks: Sequence[Any] = (), required_metrics: Sequence[str] = ()):
    """A search TorchTrainer. The deterministic ``name`` makes a relaunch resume from the last
    checkpoint (Ray Train V2 reads ``storage_path/name/checkpoint_manager_snapshot.json``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        search_loop_per_worker,
        train_loop_config={"run": run, "objective": objective, "required_metrics": list(required_metrics)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage_path, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
