"""A final training's MLflow run while it trains: opened before the first epoch, each epoch's metrics
logged as the epoch ends (step = the epoch's index from 0), by the process that trains (the local
trainer, or rank 0 of a Ray Train job), so the MLflow UI shows the curves grow.

A training that a relaunch continues (same ``--out``: an in-process training's epoch checkpoint, a Ray Train
job's) logs into the same run (its id is kept in ``OUT/mlflow-run.json``), and an epoch that is already in the
run is never logged again: a restarted worker group or driver repeats no point. Only the client API is used, so
any process can log.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("dartboard")
RUN_FILE = "mlflow-run.json"
TRAIN_EXPERIMENT = "dartboard"  # the MLflow experiment of `dartboard train` (cell networks and mlp heads)
#: Per-epoch keys logged (the local trainer's and the Ray workers' reports share them; Ray adds the replicas').
EPOCH_KEYS = ("train_loss", "train_acc", "lr", "replicas_identical")
MARKER = "train_loss"  # every epoch logs it: its steps are the epochs already in the run


def absolute_uri(uri: str) -> str:
    """A relative sqlite or file store as an absolute one: Ray workers run in another directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).resolve())
    return uri


def open_train_run(uri: str, experiment: str, name: str, genotype: str, out_dir: str | Path | None = None) -> str:
    """The id of the run a training logs into: the run recorded in ``out_dir`` for this tracking URI when
    there is one (a Ray Train job continued by a relaunch), else a new run (recorded there if given)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from dartboard.platform.tracking.runs import setup_mlflow

    client = MlflowClient(tracking_uri=uri)
    record = Path(out_dir) / RUN_FILE if out_dir is not None else None
    if record is not None and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("uri") == uri:
            try:
                return client.get_run(saved["run_id"]).info.run_id
            except MlflowException:  # deleted since: start another
                pass
    _, exp = setup_mlflow(uri, experiment)
    run = client.create_run(exp.experiment_id, run_name=f"train-{name}",
                            tags={"dartboard.kind": "train", "genotype": genotype})
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"uri": uri, "run_id": run.info.run_id}))
    return run.info.run_id


class EpochLogger:
    """``logger(step, metrics)``: the epoch's :data:`EPOCH_KEYS` into the run, unless the run holds that
    step already. Plain data (URI and run id), so it travels to a Ray worker."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._logged: set[int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "run_id": self.run_id, "_logged": None}

    def __call__(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """True when the epoch was logged, False when the run already held it."""
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(tracking_uri=self.uri)
        if self._logged is None:
            self._logged = {m.step for m in client.get_metric_history(self.run_id, MARKER)}
        if step in self._logged:
            return False
        now = int(time.time() * 1000)
        values = [Metric(k, float(metrics[k]), now, step) for k in EPOCH_KEYS
                  if isinstance(metrics.get(k), (int, float)) and math.isfinite(float(metrics[k]))]
        client.log_batch(self.run_id, metrics=values)
        self._logged.add(step)
        return True


@contextmanager
def interrupts_held(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Run a store write whole: a Ctrl-C or SIGTERM that arrives during it takes effect (the handler that was
    set runs) once the write has ended. An interrupt raised inside the sqlite driver's call leaves the
    store's write lock held by the abandoned connection, so the run could then not be closed ("database is
    locked"). A second signal of the same kind during the write is not held (a store that hangs can still be
    left). Outside the main thread, where no handler can be set, the write runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums}
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if signum in held:  # the second one: at once
            held.remove(signum)
            _deliver(signum, previous[signum], frame)
        else:
            held.append(signum)

    for s in signums:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in held:
            _deliver(s, previous[s], None)


def _deliver(signum: int, handler: Any, frame: Any) -> None:
    """What ``signum`` would have done with ``handler`` set: call it, or the default action, or nothing."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def log_epoch_safely(logger: EpochLogger | None, step: int, metrics: Mapping[str, Any]) -> None:
    """Live tracking must not stop a training: a store that cannot be reached is a warning (the run
    gets the whole history when the training registers its model)."""
    if logger is None:
        return
    try:
        with interrupts_held():
            logger(step, metrics)
    except Exception as err:  # noqa: BLE001 - any store error
        log.warning("MLflow: epoch %d not logged live (%s); it is logged with the model at the end", step, err)


def close_unfinished(logger: EpochLogger, out_dir: str | Path | None, status: str = "FAILED",
                     remove_dir: bool = False) -> None:
    """A training that stopped before its model was registered: a run that holds no epoch is deleted
    (with its record in ``out_dir``, and ``out_dir`` itself when ``remove_dir`` and it is left empty), as
    if it never started (bad input found by the driver, e.g. another training's checkpoint); one that
    holds epochs ends as ``status`` (FAILED, KILLED) and stays recorded, so the same command continues it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=logger.uri)
    with interrupts_held():
        if client.get_metric_history(logger.run_id, MARKER):
            client.set_terminated(logger.run_id, status)
            return
        client.delete_run(logger.run_id)
    if out_dir is not None:
        (Path(out_dir) / RUN_FILE).unlink(missing_ok=True)
        if remove_dir and not any(Path(out_dir).iterdir()):
            Path(out_dir).rmdir()
