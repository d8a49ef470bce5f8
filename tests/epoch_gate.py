"""The epoch gate of the Ray fault tests (``dartboard.platform.ray.worker._epoch_gate``): with
``DARTBOARD_EPOCH_GATE=DIR`` a trial's rank-0 worker appends ``KEY EPOCH`` to ``DIR/epochs.log`` after
each epoch's report and checkpoint, then waits while ``DIR/hold`` exists. A fault test creates ``hold``,
waits until the trials are held in the state it wants (after epoch 1, recorded by Tune and by Ray
Train), injects the fault (kills the driver, removes a node), then removes ``hold``. The trials cannot
finish while held, so the test neither races with completion nor depends on how fast the machine is;
the deadline below is a safety net against a hang, not a timing the test relies on."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

SAFETY_NET_S = 1200


def close(gate: Path) -> Path:
    """A gate directory whose trials hold after every epoch until :func:`open_` is called."""
    gate.mkdir(parents=True, exist_ok=True)
    (gate / "hold").write_text("held by the test")
    return gate


def open_(gate: Path) -> None:
    (gate / "hold").unlink()


def lines(gate: Path) -> list[str]:
    log = gate / "epochs.log"
    return log.read_text().splitlines() if log.is_file() else []


def keys_at(gate: Path, epoch: int) -> set[str]:
    """Trials that finished (and logged) ``epoch``."""
    return {line.rsplit(" ", 1)[0] for line in lines(gate) if line.rsplit(" ", 1)[1] == str(epoch)}


def _json(text: str) -> dict:
    try:  # a file being written can be read half-way: that state simply is not reached yet
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


def recorded_epoch(run_dirs: Iterable[Path], epoch: int) -> tuple[int, int]:
    """How many trials have ``epoch`` recorded by Tune (``run_trial_*/result.json``) and by Ray Train
    (the checkpoint manager's snapshot of ``trials/train-*``)."""
    tune = train = 0
    for run_dir in run_dirs:
        for f in run_dir.glob("run_trial_*/result.json"):
            tune += any(_json(line).get("epoch") == epoch for line in f.read_text().splitlines())
        for f in run_dir.glob("trials/train-*/checkpoint_manager_snapshot.json"):
            results = _json(f.read_text()).get("checkpoint_results", [])
            train += any(r.get("metrics", {}).get("epoch") == epoch for r in results)
    return tune, train


def held_after_epoch_1(gate: Path, run_dirs: Callable[[], Iterable[Path]], n: int) -> bool:
    """``n`` trials are held after epoch 1 and Tune and Ray Train both recorded that epoch for them."""
    if len(keys_at(gate, 1)) < n:
        return False
    tune, train = recorded_epoch(list(run_dirs()), 1)
    return tune >= n and train >= n


def wait_until(state: Callable[[], bool], proc: subprocess.Popen | None = None) -> bool:
    """Wait for a state the gate guarantees will come and stay; False if the process ended first."""
    deadline = time.monotonic() + SAFETY_NET_S
    while not state():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            return state()
        time.sleep(0.5)
    return True
