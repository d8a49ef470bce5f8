"""The Ray Train search worker: plain checkpoints (weights_only), and DDP with 2 real workers."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from dartboard.platform.ray.checkpoint import STATE_FILE
from dartboard.platform.ray.worker import allreduce_mean, nonfinite_reason
from dartboard.searchers.base import seed_everything
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.training.checkpoint import from_plain, load_state, save_state, to_plain

TINY = {"C": 4, "layers": 2, "epochs": 2}
SHAPE = DataShape(1, 8, 10)


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def test_plain_roundtrip_keeps_numpy_rng_and_tuples():
    state = {"rng": (np.random.get_state(), random.getstate()), "x": [np.float64(1.5), {"t": torch.ones(2)}]}
    back = from_plain(to_plain(state))
    assert back["rng"][0][0] == "MT19937" and np.array_equal(back["rng"][0][1], state["rng"][0][1])
    assert back["rng"][0][1].dtype == np.uint32 and back["rng"][1] == state["rng"][1]
    assert back["x"][0] == 1.5 and torch.equal(back["x"][1]["t"], torch.ones(2))


def test_checkpoint_weights_only_resumes_exactly(tmp_path):
    """Save mid-search, load into a fresh searcher (torch.load weights_only=True): the next steps
    give bit-identical alphas and weights to the uninterrupted run."""
    batches = _batches(6, 0)
    seed_everything(0)
    a = build_searcher("darts", TINY, SHAPE)
    for tb, vb in zip(batches[:3], batches[3:], strict=True):
        a.step(tb, vb)
    a.end_epoch()
    save_state(a.state_dict(), tmp_path / STATE_FILE)
    seed_everything(123)  # a different process state; the checkpoint must restore everything
    b = build_searcher("darts", TINY, SHAPE)
    b.load_state_dict(load_state(tmp_path / STATE_FILE))
    assert b.epoch == 1 and b.global_step == 3
    from dartboard.searchers.base import set_rng_state

    rng = load_state(tmp_path / STATE_FILE)["rng"]
    draws = []
    for _ in range(2):
        set_rng_state(rng)
        draws.append([torch.rand(1).item(), np.random.rand(), random.random()])
    assert draws[0] == draws[1]  # the RNG state survives the weights_only round trip
    for s in (a, b):
        set_rng_state(rng)
        s.step(batches[0], batches[1])
    for pa, pb in zip(list(a.supernet.parameters()) + list(a.arch.parameters()),
                      list(b.supernet.parameters()) + list(b.arch.parameters()), strict=True):
        assert torch.equal(pa, pb)


def test_nonfinite_reason_names_the_metric():
    assert nonfinite_reason({"train_loss": math.nan, "val_loss": 1.0}, 3) == "train_loss became nan in epoch 3"
    assert nonfinite_reason({"train_loss": 0.5, "val_loss": math.inf}, 1).startswith("val_loss became inf")
    assert nonfinite_reason({"train_loss": 0.5, "val_loss": 0.4}, 1) is None
    assert allreduce_mean({"a": 1.0}, torch.device("cpu"), 1) == {"a": 1.0}


def _torch_modules_probe(path: str):
    """A Ray Train user callback (it runs in Train's controller) that writes the torch modules imported
    there. Built from a code string, so that pickling it does not reference this module (which imports
    torch): the controller unpickles only what the run itself brings."""
    scope: dict = {}
    exec("import json, sys\n"
         "from ray.train import UserCallback\n"
         "class TorchModulesProbe(UserCallback):\n"
         "    def __init__(self, path):\n"
         "        self.path = path\n"
         "    def after_report(self, run_context, metrics, checkpoint):\n"
         "        with open(self.path, 'w') as f:\n"
         "            json.dump(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'), f)\n", scope)
    return scope["TorchModulesProbe"](path)


def test_a_trials_input_error_ends_it_with_one_report_and_a_bug_is_raised(monkeypatch, tmp_path):
    # What the study cannot fix by retrying ends the trial at once (errors.is_user_error: a genotype file that cannot
    # be read too, which is no UserInputError); anything else is raised, so that Ray Train and Tune retry it.
    import ray.train

    from dartboard.platform.ray import worker
    from dartboard.spaces.genotype import GenotypeError

    reports, ranks = [], [1]

    class Context:
        def get_world_size(self) -> int:
            return ranks[0]

    monkeypatch.setattr(ray.train, "report", reports.append)
    monkeypatch.setattr(ray.train, "get_context", Context)
    monkeypatch.setattr(worker, "trial_place", lambda: {"node_id": "n", "placement_group_id": "p"})
    raised = GenotypeError("genotype file 'start.json': normal.edges: missing field")
    monkeypatch.setattr(worker, "_search_loop", lambda config: (_ for _ in ()).throw(raised))
    monkeypatch.chdir(tmp_path)
    worker.search_loop_per_worker({"required_metrics": ["objective"], "cwd": str(tmp_path / "absent")})
    (report,) = reports
    assert report["input_error"] == 1.0 and report["done"] == 1.0 and math.isnan(report["objective"])
    assert report["error"] == "GenotypeError: genotype file 'start.json': normal.edges: missing field"
    assert report["placement_group_id"] == "p"
    monkeypatch.setattr(worker, "_search_loop", lambda config: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        worker.search_loop_per_worker({"cwd": None})
    assert len(reports) == 1
    # one of two ranks: a report of its own would leave the other waiting in a collective; the run ends instead
    ranks[0] = 2
    monkeypatch.setattr(worker, "_search_loop", lambda config: (_ for _ in ()).throw(raised))
    with pytest.raises(GenotypeError):
        worker.search_loop_per_worker({"required_metrics": ["objective"], "cwd": None})
    assert len(reports) == 1


def test_a_train_run_failed_by_the_users_input_is_not_tried_again():
    """Ray Train's failure policy retries a failed worker group (max_failures); the same input fails alike, so a run
    with a worker failed by it is raised at once, named by its rank; other failures keep Ray's decision."""
    from ray.train import FailureConfig, WorkerGroupError
    from ray.train.v2._internal.execution.failure_handling import create_failure_policy
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision

    from dartboard.errors import DataError
    from dartboard.platform.ray.trainer import input_error_of, input_errors_raise

    class Wrapped(RuntimeError):  # as Ray hands a worker's exception over: with it as ``cause``
        def __init__(self, cause: BaseException) -> None:
            super().__init__(str(cause))
            self.cause = cause

    unreadable = DataError("image folder: cannot read 'b/7.png' as an image")
    policy = input_errors_raise(create_failure_policy(FailureConfig(max_failures=2)))
    bug = WorkerGroupError("failed", {0: RuntimeError("a bug")})
    assert policy.make_decision(bug) == FailureDecision.RETRY and input_error_of(bug) is None
    for failures in ({1: unreadable}, {0: RuntimeError("collateral"), 1: Wrapped(unreadable)}):
        failed = WorkerGroupError("failed", failures)
        assert policy.make_decision(failed) == FailureDecision.RAISE
        assert input_error_of(failed) == (1, unreadable)
    assert input_error_of(RuntimeError("not a Train run's")) is None


@pytest.mark.ray
def test_ddp_two_workers_hold_bit_identical_replicas(ray_local, tmp_path):
    """2 gloo workers, one epoch of sharded steps: the sha256 of every rank's alphas, weights and
    derived genotype agree, and the checkpoint's genotype is the reported one. The objective is the
    derived architecture's accuracy after a short training (rank 0 trains, broadcasts): it equals the
    same training run here on the search split's halves. Train's controller never imported torch
    (backend.py: the process group is set up on the workers)."""
    from dartboard.data.catalog import load_dataset
    from dartboard.data.datasets import Splits, search_split
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.ray.worker import make_trainer
    from dartboard.spaces import genotype as gt
    from dartboard.training.final import TrainConfig, train_genotype

    run = {"searcher": "darts", "dataset": "digits", "batch_size": 32, "seed": 0, "device": "cpu",
           "options": {"C": 4, "layers": 2, "epochs": 1}}
    objective = {"kind": "derived", "train_epochs": 1, "train_channels": 4, "train_layers": 2, "train_batch_size": 64}
    probe = tmp_path / "controller-torch.json"
    result = make_trainer(run, name="ddp", storage_path=str(tmp_path), workers=2, objective=objective,
                          callbacks=[_torch_modules_probe(str(probe))]).fit()
    m = result.metrics
    assert json.loads(probe.read_text()) == []  # the controller reported, without torch
    splits = load_dataset("digits")
    train, val = search_split(splits.train, 0, SearchRunConfig(**run).train_fraction or 0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray worker (OMP_NUM_THREADS=1): the same float sums
    try:
        expected = train_genotype(gt.from_dict(json.loads(m["genotype"])), Splits(train, val, splits.info),
                                  TrainConfig(channels=4, layers=2, epochs=1, batch_size=64, seed=0)).test_acc
    finally:
        torch.set_num_threads(threads)
    assert m["objective"] == m["derived_acc"] == pytest.approx(expected, abs=1.5 / len(val))
    assert len(m["replica_digests"]) == 2 and m["replica_digests"][0] == m["replica_digests"][1]
    assert m["replicas_identical"] == 1.0 and m["epoch"] == 1 and m["search_done"] == 1.0
    assert m["arch_steps"] > 5  # several alpha steps were all-reduced
    with result.checkpoint.as_directory() as d:
        saved = json.loads(open(f"{d}/genotype.json").read())
        state = load_state(f"{d}/{STATE_FILE}")
    assert saved == json.loads(m["genotype"])
    assert state["counters"]["epoch"] == 1
