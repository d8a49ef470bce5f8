"""Final training as a Ray Train job on a real local Ray instance (gloo on CPU), darts-v2 at C=4 with
3 cells on digits for 3 epochs, with the auxiliary head, drop path 0.2 and cutout on:

- 2 workers: the weights (and BatchNorm statistics) of both ranks are bit-identical after every epoch;
  1 and 2 workers on the same global batch each equal a slow in-process replay of 1 and 2 ranks, and
  stay close to each other (only BatchNorm's batch statistics are per rank);
- a 2-worker run whose rank 0 is killed (SIGKILL) while the test holds it after epoch 1 (the epoch gate
  of tests/epoch_gate.py; no timing) resumes from the epoch-1 checkpoint: the epoch counter goes on at
  2, and the weights equal those of the uninterrupted 2-worker run bit for bit;
- the same through the console script with the driver killed instead (SIGKILL, process group ended):
  the same command run again continues from epoch 1 and ends with the same weights; its MLflow run (sqlite)
  holds epoch 0's metrics while the job is held after epoch 1 (rank 0 logs each epoch as it ends), and
  after the relaunch the same run holds steps 0, 1, 2 once each and is the registered version's run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from epoch_gate import SAFETY_NET_S, close, lines, open_, wait_until
from safetensors.torch import load_file
from servers import kill_session

from dartboard.platform.ray.final_job import PID_FILE, RAY_DIR, RUN_NAME, train_on_ray
from dartboard.platform.ray.worker import EPOCH_GATE_ENV
from dartboard.platform.tracking.epochs import RUN_FILE
from dartboard.spaces.catalog import resolve
from dartboard.training.final import TrainConfig

pytestmark = pytest.mark.ray
CFG = TrainConfig(channels=4, layers=3, epochs=3, batch_size=64, auxiliary=True, drop_path_prob=0.2, cutout=True,
                  cutout_length=4, seed=0)


@pytest.fixture(scope="module")
def gated_ray(tmp_path_factory):
    """A private Ray instance whose workers see the epoch gate (set before ray.init: it travels in the
    job's runtime environment). Without the ``hold`` file the gate only logs the epochs."""
    pytest.importorskip("ray")
    import ray

    from dartboard.platform.ray.session import init_ray

    gate = tmp_path_factory.mktemp("gate")
    os.environ[EPOCH_GATE_ENV] = str(gate)
    try:
        init_ray(num_cpus=4)
        yield gate
    finally:
        ray.shutdown()
        os.environ.pop(EPOCH_GATE_ENV, None)


@pytest.fixture(scope="module")
def two_workers(gated_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("w2")
    result, metrics = train_on_ray(resolve("darts-v2"), CFG, "digits", None, out, workers=2)
    return out, result, metrics


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "weights.safetensors"))


def initial_weights() -> dict[str, torch.Tensor]:
    from dartboard.data.datasets import DatasetInfo
    from dartboard.searchers.base import seed_everything
    from dartboard.training.final import network_of

    seed_everything(CFG.seed)
    return network_of(resolve("darts-v2"), CFG, DatasetInfo("digits", 1, 8, 10)).state_dict()


def test_two_workers_hold_bit_identical_replicas(two_workers):
    out2, result2, m2 = two_workers
    assert m2["workers"] == 2 and m2["epoch"] == 3 and m2["restarts"] == 0
    assert len(m2["replica_digests"]) == 2 and m2["replica_digests"][0] == m2["replica_digests"][1]
    assert m2["replicas_identical"] == 1.0
    train = json.loads((out2 / "train.json").read_text())
    assert [h["epoch"] for h in train["history"]] == [1, 2, 3]
    assert all(h["replicas_identical"] == 1.0 for h in train["history"])  # after every epoch
    assert result2.weights_sha256 == train["weights_sha256"]


def simulated_ranks(cfg: TrainConfig, world: int) -> dict[str, torch.Tensor]:
    """An obviously correct slow replay of W-rank DDP in one process: one seeded permutation, global
    batch k = positions 64k .. 64k+63, rank r's half = every W-th of them from r; each half's loss / W
    is back-propagated (DDP averages the ranks' gradients), then clip and SGD as the protocol does.
    BatchNorm normalises each half with its own statistics; the running statistics are rank 0's (DDP
    broadcasts rank 0's buffers before each forward)."""
    from torch import nn
    from torch.utils.data import DistributedSampler

    from dartboard.data.catalog import load_dataset
    from dartboard.searchers.base import seed_everything
    from dartboard.training.final import network_of

    splits = load_dataset("digits")
    seed_everything(cfg.seed)
    net = network_of(resolve("darts-v2"), cfg, splits.info).train()
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    order = list(DistributedSampler(splits.train, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed,
                                    drop_last=True))
    xs, ys = splits.train.tensors
    for k in range(len(order) // cfg.batch_size):
        batch = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        opt.zero_grad()
        for r in range(world):
            idx = torch.tensor(batch[r::world])
            saved = [b.clone() for b in net.buffers()]
            logits, aux = net(xs[idx])
            loss = nn.functional.cross_entropy(logits, ys[idx]) + 0.4 * nn.functional.cross_entropy(aux, ys[idx])
            (loss / world).backward()
            if r > 0:
                with torch.no_grad():
                    for b, s in zip(net.buffers(), saved, strict=True):
                        b.copy_(s)
        nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
    return {k: v.detach() for k, v in net.state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in b)


def test_two_workers_match_one_worker_on_the_same_global_batch(gated_ray, tmp_path):
    """One epoch without drop path or cutout. Each run equals its slow in-process replay (the 2-worker
    one is the global batch's gradient with BatchNorm statistics per rank; the replays of 1 and 2 ranks
    differ by ~0.45, so the check can tell them apart). BatchNorm per rank (32 samples, not 64) is the
    only difference between 1 and 2 workers: their weights stay well within what training moved them."""
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=64, auxiliary=True, seed=0)
    runs = {w: train_on_ray(resolve("darts-v2"), cfg, "digits", None, tmp_path / f"w{w}", workers=w) for w in (1, 2)}
    w0, w1, w2 = initial_weights(), weights(tmp_path / "w1"), weights(tmp_path / "w2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers: the same float sums
    try:
        assert max_difference(w1, simulated_ranks(cfg, 1)) < 1e-5
        assert max_difference(w2, simulated_ranks(cfg, 2)) < 1e-5
    finally:
        torch.set_num_threads(threads)
    params = [k for k in w0 if "running" not in k and "num_batches" not in k]
    moved = sum(float((w1[k] - w0[k]).pow(2).sum()) for k in params) ** 0.5
    apart = sum(float((w2[k] - w1[k]).pow(2).sum()) for k in params) ** 0.5
    assert moved > 0.5  # training moved the weights far enough for the comparison to mean something
    assert apart < 0.5 * moved, f"2 workers ended {apart:.3f} from 1 worker; training moved {moved:.3f}"
    assert abs(runs[2][0].test_acc - runs[1][0].test_acc) < 0.05


def test_a_killed_worker_resumes_from_its_checkpoint(gated_ray, two_workers, tmp_path):
    gate, out = close(gated_ray), tmp_path / "killed"
    before = len(lines(gate))
    done: dict = {}
    job = threading.Thread(target=lambda: done.update(out=train_on_ray(resolve("darts-v2"), CFG, "digits", None, out,
                                                                      workers=2)))
    job.start()
    try:
        assert wait_until(lambda: lines(gate)[before:] == [f"{RUN_NAME} 1"] and epoch_committed(out, 1))
        os.kill(int((gate / PID_FILE).read_text()), signal.SIGKILL)  # rank 0, held after epoch 1
    finally:
        open_(gate)
        job.join(SAFETY_NET_S)
    result, metrics = done["out"]
    assert lines(gate)[before:] == [f"{RUN_NAME} {e}" for e in (1, 2, 3)]  # epoch 1 did not run again
    assert metrics["restarts"] == 1 and metrics["resumed_at"] == [1] and metrics["epoch"] == 3
    uninterrupted = weights(two_workers[0])
    resumed = weights(out)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted), "resumed run left the path"
    assert result.test_acc == two_workers[1].test_acc


def epoch_committed(out: Path, epoch: int) -> bool:
    """Ray Train recorded ``epoch``'s checkpoint (its snapshot names it)."""
    snapshot = out / RAY_DIR / RUN_NAME / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text()).get("checkpoint_results", [])
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return any(r.get("metrics", {}).get("epoch") == epoch for r in results)


def test_a_killed_driver_is_continued_by_the_same_command(gated_ray, two_workers, tmp_path):
    gate, out = close(gated_ray), tmp_path / "driver"
    before = len(lines(gate))
    args = ["darts-v2", "--workers", "2", "--channels", "4", "--layers", "3", "--epochs", "3", "--batch-size", "64",
            "--auxiliary", "--drop-path", "0.2", "--cutout", "--cutout-length", "4", "--seed", "0", "--out", str(out),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--register", "killed-driver"]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, EPOCH_GATE_ENV: str(gate)}

    def launch(log: Path) -> subprocess.Popen:  # its own session: its Ray daemons die with its process group
        return subprocess.Popen([sys.executable, "-m", "dartboard.platform.cli", "train", *args], env=env,
                                start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)

    first = launch(tmp_path / "first.log")
    try:
        held = wait_until(lambda: lines(gate)[before:] == [f"{RUN_NAME} 1"] and epoch_committed(out, 1), first)
        assert held, (tmp_path / "first.log").read_text()[-3000:]
        assert logged_steps(out, "train_loss") == [0]  # live: epoch 1 is in MLflow while the job is held
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        end_session(first)
        open_(gate)
    second = launch(tmp_path / "second.log")
    try:
        second.wait(timeout=SAFETY_NET_S)
    finally:
        end_session(second)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-3000:]
    assert lines(gate)[before:] == [f"{RUN_NAME} {e}" for e in (1, 2, 3)]  # epoch 1 did not run again
    assert "resumed at epochs [1]" in log
    uninterrupted, resumed = weights(two_workers[0]), weights(out)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted), "the relaunch left the path"
    for key in ("train_loss", "train_acc", "lr", "replicas_identical"):
        assert logged_steps(out, key) == [0, 1, 2], key  # one run, each epoch once
    from dartboard.platform.tracking.runs import client

    record = json.loads((out / RUN_FILE).read_text())
    assert client(record["uri"]).get_model_version("killed-driver", "1").run_id == record["run_id"]


def logged_steps(out: Path, key: str) -> list[int]:
    """The steps of ``key`` in the MLflow run the training recorded in its output folder."""
    from dartboard.platform.tracking.runs import client

    record = json.loads((out / RUN_FILE).read_text())
    return [m.step for m in client(record["uri"]).get_metric_history(record["run_id"], key)]


def end_session(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the session this test started (the Ray daemons and workers of a
    killed driver), and wait until it is gone."""
    kill_session(proc.pid)
