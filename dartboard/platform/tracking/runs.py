"""MLflow tracking: runs of single searches and trainings, and the one study layout (a parent run
per study, a child run per trial, created with the client API so that any process can log; runs
are always ended). MLflow is imported inside the functions only.

Default backend: a local sqlite file (``sqlite:///mlflow.db``); ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` selects a server.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("dartboard")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def setup_mlflow(uri: str | None, experiment: str):
    """Point MLflow at ``uri`` and make sure ``experiment`` exists (once, on the driver)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    ensure_experiment(uri, experiment)  # created with its artifacts beside a sqlite store
    exp = mlflow.set_experiment(experiment)
    return mlflow, exp


def artifact_location(uri: str | None, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: for a sqlite store, ``mlruns/EXPERIMENT`` beside its database file,
    wherever the command runs (MLflow's default is ``./mlruns`` of the process that creates the experiment, so the
    same store would scatter its artifacts over the folders it was used from); for a server, its own choice (None)."""
    resolved = tracking_uri(uri)
    prefix = "sqlite:///"
    if not resolved.startswith(prefix) or len(resolved) == len(prefix):
        return None
    database = Path(resolved[len(prefix):].split("?", 1)[0])
    return str(database.resolve().parent / "mlruns" / re.sub(r"[^\w.-]", "_", experiment))


def mlflow_name(key: str) -> str:
    """A param or metric name MLflow accepts (alphanumerics, ``_ - . : /`` and spaces; anything else is refused,
    and the whole run's logging with it). A study's option path names a list item in brackets
    (``regularizers[zero_one].weight``): logged as ``regularizers/zero_one.weight``; any other character as ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("[", "/").replace("]", ""))


def flat_params(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    """Nested mappings as MLflow params: ``a.b`` keys (:func:`mlflow_name`), values as text of at most 500
    characters."""
    out = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(f"{key}.", v))
        else:
            out[mlflow_name(key)] = str(v)[:500]
    return out


def log_search_run(cfg, result, status: str = "FINISHED") -> str:
    """One MLflow run for a local search: params, per-epoch metrics, genotype and pictures; an
    interrupted search's run (its finished epochs) ends with ``status="KILLED"``."""
    from dartboard.searchers.presets import space_of

    mlflow, _ = setup_mlflow(cfg.tracking_uri, cfg.experiment)
    run = mlflow.start_run(run_name=f"search-{cfg.searcher}-{cfg.dataset}-s{cfg.seed}")
    try:
        mlflow.set_tags({"dartboard.kind": "search", "searcher": cfg.searcher, "dataset": cfg.dataset,
                         "seed": str(cfg.seed), "space": space_of(cfg.searcher, cfg.options)})
        mlflow.log_params(flat_params("", {"searcher": cfg.searcher, "dataset": cfg.dataset, "seed": cfg.seed,
                                           "batch_size": cfg.batch_size, **cfg.searcher_options()}))
        for step, metrics in enumerate(result.history):
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        mlflow.log_metric("search_seconds", result.seconds)
        for path in result.artifacts.values():
            mlflow.log_artifact(str(path))
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status=status)
    log.info("mlflow: run %s in %s (%s)", run.info.run_id, tracking_uri(cfg.tracking_uri), status)
    return run.info.run_id


# ---------------------------------------------------------------------------------------------
# Studies: a parent run per study, a child run per trial (client API: safe from any process).
# ---------------------------------------------------------------------------------------------

TRIAL_TAG = "dartboard.trial"  # identifies a trial's child run inside its parent (idempotent logging)
RUN_DIR_TAG = "dartboard.run_dir"  # a sweep's parent run: its run directory (a resumed sweep reopens it)


def client(uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(uri))


def ensure_experiment(uri: str | None, experiment: str) -> str:
    """Create ``experiment`` once (on the driver, before any trial starts); return its id."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(experiment, artifact_location=artifact_location(uri, experiment))
    except Exception:  # noqa: BLE001 - created meanwhile by another driver: read it back
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def start_parent_run(uri: str | None, experiment: str, run_name: str, params: Mapping[str, Any],
                     tags: Mapping[str, str], run_id: str | None = None) -> str:
    """Open (or, with ``run_id``, reopen) a study's parent run; end it with :func:`end_run`."""
    c = client(uri)
    if run_id is not None:
        c.update_run(run_id, status="RUNNING")
        return run_id
    run = c.create_run(ensure_experiment(uri, experiment), run_name=run_name,
                       tags={"dartboard.kind": "study", **tags})
    for key, value in flat_params("", params).items():
        c.log_param(run.info.run_id, key, value)
    return run.info.run_id


def find_study_run(uri: str | None, experiment: str, run_dir: str) -> str | None:
    """The parent run of the sweep stored in ``run_dir``, if one was opened before (a driver crash)."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    escaped = run_dir.replace("'", "\\'")
    runs = c.search_runs([exp.experiment_id],
                         f"tags.`{RUN_DIR_TAG}` = '{escaped}' and tags.`dartboard.kind` = 'study'")
    return runs[0].info.run_id if runs else None


def end_run(uri: str | None, run_id: str, failed: bool = False) -> None:
    client(uri).set_terminated(run_id, "FAILED" if failed else "FINISHED")


def find_child_run(uri: str | None, parent_id: str, key: str):
    c = client(uri)
    parent = c.get_run(parent_id)
    runs = c.search_runs([parent.info.experiment_id],
                         f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{TRIAL_TAG}` = '{key}'")
    return runs[0] if runs else None


def log_child_run(uri: str | None, parent_id: str, key: str, params: Mapping[str, Any],
                  history: list[Mapping[str, float]], metrics: Mapping[str, float],
                  artifacts: list[str | os.PathLike], tags: Mapping[str, str] | None = None,
                  started: float | None = None, times: list[float] | None = None) -> str:
    """One trial as a child run: params, per-epoch metrics (step = epoch), final metrics and
    artifacts; ``started`` / ``times`` (unix seconds: the trial's start, each epoch's end) give the
    run its real start and end times and each point its time. Logged once: a second call for the
    same ``key`` returns the existing run, unless that run was left half-logged (status FAILED: the tracking server
    went away, say), which is deleted and logged again in full (the study's end logs every trial again)."""
    existing = find_child_run(uri, parent_id, key)
    if existing is not None:
        if existing.info.status != "FAILED":
            return existing.info.run_id
        client(uri).delete_run(existing.info.run_id)
    from mlflow.entities import Metric

    c = client(uri)
    parent = c.get_run(parent_id)
    now = int(time.time() * 1000)
    stamps = [int(t * 1000) for t in (times or [])][:len(history)]
    stamps += [now] * (len(history) - len(stamps))
    end = stamps[-1] if stamps else now
    run = c.create_run(parent.info.experiment_id, run_name=key, start_time=int(started * 1000) if started else None,
                       tags={"mlflow.parentRunId": parent_id, TRIAL_TAG: key, "dartboard.kind": "trial",
                             **(tags or {})})
    rid, failed = run.info.run_id, True
    try:
        for k, v in flat_params("", params).items():
            c.log_param(rid, k, v)
        points = [Metric(mlflow_name(k), float(v), stamps[step], step) for step, m in enumerate(history)
                  for k, v in m.items() if _is_number(v)]
        # final metrics belong to the last epoch; those its curve already holds are not logged again. One that has
        # another value there (the objective of a final training against the search's) is logged a millisecond
        # after the epoch: two values of one metric at one step and time are no order, the run's latest value
        # would be either, and MLflow's logged model refuses them (a model logged into a 1-epoch trial's run:
        # "UNIQUE constraint failed: logged_model_metrics")
        last = history[-1] if history else {}
        points += [Metric(mlflow_name(k), float(v), end + (k in last), max(len(history) - 1, 0))
                   for k, v in metrics.items() if _is_number(v) and last.get(k) != v]
        for start in range(0, len(points), 900):  # the REST API takes at most 1000 metrics per batch
            c.log_batch(rid, metrics=points[start:start + 900])
        for path in artifacts:
            c.log_artifact(rid, str(path))
        failed = False
    finally:
        c.set_terminated(rid, "FAILED" if failed else "FINISHED", end_time=end if started else None)
    return rid


def log_ssl_run(uri: str, run_id: str, params: Mapping[str, Any], result: Mapping[str, Any],
                artifacts: list[Path]) -> None:
    """An mlp genotype's SSL pretraining (``dartboard train`` of NASiam heads) into its open run: the settings,
    the loss per epoch (``pretrain_loss``), the held-out metrics and the files; then the run is finished."""
    from mlflow.entities import Metric, Param

    c, now = client(uri), int(time.time() * 1000)
    losses = [Metric("pretrain_loss", float(v), now, step) for step, v in enumerate(result["pretrain_loss"])]
    held_out = [Metric(k, float(v), now, 0) for k, v in result.items() if _is_number(v)]
    c.log_batch(run_id, metrics=losses + held_out, params=[Param(k, v) for k, v in flat_params("", params).items()])
    for path in artifacts:
        c.log_artifact(run_id, str(path))
    c.set_terminated(run_id, "FINISHED")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


