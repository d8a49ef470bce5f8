"""A PMSM comparison in MLflow (``dartboard pmsm compare``): one run of the ``pmsm`` experiment holding the
comparison (its settings, table, per-run CSV and flux maps), and each model's best seed (lowest validation
criterion) registered as ``pmsm-NAME``: its ``flux_mlp`` genotype, weights and ``result.json``, each with its
SHA-256, so that ``dartboard pull`` and ``dartboard.load("models:/pmsm-NAME@latest")`` give back the flux network
and ``dartboard pmsm flux`` a pulled folder's look-up table."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dartboard.model_files import FLUX_RESULT_FILE, GENOTYPE_FILE, WEIGHTS_FILE
from dartboard.platform.tracking.models import register_model_files
from dartboard.platform.tracking.runs import client, end_run, start_parent_run

EXPERIMENT = "pmsm"
#: the figures of a flux model registered as its version's tags (``metric.NAME``), where it has them
TAGGED = ("criterion_test", "criterion_val", "flux_rmse", "flux_rmse_grid", "torque_rmse", "parameters")


def registered_name(model: str) -> str:
    return f"pmsm-{model}"


def log_comparison(uri: str | None, result: Mapping[str, Any], models: Mapping[str, Any], seeds: Sequence[int],
                   settings: Mapping[str, Any], out: str | Path) -> dict[str, str]:
    """The comparison's run (settings as parameters, every model's mean figures as metrics, ``out``'s table, CSV
    and plot as artifacts) and each model's best seed registered; returns {model: registered version}."""
    from dartboard.spaces.genotype import save

    run_id = start_parent_run(uri, EXPERIMENT, "compare", {**settings, "seeds": list(seeds), "models": list(models)},
                              {"dartboard.kind": "pmsm-compare"})
    c, out = client(uri), Path(out)
    try:
        for entry in result["summary"]:
            for key, value in entry.items():
                if isinstance(value, list | tuple) and value and isinstance(value[0], int | float) and \
                        math.isfinite(value[0]):
                    c.log_metric(run_id, f"{entry['model']}.{key}", float(value[0]))  # the mean over the seeds
        for name in ("comparison.md", "comparison.json", "runs.csv", "flux_maps.png"):
            if (out / name).is_file():
                c.log_artifact(run_id, str(out / name))
        versions = {}
        for name, best in result["best"].items():
            folder = Path(best["folder"])
            with tempfile.TemporaryDirectory() as tmp:
                save(models[name], Path(tmp) / GENOTYPE_FILE)
                files = {"genotype": Path(tmp) / GENOTYPE_FILE, "weights": folder / WEIGHTS_FILE,
                         "result": folder / FLUX_RESULT_FILE}
                tags = {"dartboard.pmsm": "flux", "seed": best["seed"], "model": name,
                        **{f"metric.{k}": best[k] for k in TAGGED if isinstance(best.get(k), int | float)}}
                version = register_model_files(uri, registered_name(name), run_id, files, tags)
            versions[name] = version.version
        c.set_tag(run_id, "registered", json.dumps(versions))
    except BaseException:
        end_run(uri, run_id, failed=True)
        raise
    end_run(uri, run_id)
    return versions
