"""`dartboard ablate`: a comparative study as a front end of the study runner.

An ablation is a study on the grid sampler (every variant x every seed), usually with
``final_training.scope: trial`` (each trial trains its derived network: test error, network size)
and ``objective.kind: final``. This module adds the report: mean +- std per variant (Maile et al.
Table 1) as Markdown and CSV, metric vs size per trial, the alpha evolution of each variant's best
seed, all logged to the study's parent MLflow run (children: the trials; the champion registered).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from dartboard.errors import UserInputError, user_input
from dartboard.platform.config import StudyConfig
from dartboard.platform.ray import runner
from dartboard.platform.ray.runner import StudyResult, run_study
from dartboard.platform.reports.plots import plot_alphas, plot_scatter, slug
from dartboard.platform.reports.tables import best_per_variant, summarize, trial_results, write_tables

log = logging.getLogger("dartboard")


#: What an ablation study file may leave out: a comparison runs every trial to its end. (A study's own default
#: scheduler is ASHA, which stops the trials behind at its rungs, the last search epoch's included: their rows, and
#: with ``final_training.scope: trial`` their final trainings, would be missing from the table.)
ABLATION_DEFAULTS: dict[str, Any] = {"scheduler": {"type": "fifo"}, "sampler": "grid"}


def load_study(name_or_path: str | None = None, overrides: dict[str, Any] | None = None,
               settings: dict[str, Any] | None = None) -> StudyConfig:
    """An ablation study (file or preset), as ``runner.load_study`` reads it, with :data:`ABLATION_DEFAULTS` for
    the keys the file leaves out."""
    return runner.load_study(name_or_path, overrides, settings, defaults=ABLATION_DEFAULTS)


def set_report(run_dir: str, settings: dict[str, Any]) -> None:
    """``--set report.KEY=VALUE`` on a study to resume: its stored study file gets the new report (the table's
    metrics, the plots' axes), validated; nothing its trials ran with may change."""
    import yaml

    from dartboard.platform.ray import storage as st
    from dartboard.platform.ray.options import set_study_key

    other = sorted(k for k in settings if k.split(".")[0] != "report")
    if other:
        raise UserInputError(f"--set: {', '.join(other)}: a resumed study keeps what its trials ran with; only its "
                             f"report (report.metrics, report.size_metric, report.rank_metric, report.rank_mode) "
                             f"may change")
    uri = st.resolve_storage(run_dir)
    study = runner.stored_study(uri).model_dump()
    for key, value in settings.items():
        set_study_key(study, key, value)
    with user_input():
        cfg = StudyConfig(**study)
    st.write_text(f"{uri}/{st.STUDY_FILE}", yaml.safe_dump(cfg.model_dump(), sort_keys=False))


def report_dir(run_dir: str, name: str) -> Path:
    """Tables and plots go into the run directory, or under ./runs when it lives in object storage."""
    return Path(run_dir) if "://" not in run_dir else Path("runs") / f"study-{name}"


def write_report(result: StudyResult) -> tuple[list[Path], dict[str, float], dict[str, Any]]:
    """table.md, table.csv, results.json, plots/ and each finished trial's last checkpoint (without
    the search state) under trials/VARIANT/seedN; returns files and numbers for the parent run."""
    from dartboard.platform.ray.storage import download_dir

    cfg = result.config
    out = report_dir(result.run_dir, cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    results = trial_results(result.trials)
    folders = {}
    for t in result.trials:
        if t["status"] == "complete" and t.get("checkpoint"):
            folder = out / "report-trials" / slug(t["variant"]) / f"seed{t['seed']}"
            shutil.rmtree(folder, ignore_errors=True)
            folders[t["key"]] = download_dir(t["checkpoint"], folder)
            (folder / "searcher.pt").unlink(missing_ok=True)
    try:
        rows = summarize(cfg, results)
    except UserInputError as err:  # a report metric no trial reports: the trials are kept, the table can be made again
        raise UserInputError(f"{err}; the trials are done and kept: dartboard ablate --resume {result.run_dir} --set "
                             f"report.metrics=[...] writes the table") from None
    md, csv_path = write_tables(cfg, rows, out)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    scatter = plot_scatter(cfg, results, plots / "metric_vs_size.png") if results else None
    figures = [scatter] if scatter is not None else []
    figures += plot_alphas(cfg, best_per_variant(cfg, results), folders, plots)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    numbers = {f"{row['variant']}.{m}_{s}": row[m][i] for row in rows for m in cfg.report.metrics
               for i, s in enumerate(("mean", "std")) if not math.isnan(row[m][0])}
    summary = {"table_md": md, "table_csv": csv_path, "plots": figures, "rows": rows, "results": results}
    return [md, csv_path, out / "results.json", *figures], numbers, summary


def run_ablation(cfg: StudyConfig | None = None, *, out: str | Path | None = None, resume: str | Path | None = None,
                 tracking_uri: str | None = None, mlflow: bool = True, promote: bool = False,
                 report_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or, with ``resume`` = its run directory, continue) an ablation study; return the table
    rows, results, file paths, the parent run id and the registered champion version. ``report_settings``
    (``report.metrics``: ``--set`` keys of the study's report, with ``resume``): the table and plots made anew."""
    from dartboard.platform.tracking.study import StudyTracker

    if resume is not None and report_settings:
        set_report(str(resume), report_settings)

    tracker = StudyTracker(tracking_uri, promote=promote) if mlflow else None
    summary: dict[str, Any] = {}

    def report(result: StudyResult) -> tuple[list[Path], dict[str, float]]:
        files, numbers, s = write_report(result)
        summary.update(s)
        return files, numbers

    result = run_study(cfg, resume=None if resume is None else str(resume), tracker=tracker, report=report,
                       run_dir=None if out is None else str(out))
    done = sum(t["status"] == "complete" for t in result.trials)
    log.info("ablation: %d/%d trials done; table %s", done, len(result.trials), summary.get("table_md"))
    return {**summary, "run_dir": result.run_dir, "result": result,
            "parent_run_id": tracker.parent if tracker else None,
            "champion": tracker.champion if tracker else None,
            "champion_decision": tracker.decision if tracker else None}
