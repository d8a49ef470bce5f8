"""MLflow tracking (and, with the registry issue, the model registry).

MLflow is imported inside the functions only: the rest of dartboard imports without it.
Default backend: a local sqlite file (``sqlite:///mlflow.db``); ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` selects a server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("dartboard")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def setup_mlflow(uri: str | None, experiment: str):
    """Point MLflow at ``uri`` and make sure ``experiment`` exists (once, on the driver)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    exp = mlflow.set_experiment(experiment)
    return mlflow, exp


def flat_params(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(f"{key}.", v))
        else:
            out[key] = str(v)[:500]
    return out


def log_search_run(cfg, result) -> str:
    """One MLflow run for a local search: params, per-epoch metrics, genotype and pictures."""
    mlflow, _ = setup_mlflow(cfg.tracking_uri, cfg.experiment)
    with mlflow.start_run(run_name=f"search-{cfg.searcher}-{cfg.dataset}-s{cfg.seed}") as run:
        mlflow.set_tags({"dartboard.kind": "search", "searcher": cfg.searcher, "dataset": cfg.dataset,
                         "seed": str(cfg.seed)})
        mlflow.log_params(flat_params("", {"searcher": cfg.searcher, "dataset": cfg.dataset, "seed": cfg.seed,
                                           "batch_size": cfg.batch_size, **cfg.searcher_options()}))
        for step, metrics in enumerate(result.history):
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        mlflow.log_metric("search_seconds", result.seconds)
        for path in result.artifacts.values():
            mlflow.log_artifact(str(path))
        log.info("mlflow: run %s in %s", run.info.run_id, tracking_uri(cfg.tracking_uri))
        return run.info.run_id


def log_train_run(uri: str | None, experiment: str, genotype_path: str, params: Mapping[str, Any], result,
                  out_dir) -> str:
    mlflow, _ = setup_mlflow(uri, experiment)
    with mlflow.start_run(run_name="train") as run:
        mlflow.set_tags({"dartboard.kind": "train"})
        mlflow.log_params(flat_params("", {"genotype": genotype_path, **params}))
        mlflow.log_metrics({"test_acc": result.test_acc, "test_loss": result.test_loss,
                            "parameters": float(result.parameters), "train_seconds": result.seconds})
        if out_dir is not None:
            mlflow.log_artifacts(str(out_dir))
        return run.info.run_id
