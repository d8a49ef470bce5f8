"""Fault tolerance on a simulated multi-node cluster (ray.cluster_utils.Cluster): removing the node
that runs a trial's Train workers mid-trial; the trial resumes from its last checkpoint."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from dartboard.platform.config import StudyConfig

pytestmark = pytest.mark.ray

EPOCHS = 6


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


def test_node_loss_resumes_trial_from_last_checkpoint(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from dartboard.platform.sweep import run_sweep

    # The head (1 CPU) can host trial drivers but never a Train worker (2 CPUs each): workers land
    # on one of the two worker nodes, which the test then removes. 4 CPUs per worker node: Ray
    # reschedules the dead group's placement group bundle before Train frees it.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=4) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    removed = {}
    try:
        cfg = StudyConfig(name="nodeloss", searcher="darts", epochs=EPOCHS, num_samples=1, max_concurrent=1,
                          options={"C": 4, "layers": 2}, scheduler={"type": "fifo"}, storage=str(tmp_path),
                          resources={"workers": 1, "cpus_per_worker": 2}, ray_address=cluster.address,
                          max_failures=2, train_max_failures=3)

        def kill_worker_node() -> None:
            # The Train run's checkpoint snapshot, written by its controller at every epoch, is the
            # freshest view of the workers; Tune's result file can lag by several epochs. Removing the
            # node at epoch <= EPOCHS - 3 leaves it seconds to die before the trial could finish.
            deadline = time.time() + 900
            while time.time() < deadline and not removed:
                latest = _latest_train_report(tmp_path)
                if latest and 1 <= latest.get("epoch", 0) <= EPOCHS - 3:
                    for node in nodes:
                        if node.node_id == latest.get("node_id"):
                            removed.update(node=node.node_id, epoch=latest["epoch"])
                            cluster.remove_node(node, allow_graceful=False)
                time.sleep(0.2)

        watcher = threading.Thread(target=kill_worker_node, daemon=True)
        watcher.start()
        result = run_sweep(cfg, mlflow=False)
        watcher.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert removed, "the trial finished before its node could be removed"
    assert result.counts == {"complete": 1, "pruned": 0, "error": 0} and len(result.trials) == 1
    epochs = [r["epoch"] for r in _reports(Path(result.run_dir)) if "epoch" in r]
    # resumed, not restarted: the epoch counter never goes back (epoch 1 is reported once)
    assert epochs == sorted(set(epochs)) and epochs[-1] == EPOCHS and epochs.count(1) == 1
    # Node removal is not instant: the removed node may finish one more epoch before it goes. What must
    # hold: the trial ended on the surviving node.
    after = [r["node_id"] for r in _reports(Path(result.run_dir)) if r.get("epoch", 0) > removed["epoch"]]
    assert after and after[-1] != removed["node"]
