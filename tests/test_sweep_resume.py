"""Driver loss: `dartboard sweep STUDY` killed with SIGKILL while its running trials are held after epoch 1
by the epoch gate (a state the test controls, not a moment it guesses), then `dartboard sweep --resume
RUN_DIR`: every trial completes, none twice, none lost, and the held trials continue from their epoch-1
checkpoint (no epoch runs twice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import epoch_gate
import pytest
import yaml
from servers import kill_session

from dartboard.platform.ray.worker import EPOCH_GATE_ENV

pytestmark = pytest.mark.ray

N_TRIALS, EPOCHS = 3, 2


def _reports(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []


def _cli(*args: str, log: Path, gate: Path) -> subprocess.Popen:
    """`dartboard sweep ARGS` in a session of its own, output to ``log`` (a pipe nobody reads while the
    sweep runs would fill up and block the driver), its trials passing through the epoch ``gate``."""
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, EPOCH_GATE_ENV: str(gate)}
    return subprocess.Popen([sys.executable, "-m", "dartboard.platform.cli", "sweep", *args], env=env,
                            start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _end_session(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the session this test started (the Ray daemons and workers of a
    killed driver), and wait until it is gone."""
    kill_session(proc.pid)


def test_sigkilled_driver_resumes_every_trial_once(tmp_path):
    study = {"name": "resume", "searcher": "darts", "epochs": EPOCHS, "num_samples": N_TRIALS, "max_concurrent": 2,
             "options": {"C": 4, "layers": 2},
             "params": {"arch_lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
             "scheduler": {"type": "fifo"}, "storage": str(tmp_path / "sweeps")}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    gate = epoch_gate.close(tmp_path / "gate")
    first = _cli(str(path), *tracking, log=first_log, gate=gate)
    try:  # both running trials (max_concurrent 2) held after epoch 1, recorded by Tune and Ray Train
        held = epoch_gate.wait_until(
            lambda: epoch_gate.held_after_epoch_1(gate, lambda: (tmp_path / "sweeps").glob("resume-*"), 2), first)
        assert held, "no trials held after epoch 1:\n" + first_log.read_text()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        _end_session(first)
    held_keys = epoch_gate.keys_at(gate, 1)
    assert len(held_keys) == 2 and not epoch_gate.keys_at(gate, 2)
    epoch_gate.open_(gate)
    (run_dir,) = (tmp_path / "sweeps").glob("resume-*")
    second = _cli("--resume", str(run_dir), *tracking, log=second_log, gate=gate)
    try:
        second.wait(timeout=600)  # a safety net (~60 s on 2 idle cores)
    except subprocess.TimeoutExpired:
        second.send_signal(signal.SIGUSR1)  # the CLI prints every thread's stack
        time.sleep(3)
        pytest.fail("the resumed sweep did not finish in 600 s; its output:\n" + second_log.read_text()[-12000:])
    finally:
        _end_session(second)
    out = second_log.read_text()
    assert second.returncode == 0, out[-3000:]
    summary = json.loads((run_dir / "study_result.json").read_text())
    ids = [t["trial_id"] for t in summary["trials"]]
    assert len(ids) == N_TRIALS and len(set(ids)) == N_TRIALS  # no trial lost, none duplicated
    assert all(t["status"] == "complete" and t["epoch"] == EPOCHS for t in summary["trials"])
    assert len(list((run_dir / "trials").glob("train-*"))) == N_TRIALS
    for trial_dir in run_dir.glob("run_trial_*"):
        epochs = [r["epoch"] for r in _reports(trial_dir) if "epoch" in r]
        assert epochs == sorted(set(epochs)) and epochs[-1] == EPOCHS  # continued, never restarted at 0
    # every (trial, epoch) ran exactly once: the held trials continued from their epoch-1 checkpoint
    ran = epoch_gate.lines(gate)
    assert sorted(ran) == sorted(f"{i} {e}" for i in ids for e in range(1, EPOCHS + 1)), ran
    assert held_keys <= set(ids)
    assert "best configuration" in out and "best genotype" in out
    # MLflow: one parent run for the study (reopened by the resumed driver), one child per trial
    from dartboard.platform.tracking import runs

    c = runs.client(tracking[1])
    found = c.search_runs([c.get_experiment_by_name("dartboard-studies").experiment_id], "")
    parents = [r for r in found if r.data.tags.get("dartboard.kind") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r.data.tags[runs.TRIAL_TAG] for r in found if r.data.tags.get("dartboard.kind") == "trial"]
    assert sorted(children) == sorted(ids)
