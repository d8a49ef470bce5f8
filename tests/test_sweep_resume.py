"""Driver loss: `dartboard sweep STUDY` killed with SIGKILL mid-sweep, then `dartboard sweep --resume
RUN_DIR`: every trial completes, none twice, none lost, and resumed trials continue their epochs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ray

N_TRIALS, EPOCHS = 3, 2


def _reports(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []


def _cli(*args: str, log: Path) -> subprocess.Popen:
    """`dartboard sweep ARGS` in a session of its own, output to ``log`` (a pipe nobody reads while the
    sweep runs would fill up and block the driver)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "dartboard.platform.cli", "sweep", *args], env=env,
                            start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _end_session(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the process group this test started (Ray daemons of a dead driver)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigkilled_driver_resumes_every_trial_once(tmp_path):
    study = {"name": "resume", "searcher": "darts", "epochs": EPOCHS, "num_samples": N_TRIALS, "max_concurrent": 2,
             "options": {"C": 4, "layers": 2},
             "params": {"arch_lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
             "scheduler": {"type": "fifo"}, "storage": str(tmp_path / "sweeps")}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    first = _cli(str(path), *tracking, log=first_log)
    try:
        deadline = time.time() + 400
        killed_at = None
        while time.time() < deadline and first.poll() is None:
            done = [r for t in (tmp_path / "sweeps").glob("resume-*/run_trial_*") for r in _reports(t)]
            if any(r.get("epoch") == 1 for r in done):  # mid-sweep: one epoch checkpointed somewhere
                first.send_signal(signal.SIGKILL)
                killed_at = len(done)
                break
            time.sleep(0.5)
        first.wait(timeout=60)
        assert killed_at is not None, "the sweep ended before the driver could be killed:\n" + first_log.read_text()
    finally:
        _end_session(first)
    time.sleep(3)
    (run_dir,) = (tmp_path / "sweeps").glob("resume-*")
    second = _cli("--resume", str(run_dir), *tracking, log=second_log)
    try:
        second.wait(timeout=400)  # ~60 s on 2 idle cores
    except subprocess.TimeoutExpired:
        second.send_signal(signal.SIGUSR1)  # the CLI prints every thread's stack
        time.sleep(3)
        pytest.fail("the resumed sweep did not finish in 400 s; its output:\n" + second_log.read_text()[-12000:])
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
    assert "best configuration" in out and "best genotype" in out
    # MLflow: one parent run for the study (reopened by the resumed driver), one child per trial
    from dartboard.platform.tracking import runs

    c = runs.client(tracking[1])
    found = c.search_runs([c.get_experiment_by_name("dartboard-studies").experiment_id], "")
    parents = [r for r in found if r.data.tags.get("dartboard.kind") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r.data.tags[runs.TRIAL_TAG] for r in found if r.data.tags.get("dartboard.kind") == "trial"]
    assert sorted(children) == sorted(ids)
