"""The Ray Train worker: one trial's search as a Ray Train run (``trainer.DartboardTrainer``) with N workers.

Per rank: one seed builds one searcher (rank 0's alphas are broadcast anyway), a ``DistributedSampler`` shards the
search split, the Searcher protocol distributes the searcher (``distribute(wrap=DDP, reduce_arch_grads=all-reduce
mean)``): every rank takes the same alpha step, derives the same genotype; nothing else is reached into.

Every epoch the all-reduced metrics are reported with a checkpoint (``checkpoint.py``); a restored trial loads the
searcher's full state (RNG included) and continues bit-identically. With ``final_training.scope: trial`` rank 0 then
trains the derived genotype from scratch and the last report carries its test metrics. A NaN/inf loss ends the trial
with a ``nonfinite`` report.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dartboard.collector import collect_less_often
from dartboard.errors import UserInputError, is_user_error, one_line
from dartboard.platform.ray import checkpoint as ck

#: Tests hold a trial at a state they control: after each epoch's report, rank 0 appends
#: "KEY EPOCH" to DIR/epochs.log and waits while DIR/hold exists (never a timer).
EPOCH_GATE_ENV = "DARTBOARD_EPOCH_GATE"

if TYPE_CHECKING:
    import torch
# torch is imported where a function needs it: Tune's trial actor imports this module for
# ``make_trainer`` and never touches a tensor (2 CPU s of import per trial saved, backend.py).


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
    import torch
    import torch.distributed as dist

    keys = sorted(metrics)
    vec = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    return {k: float(v) / world_size for k, v in zip(keys, vec.tolist(), strict=True)}


def broadcast_arch(searcher: Any) -> None:
    """Make rank 0's alphas everyone's (identical seeds already give identical alphas)."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for p in searcher.arch_parameters():
            dist.broadcast(p.data, src=0)


def replica_digest(searcher: Any, genotype: Any) -> str:
    """sha256 over the raw bytes of the alphas, the supernet weights and the derived genotype:
    equal digests on all ranks mean bit-identical replicas."""
    import hashlib

    h = hashlib.sha256()
    for p in list(searcher.arch_parameters()) + list(searcher.weight_parameters()):
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


def ddp_wrapper(device: torch.device) -> Callable[[torch.nn.Module], torch.nn.Module]:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # Masked ops (MixedOp.active) leave parameters without gradient: find_unused_parameters.
    return lambda module: DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def per_rank_batch(batch_size: int, world: int) -> int:
    """Each rank's share of the global batch. A global batch the ranks cannot share equally is refused:
    rounding down would train with a smaller batch than asked for (30 on 4 ranks: 28), silently."""
    if batch_size % world:
        raise UserInputError(f"batch_size: {batch_size} is not divisible by the {world} workers of a trial; each "
                             f"DDP rank takes batch_size / workers samples per step, so use a multiple of {world} "
                             f"(e.g. {batch_size - batch_size % world or world})")
    return batch_size // world


def sharded_loaders(cfg: Any, splits: Any, rank: int, world: int, fraction: float):
    """The search split's train/val halves, each sharded over ranks (equal batch counts per rank)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from dartboard.data.datasets import check_batch, search_split

    train, val = search_split(splits.train, cfg.seed, fraction)
    per_rank = per_rank_batch(cfg.batch_size, world)  # the global batch stays cfg.batch_size
    samplers = [DistributedSampler(d, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed + i, drop_last=True)
                for i, d in enumerate((train, val))]
    check_batch(per_rank, {"search training split's shard of one rank": len(samplers[0]),
                           "search validation split's shard of one rank": len(samplers[1])})
    loaders = [DataLoader(d, batch_size=per_rank, sampler=s, drop_last=True)
               for d, s in zip((train, val), samplers, strict=True)]
    return loaders, samplers, (train, val)


class NonFiniteLossError(FloatingPointError):
    """A trial whose loss became NaN or inf."""


def supernet_objective(metrics: dict[str, float]) -> float:
    """What a study maximises for ``objective.kind: supernet``: the supernet's validation accuracy, or,
    for an objective without accuracy (a regression such as the PMSM criterion C), minus its
    validation loss (NaN while there is none yet, e.g. in warm-up epochs)."""
    if "val_acc" in metrics:
        return metrics["val_acc"]
    return -metrics["val_loss"] if "val_loss" in metrics else math.nan


def nonfinite_reason(metrics: dict[str, float], epoch: int) -> str | None:
    for key in ("train_loss", "val_loss"):
        if key in metrics and not math.isfinite(metrics[key]):
            return f"{key} became {metrics[key]} in epoch {epoch}"
    return None


# ------------------------------------------------------------------ the worker loop
def search_loop_per_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``. ``config``: ``run`` (SearchRunConfig fields), ``objective``
    (StudyObjective fields), ``final`` (FinalTraining fields or None), ``key`` (the trial's name).

    An error about the trial's input (its data folder, a file in it that cannot be read, an option) ends the trial
    with an ``input_error`` report: retrying it, as Ray Train and Tune retry a failed worker, would fail alike."""
    collect_less_often()  # dartboard/collector.py
    cwd = config.get("cwd")
    if cwd and os.path.isdir(cwd):  # a cluster's node without the command's folder keeps Ray's
        os.chdir(cwd)
    try:
        _search_loop(config)
    except Exception as err:  # noqa: BLE001 - only the user's input errors end here; the others are raised again
        import ray.train

        if not is_user_error(err) or ray.train.get_context().get_world_size() > 1:
            raise  # of several ranks, one would wait for the others: the run ends, trial.run_trial reports it
        ray.train.report({**input_error_report(err, config.get("required_metrics", ())), **trial_place()})


def _search_loop(config: dict[str, Any]) -> None:  # noqa: C901  (to split)
    import ray.train
    import ray.train.torch
    import torch

    from dartboard.bench.regret import attach_if_tiny81
    from dartboard.data.catalog import load_dataset
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.ray.derived import derived_score
    from dartboard.searchers.base import seed_everything
    from dartboard.searchers.registry import DataShape, build_searcher

    cfg = SearchRunConfig(**config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    seed_everything(cfg.seed)
    splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    shape = DataShape(splits.info.in_channels, splits.info.input_size, splits.info.num_classes)
    searcher = build_searcher(cfg.searcher, cfg.searcher_options(), shape, str(device))
    attach_if_tiny81(searcher)  # in the tabular space, every epoch's report carries the looked-up regret
    fraction = cfg.train_fraction if cfg.train_fraction is not None else searcher.train_fraction
    (train_loader, val_loader), samplers, halves = sharded_loaders(cfg, splits, rank, world, fraction)
    progress: dict[str, Any] = {"history": [], "search_seconds": 0.0, "done": False}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / ck.STATUS_FILE).is_file():  # the trial diverged before: say so again, do not retrain
                ray.train.report({**json.loads((Path(d) / ck.STATUS_FILE).read_text()), **trial_place()})
                return
            searcher.load_state_dict(ck.load_state(Path(d) / ck.STATE_FILE))
            progress = ck.read_progress(Path(d))
    where = trial_place()
    progress.setdefault("started", time.time())  # wall-clock start and epoch ends: the trial run's real times
    if progress["done"]:  # finished before a driver crash: report the last result again
        ray.train.report({**progress["history"][-1], **where})
        return
    if world > 1:
        searcher.distribute(ddp_wrapper(device), average_grads_hook(world))
        broadcast_arch(searcher)

    from dartboard.searchers.loop import run_epoch

    epochs, final = searcher.epochs, config.get("final")
    genotype = model_files = None
    searched = bool(progress["history"]) and progress["history"][-1].get("search_done") == 1.0
    for epoch in range(epochs if searched else searcher.epoch, epochs):
        for s in samplers:
            s.set_epoch(epoch)
        start = time.perf_counter()
        metrics = allreduce_mean(run_epoch(searcher, train_loader, val_loader), device, world)
        progress["search_seconds"] += time.perf_counter() - start
        done_epochs = epoch + 1
        reason = nonfinite_reason(metrics, done_epochs)
        try:
            genotype = None if reason else searcher.derive()
        except FloatingPointError as err:  # NaN/inf alphas with finite losses: the same divergence
            reason = f"{err} in epoch {done_epochs}"
        if reason is not None:
            _report_nonfinite(rank, reason, done_epochs, config.get("required_metrics", ()))
            return
        last = done_epochs == epochs or bool(searcher.stop_requested)
        digests = gather_digests(replica_digest(searcher, genotype), world)
        report = {**metrics, **where,
                  "replicas_identical": float(len(set(digests)) == 1), "replica_digests": digests,
                  "epoch": done_epochs, "objective": supernet_objective(metrics), "search_done": float(last),
                  "search_seconds": progress["search_seconds"], "genotype": genotype_json(genotype), "done": 0.0}
        if last and config["objective"]["kind"] == "derived":
            scores, model_files = derived_score(genotype, splits, halves, config["objective"], cfg, device, rank,
                                                searcher)
            report.update(zip(scores, _broadcast(list(scores.values()), device), strict=True))
            report["objective"] = report["derived_acc"]
        report["done"] = float(last and final is None)
        progress["history"].append(_numbers(report))
        progress.setdefault("times", []).append(time.time())
        progress.setdefault("genotypes", []).append(report["genotype"])
        progress["done"] = bool(report["done"])
        _report(report, searcher, progress, rank, partial(ck.write_last, searcher=searcher, model=model_files)
                if last else None)
        _epoch_gate(config.get("key", ""), done_epochs, rank)
        if last:
            break
    if final is not None:
        _final_training(searcher, genotype, splits, config, cfg, device, rank, progress, where)


def _numbers(report: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _report(report: dict[str, Any], searcher: Any, progress: dict[str, Any], rank: int,
            extra: Callable[[Path], None] | None = None) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            ck.write_epoch(Path(d), searcher, progress, report["genotype"])
            if extra is not None:
                extra(Path(d))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(report, checkpoint=checkpoint)


def _epoch_gate(key: str, epoch: int, rank: int) -> None:
    gate = os.environ.get(EPOCH_GATE_ENV)
    if not gate or rank != 0:
        return
    with open(Path(gate) / "epochs.log", "a") as f:
        f.write(f"{key} {epoch}\n")
    while (Path(gate) / "hold").exists():
        time.sleep(0.1)


def _report_nonfinite(rank: int, reason: str, epoch: int, required: Sequence[str] = ()) -> None:
    import ray.train

    # Tune refuses a result without the metrics its searcher/scheduler expect: they are NaN here
    # (Optuna never receives them as values; ASHA's comparisons ignore NaN).
    status = {**{k: math.nan for k in required}, "nonfinite": 1.0, "error": reason, "epoch": epoch,
              "search_done": 0.0, "done": 1.0, **trial_place()}
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            (Path(d) / ck.STATUS_FILE).write_text(json.dumps(status))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(status, checkpoint=checkpoint)


def trial_place() -> dict[str, str]:
    """Where this trial runs: lets the study driver free the workers' placement group when the trial ends (Ray
    Train's own cleaner fails when two Ray instances share a machine: the group would hold its CPUs for good, and
    a later trial wait for them forever). Every last report of a trial carries it."""
    import ray

    pg = ray.util.get_current_placement_group()
    return {"node_id": ray.get_runtime_context().get_node_id(), "placement_group_id": pg.id.hex() if pg else ""}


def input_error_report(err: BaseException, required: Sequence[str] = (), where: str = "") -> dict[str, Any]:
    """The trial's last report: its input cannot be used (``errors.is_user_error``: a data folder, an image in it, a
    genotype file, an option). It ends the trial (``done``): the study counts it errored and does not run it again."""
    return {**{k: math.nan for k in required}, "input_error": 1.0, "error": f"{type(err).__name__}: {one_line(err)}"
            + where, "epoch": 0, "search_done": 0.0, "done": 1.0}


def _final_training(searcher: Any, genotype: Any, splits: Any, config: dict[str, Any], cfg: Any,
                    device: torch.device, rank: int, progress: dict[str, Any], where: dict[str, str]) -> None:
    """``final_training.scope: trial``: rank 0 trains the derived genotype from scratch (seeded, so a
    retried trial gets the same network) and the last report carries its test metrics."""
    from dartboard.platform.tracking.models import NETWORK_FILE, network_spec
    from dartboard.training.final import TrainConfig, train_genotype

    final = config["final"]
    genotype = genotype if genotype is not None else searcher.derive()
    tcfg = TrainConfig(channels=final["channels"], layers=final["layers"], epochs=final["epochs"],
                       batch_size=final["batch_size"], seed=cfg.seed if final["seed"] is None else final["seed"],
                       device=str(device))
    last = dict(progress["history"][-1])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        values = [0.0] * 5
        if rank == 0:
            r = train_genotype(genotype, splits, tcfg, out)
            values = [r.test_acc, r.test_loss, float(r.parameters), r.seconds, 1.0]
            (out / NETWORK_FILE).write_text(json.dumps(network_spec(tcfg, splits.info, cfg.dataset, cfg.data_root)))
        values = _broadcast(values, device)
        result = {"test_acc": values[0], "test_error": 100.0 * (1.0 - values[0]), "test_loss": values[1],
                  "parameters": values[2], "train_seconds": values[3]}
        report = {**last, **result, **where, "genotype": genotype_json(genotype), "search_done": 1.0, "done": 1.0}
        if config["objective"]["kind"] == "final":
            report["objective"] = result["test_acc"]
        progress["history"][-1] = _numbers(report)
        progress["done"] = True

        def artifacts(folder: Path) -> None:
            for f in out.iterdir():
                (folder / f.name).write_bytes(f.read_bytes())
            (folder / ck.RESULT_FILE).write_text(json.dumps({"key": config.get("key", ""), **_numbers(report)}))
            ck.write_alphas(folder, searcher)

        _report(report, searcher, progress, rank, artifacts)


def _broadcast(values: list[float], device: torch.device) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def make_trainer(run: dict[str, Any], *, name: str, storage_path: str, workers: int = 1, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, max_failures: int = 2, objective: dict[str, Any] | None = None,
                 final: dict[str, Any] | None = None, key: str = "", callbacks: Sequence[Any] = (),
                 required_metrics: Sequence[str] = (), cwd: str | None = None):
    """A search's Train run. The deterministic ``name`` makes a relaunch resume from the last
    checkpoint (Ray Train V2 reads ``storage_path/name/checkpoint_manager_snapshot.json``). ``cwd``: the folder
    whose relative paths the run's config names (the command's), where the workers run where it exists."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from dartboard.platform.ray.trainer import DartboardTrainer

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if use_gpu else {})
    loop_config = {"run": run, "objective": objective or {"kind": "supernet"}, "final": final, "key": key,
                   "required_metrics": list(required_metrics), "threads": max(1, int(cpus_per_worker)), "cwd": cwd}
    return DartboardTrainer(
        search_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage_path, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
