"""`dartboard bench quality` on the study runner: every (searcher, seed) is a trial of one grid
study on tiny81 (a Ray Train job like every trial, checkpointed per epoch, resumable); the
scoring (regret curves, random-search baseline, table, plot) is ``dartboard.bench.quality``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dartboard.bench.quality import (
    RANDOM,
    QualityConfig,
    curve_from_trial,
    random_search_records,
    trial_options,
    write_outputs,
)
from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.runner import StudyResult, run_study


def quality_study(cfg: QualityConfig, ray_address: str | None = None, storage: str | None = None,
                  tiny_space=None) -> StudyConfig:
    """The benchmark as a study: variants = searchers (their presets on tiny81), seeds, grid sampler,
    no early stopping, one CPU per trial, ``workers`` trials at once."""
    variants = []
    for name in (s for s in cfg.searchers if s != RANDOM):
        options = trial_options(name, cfg, tiny_space)
        space, _ = options.pop("space"), options.pop("epochs")
        variants.append({"name": name, "searcher": name, "options": options})
    return StudyConfig(name="bench-quality", description=f"{space} search quality (regret) of each searcher",
                       variants=variants, space=space, seeds=list(cfg.seeds), sampler="grid", epochs=cfg.epochs,
                       batch_size=cfg.batch_size, train_fraction=cfg.train_fraction, num_samples=1,
                       max_concurrent=cfg.workers, scheduler={"type": "fifo"}, storage=storage,
                       ray_address=ray_address,
                       experiment="dartboard-quality", register_as=None,
                       report={"metrics": ["tiny81_regret", "tiny81_rank"], "rank_metric": "tiny81_regret",
                               "rank_mode": "min"})


def records_of(result: StudyResult, table) -> list[dict[str, Any]]:
    """The scoring's records (one per searcher and seed, study order) from the trials' histories."""
    records = []
    for t in result.trials:
        if t["status"] != "complete":
            raise RuntimeError(f"quality trial {t['key']} did not finish: {t.get('error') or t['status']}")
        curve = curve_from_trial(table, t["genotypes"], t["history"])
        records.append({"searcher": t["searcher"], "seed": t["seed"], "options": t["config"], "curve": curve,
                        "seconds": curve[-1]["seconds"] if curve else 0.0,
                        "stopped_early": len(curve) < result.config.epochs})
    order = {(v.searcher, s): i for i, (v, s) in enumerate((v, s) for v in result.config.variants
                                                           for s in result.config.trial_seeds())}
    return sorted(records, key=lambda r: order[(r["searcher"], r["seed"])])


#: The benchmark's own configuration, in its output folder (what a resumed run scores with).
CONFIG_FILE = "quality_config.json"


def resumed_quality(path: str | Path) -> tuple[QualityConfig, Path, str]:
    """(config, output folder, study run directory) of an interrupted benchmark: ``path`` is its output folder
    (``--out``; its one study under ``studies/``) or that study's run directory."""
    from dartboard.errors import UserInputError, user_input

    path = Path(path)
    if (path / "study.yaml").is_file():
        run_dirs, out = [path], path.parent.parent
    else:
        out = path
        run_dirs = sorted(p.parent for p in (path / "studies").glob("*/study.yaml"))
    config = out / CONFIG_FILE
    if not config.is_file():
        raise UserInputError(f"resume: {str(path)!r} is no `dartboard bench quality` output folder or study run "
                             f"directory (no {CONFIG_FILE} in {str(out)!r})")
    if len(run_dirs) != 1:
        found = ", ".join(str(p) for p in run_dirs) or "none"
        raise UserInputError(f"resume: {str(out)!r} holds {len(run_dirs)} benchmark studies ({found}); give the run "
                             f"directory of the one to resume")
    with user_input(f"resume: {str(config)!r}"):
        data = json.loads(config.read_text())
        if not isinstance(data, dict):
            raise ValueError("expected the benchmark's configuration (a JSON object)")
        try:
            cfg = QualityConfig(**data)
        except TypeError as err:  # a key QualityConfig does not have
            raise ValueError(f"not a benchmark configuration ({err})") from None
    return cfg, out, str(run_dirs[0])


def run_quality(cfg: QualityConfig | None, out: str | Path | None = None, ray_address: str | None = None,
                tracking_uri: str | None = None, mlflow: bool = True, resume: str | Path | None = None
                ) -> dict[str, Any]:
    """Run the benchmark study (or, with ``resume``, finish an interrupted one: its config and output folder are
    read from there); write quality.json, quality.md and regret_curves.png under ``out`` (the study's run
    directory is under ``out/studies``); MLflow: parent run, a child per trial."""
    from dartboard.bench.table import load_table
    from dartboard.platform.tracking.study import StudyTracker

    run_dir = None
    if resume is not None:
        cfg, out, run_dir = resumed_quality(resume)
    assert cfg is not None and out is not None
    table = load_table(cfg.table)
    tracker = StudyTracker(tracking_uri) if mlflow else None  # a tracking server that is down: refused first
    out = Path(out)
    study = None if run_dir is not None else quality_study(cfg, ray_address, str(out / "studies"), table.space)
    if run_dir is None:  # once the study is valid: nothing is written for one that is refused
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    outputs: dict[str, Any] = {}

    def report(result: StudyResult) -> tuple[list[Path], dict[str, float]]:
        records = records_of(result, table)
        if cfg.random_search or RANDOM in cfg.searchers:
            records += random_search_records(records, cfg, table)
        outputs.update(write_outputs(records, cfg, table, out, time.perf_counter() - start))
        outputs["run_dir"] = result.run_dir
        numbers = {f"{r['searcher']}.final_regret_mean": r["final_regret_mean"] for r in outputs["rows"]}
        return [out / "quality.md", out / "quality.json", outputs["plot"]], numbers

    start = time.perf_counter()
    run_study(study, resume=run_dir, tracker=tracker, report=report)
    outputs["config"] = asdict(cfg)
    return outputs


def log_rescore(result: dict[str, Any], cfg: QualityConfig, source: Path, tracking_uri: str | None = None,
                experiment: str = "dartboard-quality") -> str:
    """A rescored benchmark in the studies' MLflow layout: a parent run (the rescored file, its table
    and plot as artifacts, each searcher's mean final regret as a metric) and one child run per
    (searcher, seed) with the rescored regret curve (step = epoch). Returns the parent run's id."""
    from dartboard.platform.tracking import runs

    params = {"source": str(source), "table": cfg.table or "tiny81 (shipped)", "searchers": list(cfg.searchers),
              "seeds": list(cfg.seeds), "epochs": cfg.epochs}
    parent = runs.start_parent_run(tracking_uri, experiment, "bench-quality-rescore", params,
                                   {"dartboard.study_kind": "bench-quality-rescore"})
    failed = True
    try:
        for r in result["records"]:
            history = [{k: v for k, v in c.items() if k != "epoch"} for c in r["curve"]]
            runs.log_child_run(tracking_uri, parent, f"{r['searcher']}-s{r['seed']}",
                               {"searcher": r["searcher"], "seed": r["seed"]}, history, {}, [],
                               {"searcher": r["searcher"], "seed": str(r["seed"])})
        c = runs.client(tracking_uri)
        for row in result["rows"]:
            c.log_metric(parent, f"{row['searcher']}.final_regret_mean", float(row["final_regret_mean"]))
        for path in (source, source.parent / "quality.md", Path(result["plot"])):
            if path.is_file():
                c.log_artifact(parent, str(path))
        failed = False
    finally:
        runs.end_run(tracking_uri, parent, failed=failed)
    return parent

