"""A final training's per-epoch MLflow logging on a real sqlite backend: the run is opened before the
first epoch (a Ray Train job's run id is kept in its output folder, so a relaunch logs into the same run),
each epoch is one point at step = its index from 0, and an epoch already in the run is never logged again
(a restarted worker group or driver that repeats an epoch adds no point). The Ray Train path itself is
checked in tests/test_final_ray.py (a killed driver, relaunched: steps 0, 1, 2 once each in one run)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import pytest

from dartboard.platform.tracking.epochs import RUN_FILE, EpochLogger, absolute_uri, close_unfinished, open_train_run

pytest.importorskip("mlflow")


def test_a_resumed_training_logs_into_the_same_run_and_no_epoch_twice(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    run_id = open_train_run(uri, "dartboard", "final-x", "darts-v2", out)
    assert json.loads((out / RUN_FILE).read_text()) == {"uri": uri, "run_id": run_id}
    first = EpochLogger(uri, run_id)
    assert first(0, {"epoch": 1, "train_loss": 2.0, "train_acc": 0.1, "lr": 0.1, "replica_digests": ["a", "a"]})
    assert first(1, {"train_loss": 1.5, "train_acc": 0.3, "lr": 0.05})
    # the relaunch: the same run, a fresh logger (as in a restarted worker) repeating epoch 1
    assert open_train_run(uri, "dartboard", "final-x", "darts-v2", out) == run_id
    resumed = EpochLogger(uri, run_id)
    assert not resumed(1, {"train_loss": 9.0, "train_acc": 0.0, "lr": 0.05})
    assert resumed(2, {"train_loss": 1.0, "train_acc": 0.5, "lr": 0.025})
    history = MlflowClient(uri).get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert [m.step for m in MlflowClient(uri).get_metric_history(run_id, "lr")] == [0, 1, 2]
    assert "replica_digests" not in MlflowClient(uri).get_run(run_id).data.metrics
    # without an output folder (the in-process training) every training is a new run
    assert open_train_run(uri, "dartboard", "final-x", "darts-v2") != run_id


def test_relative_stores_become_absolute_for_workers_in_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_uri(f"sqlite:///{tmp_path}/a.db") == f"sqlite:///{tmp_path}/a.db"
    assert absolute_uri("mlruns") == os.path.join(str(tmp_path), "mlruns")
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_stopped_training_keeps_a_run_with_epochs_and_deletes_one_without(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained, refused = tmp_path / "trained", tmp_path / "refused"
    logger = EpochLogger(uri, open_train_run(uri, "dartboard", "x", "darts-v2", trained))
    logger(0, {"train_loss": 1.0})
    close_unfinished(logger, trained, "KILLED", remove_dir=True)  # interrupted after an epoch: continued later
    assert MlflowClient(uri).get_run(logger.run_id).info.status == "KILLED"
    assert open_train_run(uri, "dartboard", "x", "darts-v2", trained) == logger.run_id
    empty = EpochLogger(uri, open_train_run(uri, "dartboard", "x", "darts-v2", refused))
    close_unfinished(empty, refused, remove_dir=True)  # refused before its first epoch: as if never started
    assert MlflowClient(uri).get_run(empty.run_id).info.lifecycle_stage == "deleted"
    assert not refused.exists() and (trained / RUN_FILE).is_file()


@contextmanager
def python_ctrl_c(ignored: bool = False):
    """SIGINT as a command's process has it (Python's handler: KeyboardInterrupt), or ignored; restored after. A
    pytest-xdist worker ignores SIGINT (its controller takes Ctrl-C)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_during_an_epochs_write_ends_the_training_after_it_and_the_run_closes(tmp_path):
    """The interrupt comes out of the sqlite driver's call that writes the epoch (the state the test makes: the
    statement runs, then SIGINT): raised there it left the abandoned connection holding the store's write lock,
    and closing the run as KILLED failed with "database is locked" after the store's busy timeout."""
    import signal

    from mlflow import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from dartboard.platform.tracking.epochs import log_epoch_safely

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = EpochLogger(uri, open_train_run(uri, "dartboard", "final-x", "darts-v2"))
    log_epoch_safely(logger, 0, {"train_loss": 2.0, "train_acc": 0.1})
    interrupted = []

    def execute_then_interrupt(cursor, statement, parameters, context):
        cursor.executemany(statement, parameters)
        if not interrupted and "INSERT INTO metrics" in statement:
            interrupted.append(statement)
            signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt here, in the driver's call
        return True

    event.listen(Engine, "do_executemany", execute_then_interrupt)
    try:
        with python_ctrl_c():
            with pytest.raises(KeyboardInterrupt):
                log_epoch_safely(logger, 1, {"train_loss": 1.5, "train_acc": 0.3})
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the process's handler again
    finally:
        event.remove(Engine, "do_executemany", execute_then_interrupt)
    assert interrupted
    close_unfinished(logger, None, "KILLED")
    client = MlflowClient(uri)
    assert client.get_run(logger.run_id).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(logger.run_id, "train_loss")] == [0, 1]  # the epoch is whole


def test_an_interrupt_is_held_to_the_end_of_the_write_and_a_second_one_is_not():
    import signal

    from dartboard.platform.tracking.epochs import interrupts_held

    steps = []
    with python_ctrl_c(), pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the first")
    assert steps == ["after the first"]
    with python_ctrl_c(), pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # the user insists: the write is left at once
            steps.append("after the second")
    assert steps == ["after the first"]
    with python_ctrl_c(ignored=True), interrupts_held():  # an ignored Ctrl-C stays ignored
        signal.raise_signal(signal.SIGINT)
        steps.append("ignored")
    assert steps == ["after the first", "ignored"]
    terms = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: terms.append(signum))
    try:
        with interrupts_held():
            signal.raise_signal(signal.SIGTERM)
            assert terms == []
        assert terms == [signal.SIGTERM]  # the handler that was set ran once the write ended
    finally:
        signal.signal(signal.SIGTERM, previous)
    with python_ctrl_c():
        with interrupts_held():
            pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler that was set, again
