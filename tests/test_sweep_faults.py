"""Fault tolerance on a simulated multi-node cluster (ray.cluster_utils.Cluster): the node that runs a
trial's Train worker is removed while the worker is held after epoch 1 by the epoch gate (a state the
test controls); the trial resumes from its epoch-1 checkpoint on the other node. And a Tune trial actor
reused for the next trial ends the Train run of the trial Tune stopped in it, held by the gate."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import epoch_gate
import pytest

from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.worker import EPOCH_GATE_ENV

pytestmark = pytest.mark.ray

EPOCHS = 3


def _latest_train_report(storage: Path) -> dict | None:
    """The metrics of the last checkpoint the trial's Train run recorded (None before the first)."""
    for f in storage.glob("nodeloss-*/trials/train-*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(f.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, json.JSONDecodeError):  # being rewritten
            return None
        return latest.get("metrics")
    return None


def _reports(run_dir: Path) -> list[dict]:
    rows = []
    for f in run_dir.glob("*/result.json"):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def test_node_loss_resumes_trial_from_last_checkpoint(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from dartboard.platform.ray.session import init_ray
    from dartboard.platform.sweep import run_sweep

    gate = epoch_gate.close(tmp_path / "gate")
    monkeypatch.setenv(EPOCH_GATE_ENV, str(gate))  # init_ray passes it to every worker
    # The head (1 CPU) can host trial drivers but never a Train worker (2 CPUs each): workers land
    # on one of the two worker nodes, which the test then removes. 4 CPUs per worker node: Ray
    # reschedules the dead group's placement group bundle before Train frees it.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=4) for _ in range(2)]
    cluster.wait_for_nodes()
    init_ray(address=cluster.address)
    removed = {}
    storage = tmp_path / "sweeps"
    try:
        cfg = StudyConfig(name="nodeloss", searcher="darts", epochs=EPOCHS, num_samples=1, max_concurrent=1,
                          options={"C": 4, "layers": 2}, scheduler={"type": "fifo"}, storage=str(storage),
                          resources={"workers": 1, "cpus_per_worker": 2}, ray_address=cluster.address,
                          max_failures=2, train_max_failures=3)

        def remove_the_held_workers_node() -> None:
            # The worker is held after epoch 1 (reported and checkpointed): remove its node, then let go.
            if epoch_gate.wait_until(lambda: epoch_gate.held_after_epoch_1(gate, lambda: storage.glob("nodeloss-*"),
                                                                          1)):
                latest = _latest_train_report(storage) or {}
                for node in nodes:
                    if node.node_id == latest.get("node_id"):
                        removed.update(node=node.node_id, epoch=latest["epoch"])
                        cluster.remove_node(node, allow_graceful=False)
            epoch_gate.open_(gate)

        watcher = threading.Thread(target=remove_the_held_workers_node, daemon=True)
        watcher.start()
        result = run_sweep(cfg, mlflow=False)
        watcher.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert removed.get("epoch") == 1, "the held worker's node was not found"
    assert result.counts == {"complete": 1, "pruned": 0, "error": 0} and len(result.trials) == 1
    reports = _reports(Path(result.run_dir))
    epochs = [r["epoch"] for r in reports if "epoch" in r]
    # resumed from the epoch-1 checkpoint, not restarted: every epoch reported once, in order
    assert epochs == list(range(1, EPOCHS + 1)), epochs
    assert sorted(epoch_gate.lines(gate)) == sorted(f"{k} {e}" for k in epoch_gate.keys_at(gate, 1)
                                                    for e in range(1, EPOCHS + 1))
    # epoch 1 ran on the removed node, every later epoch on the surviving one
    assert [r["node_id"] == removed["node"] for r in reports if "epoch" in r] == [True] + [False] * (EPOCHS - 1)


def test_a_reused_trial_actor_ends_the_run_of_the_trial_tune_stopped(tmp_path, monkeypatch):
    """Two one-epoch trials, one at a time, the epoch gate closed throughout: each trial's Train worker
    reports its epoch and is then held for good, so no Train run ever ends by itself. ASHA (max_t: the one
    epoch) stops each trial at its report; the second trial runs in the first one's Tune actor (``reuse_actors``),
    which first ends the held run (``trial.ReusableTrial``). Without that, Tune cannot reset the actor (the stopped
    trial's function never returns): it errors the second trial, and the sweep stalls."""
    ray = pytest.importorskip("ray")
    from dartboard.platform.ray.session import init_ray
    from dartboard.platform.sweep import run_sweep

    gate = epoch_gate.close(tmp_path / "gate")
    monkeypatch.setenv(EPOCH_GATE_ENV, str(gate))  # init_ray passes it to every worker
    init_ray(num_cpus=2)
    try:
        cfg = StudyConfig(name="reuse", searcher="darts", space="tiny81", epochs=1, batch_size=64, num_samples=2,
                          max_concurrent=1, params={"w_lr": {"type": "choice", "values": [0.025, 0.05]}},
                          scheduler={"type": "asha", "metric": "val_acc", "grace_period": 1},
                          storage=str(tmp_path / "sweeps"))
        result = run_sweep(cfg, mlflow=False)
        from ray._private import state

        actors = Counter(a.get("ActorClassName") for a in state.actors().values())
    finally:
        ray.shutdown()
    assert result.counts == {"complete": 2, "pruned": 0, "error": 0}, [t["error"] for t in result.trials]
    assert len(epoch_gate.keys_at(gate, 1)) == 2  # both trials' runs reported their epoch, then were held
    # one trial actor and one report queue for both trials (trial.report_callback), one Train run each
    assert actors["_QueueActor"] == 1 and actors["TrainController"] == 2, actors
    reports = _reports(Path(result.run_dir))
    assert len(reports) == 2 and len({r["pid"] for r in reports}) == 1  # one actor ran both trials
