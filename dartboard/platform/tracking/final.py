"""A trained final network in MLflow: one run (params = the training config, per-epoch metrics with
step = epoch, the test metrics, the model files) and one registered model version whose tags carry the
genotype's name, the data set, the training config (``config.*``), the metrics (``metric.*``), the
parameter count and the SHA-256 of every file (``sha256.*``, recorded by ``register_model_files``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dartboard.model_files import TRAIN_FILE
from dartboard.platform.tracking.epochs import EpochLogger
from dartboard.platform.tracking.models import GENOTYPE_FILE, NETWORK_FILE, WEIGHTS_FILE, register_model_files
from dartboard.platform.tracking.runs import flat_params, setup_mlflow

log = logging.getLogger("dartboard")
FILES = {"genotype": GENOTYPE_FILE, "network": NETWORK_FILE, "weights": WEIGHTS_FILE, "train": TRAIN_FILE}


def default_model_name(genotype: str, dataset: str) -> str:
    """``final-<genotype>-<dataset>``: the genotype's catalog name, its file's stem or its folder's name."""
    stem = Path(genotype).stem if genotype.endswith(".json") else Path(genotype).name or genotype
    return f"final-{stem}-{dataset}"


def register_final(uri: str | None, experiment: str, name: str, alias: str | None, genotype: str,
                   config: Mapping[str, Any], result: Any, out_dir: str | Path, extra_tags: Mapping[str, Any] = (),
                   run_id: str | None = None):
    """Log the training as a run (``run_id``: the run it logged its epochs into as it trained, see
    ``epochs.py``; epochs already there are not logged again) and register its model files as a version
    of ``name`` (``alias`` moved to it when given); returns the version."""
    out = Path(out_dir)
    files = {key: out / fname for key, fname in FILES.items() if (out / fname).is_file()}
    missing = sorted(set(FILES) - set(files))
    if missing:
        raise FileNotFoundError(f"{out}: the trained model lacks {', '.join(FILES[k] for k in missing)}")
    mlflow, _ = setup_mlflow(uri, experiment)
    metrics = {"test_acc": result.test_acc, "test_loss": result.test_loss, "parameters": float(result.parameters),
               "train_seconds": result.seconds}
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"train-{name}") as run:
        mlflow.set_tags({"dartboard.kind": "train", "genotype": genotype})
        mlflow.log_params(flat_params("", {"genotype": genotype, **config}))
        logger = EpochLogger(mlflow.get_tracking_uri(), run.info.run_id)
        for step, epoch in enumerate(result.history):
            logger(step, epoch)
        mlflow.log_metrics(metrics)
        for path in files.values():
            mlflow.log_artifact(str(path))
        run_id = run.info.run_id
    tags = {"genotype": genotype, "parameters": result.parameters,
            **{f"config.{k}": v for k, v in config.items()}, **{f"metric.{k}": v for k, v in metrics.items()},
            **dict(extra_tags)}
    return register_model_files(uri, name, run_id, files, tags, aliases=(alias,) if alias else ())
