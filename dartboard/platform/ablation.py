"""Comparative ablation studies: a grid of variants (searcher presets + options) x seeds, run in
parallel as Ray Tune trials, resumable, summarised as mean +- std per variant (Maile et al.
Table 1: test error, network size, search cost over 3 seeds) in Markdown and CSV, with plots
(metric vs size per trial, alpha evolution of each variant's best seed), all logged to one
parent MLflow run whose children are the trials.

Each trial: search on the study's data -> derive -> train the final network -> test. The
search reports every epoch with a checkpoint (searcher state without pickled objects), so a
trial interrupted by a killed driver or a lost node continues from its last epoch.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dartboard.platform.ablation_report import (  # noqa: F401 - re-exported
    METRIC_LABELS,
    _slug,
    best_per_variant,
    markdown_table,
    mean_std,
    plot_alphas,
    plot_scatter,
    summarize,
    trial_dir,
    write_tables,
)

log = logging.getLogger("dartboard")

STUDY_FILE = "study.json"
# Maile et al. Table 1 reports test error (%), evaluation network size and search cost.
DEFAULT_METRICS = ("test_error", "parameters", "search_seconds")



class AblationVariant(BaseModel):
    """One row of the table: a registered searcher (or preset) and options on top of the study's."""

    model_config = ConfigDict(extra="forbid")
    name: str
    searcher: str
    options: dict[str, Any] = Field(default_factory=dict)


class AblationStudy(BaseModel):
    """A study YAML: variants x seeds, the shared search and final-training settings, the metrics."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    dataset: str = "digits"
    data_root: str | None = None
    batch_size: int = Field(64, ge=1)
    # DARTS: train half / val half; None = the split each variant's schedule implies (CS-k, FIMT: 10/11)
    train_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])  # Maile et al.: 3 seeds per experiment
    variants: list[AblationVariant]
    search: dict[str, Any] = Field(default_factory=dict)  # searcher options shared by every variant
    train: dict[str, Any] = Field(default_factory=lambda: {"channels": 16, "layers": 8, "epochs": 30})
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    size_metric: str = "parameters"
    rank_metric: str = "test_error"  # lower is better; picks each variant's best seed and the champion
    device: str = "auto"
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent_trials: int = Field(0, ge=0)  # 0: as many as the cluster's resources allow
    max_failures: int = Field(1, ge=0)
    storage_path: str | None = None  # shared storage (s3://, gs://, NFS) on multi-node clusters
    experiment: str = "dartboard-ablations"
    tracking_uri: str | None = None
    mlflow: bool = True
    register_as: str | None = None  # registered-model name for the best trial (alias champion)

    @field_validator("variants", mode="before")
    @classmethod
    def _variants(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected a non-empty list of variants, got {value!r}")
        return [{"name": v, "searcher": v} if isinstance(v, str) else v for v in value]

    @model_validator(mode="after")
    def _check(self) -> AblationStudy:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variants: names must be unique, repeated: {', '.join(dup)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: expected distinct seeds, got {self.seeds}")
        if not self.metrics:
            raise ValueError("metrics: expected at least one metric")
        return self

    def variant(self, name: str) -> AblationVariant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ValueError(f"variant {name!r} is not in study {self.name!r}")


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> AblationStudy:
    from dartboard.platform.config import load_yaml

    return AblationStudy(**{**load_yaml(path), **(overrides or {})})


def check_searchers(study: AblationStudy) -> None:
    """Every variant must name a registered searcher (clear error listing the known ones)."""
    from dartboard.searchers.registry import SEARCHERS

    missing = [f"{v.name} (searcher {v.searcher!r})" for v in study.variants if v.searcher not in SEARCHERS]
    if missing:
        raise ValueError(f"study {study.name!r}: unknown searchers for variants {'; '.join(missing)}; "
                         f"registered: {', '.join(sorted(SEARCHERS))}")


def trial_key(variant: str, seed: int) -> str:
    return f"{variant}/seed{seed}"


# ---------------------------------------------------------------------------------------------
# The trial (runs in a Ray worker process)
# ---------------------------------------------------------------------------------------------

def _save_searcher(searcher: Any, history: list[dict], seconds: float, folder: Path) -> None:
    import torch

    state = searcher.state_dict()
    state.pop("rng", None)  # python/numpy RNG states are not weights_only-loadable
    torch.save(state, folder / "searcher.pt")
    (folder / "progress.json").write_text(json.dumps({"history": history, "search_seconds": seconds}))


def _restore_searcher(searcher: Any, folder: Path) -> tuple[list[dict], float]:
    import torch

    from dartboard.searchers.base import rng_state

    state = torch.load(folder / "searcher.pt", weights_only=True, map_location=searcher.device)
    state["rng"] = rng_state()
    searcher.load_state_dict(state)
    progress = json.loads((folder / "progress.json").read_text())
    return progress["history"], float(progress["search_seconds"])


def ablation_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one (variant, seed) of a study."""
    import ray.tune
    import torch

    from dartboard.data.datasets import load_dataset
    from dartboard.platform.config import SearchRunConfig, resolve_device
    from dartboard.platform.registry import network_spec
    from dartboard.platform.run import make_searcher, search_loaders, write_search_artifacts
    from dartboard.searchers.base import seed_everything
    from dartboard.searchers.loop import run_epoch
    from dartboard.training.final import TrainConfig, train_genotype

    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    study = AblationStudy(**config["study"])
    variant, seed = study.variant(config["variant"]), int(config["seed"])
    cfg = SearchRunConfig(searcher=variant.searcher, dataset=study.dataset, data_root=study.data_root,
                          batch_size=study.batch_size, train_fraction=study.train_fraction, seed=seed,
                          device=study.device, options={**study.search, **variant.options}, mlflow=False)
    seed_everything(seed)
    splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    searcher = make_searcher(cfg, splits)
    train_loader, val_loader = search_loaders(cfg, splits, searcher)
    history: list[dict] = []
    seconds = 0.0
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            history, seconds = _restore_searcher(searcher, Path(folder))
        log.info("trial %s resumes after epoch %d", trial_key(variant.name, seed), len(history))
    epochs = searcher.epochs
    for epoch in range(len(history), epochs):
        start = time.perf_counter()
        metrics = run_epoch(searcher, train_loader, val_loader)
        seconds += time.perf_counter() - start
        history.append({k: float(v) for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            _save_searcher(searcher, history, seconds, Path(tmp))
            ray.tune.report({**history[-1], "epoch": epoch + 1, "search_seconds": seconds, "done": 0},
                            checkpoint=ray.tune.Checkpoint.from_directory(tmp))
        if searcher.stop_requested:
            break
    genotype = searcher.derive()
    final = {"search_seconds": seconds, "epoch": len(history), "done": 1}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_search_artifacts(searcher, genotype, history, out)
        if searcher.history:
            (out / "alpha_meta.json").write_text(json.dumps(
                {"group_primitives": [g.primitives for g in searcher.alpha_groups()],
                 "edges": searcher.alpha_groups()[0].rows}))
        tcfg = TrainConfig(**{**study.train, "seed": seed, "device": resolve_device(study.device)})
        result = train_genotype(genotype, splits, tcfg, out)
        (out / "network.json").write_text(json.dumps(network_spec(tcfg, splits.info, study.dataset)))
        final.update({"test_acc": result.test_acc, "test_error": 100.0 * (1.0 - result.test_acc),
                      "test_loss": result.test_loss, "parameters": float(result.parameters),
                      "train_seconds": result.seconds})
        (out / "result.json").write_text(json.dumps({"variant": variant.name, "searcher": variant.searcher,
                                                     "seed": seed, **final}))
        ray.tune.report(final, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def _trial_dirname(trial: Any) -> str:
    return f"{_slug(trial.config['variant'])}-seed{trial.config['seed']}-{trial.trial_id}"


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------

def _fit(study: AblationStudy, storage: str, resume: bool):
    from ray import tune

    resources = {"cpu": study.cpus_per_trial, "gpu": study.gpus_per_trial}
    trainable = tune.with_resources(ablation_trial, resources)
    path = f"{storage.rstrip('/')}/{study.name}"
    if resume and tune.Tuner.can_restore(path):
        log.info("ablation: resuming %s", path)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        space = {"variant": tune.grid_search([v.name for v in study.variants]),
                 "seed": tune.grid_search(list(study.seeds)), "study": study.model_dump(),
                 "threads": max(1, int(study.cpus_per_trial))}
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=study.max_concurrent_trials or None,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=study.name, storage_path=storage, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=study.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    return tuner.fit()


def collect(grid: Any, trials: Path) -> list[dict[str, Any]]:
    """Finished trials' final metrics; their last checkpoint (genotype, weights, histories) is copied
    to ``trials/VARIANT/seedN``."""
    results = []
    for r in grid:
        metrics = r.metrics or {}
        if r.error is not None or not metrics.get("done") or r.checkpoint is None:
            log.warning("ablation: trial %s did not finish (%s)", r.config and trial_key(r.config["variant"],
                        r.config["seed"]), r.error)
            continue
        folder = trial_dir(trials, r.config["variant"], r.config["seed"])
        r.checkpoint.to_directory(str(folder))
        results.append(json.loads((folder / "result.json").read_text()))
    return results


def _metric_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_./ " else "_" for c in text)


def run_ablation(study: AblationStudy, out: str | Path, resume: bool = False, address: str | None = None,
                 num_cpus: int | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) ``study`` into ``out``; return paths and table rows."""
    import ray

    from dartboard.platform import registry

    out = Path(out).resolve()
    state_file = out / STUDY_FILE
    if resume:
        if not state_file.is_file():
            raise FileNotFoundError(f"--resume {str(out)!r}: no {STUDY_FILE} there; expected the folder of "
                                    "an ablation started with `dartboard ablate`")
        state = json.loads(state_file.read_text())
        study = AblationStudy(**state["study"])
    else:
        if state_file.exists():
            raise ValueError(f"out: {str(out)!r} already holds a study; continue it with --resume {out} "
                             "or choose another --out")
        state = {"study": study.model_dump(), "parent_run_id": None}
    check_searchers(study)
    out.mkdir(parents=True, exist_ok=True)
    uri = study.tracking_uri
    if study.mlflow:
        state["parent_run_id"] = registry.start_parent_run(
            uri, study.experiment, f"ablation-{study.name}",
            {"dataset": study.dataset, "seeds": study.seeds, "variants": [v.name for v in study.variants],
             "search": study.search, "train": study.train}, {"study": study.name}, state.get("parent_run_id"))
    storage = study.storage_path or str(out / "ray")
    state["storage"] = storage
    state_file.write_text(json.dumps(state, indent=1))
    parent, failed = state["parent_run_id"], True
    try:
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        grid = _fit(study, storage, resume)
        trials = out / "trials"
        results = collect(grid, trials)
        rows = summarize(study, results)
        md, csv_path = write_tables(study, rows, out)
        plots = out / "plots"
        plots.mkdir(exist_ok=True)
        figures = [plot_scatter(study, results, plots / "metric_vs_size.png")] if results else []
        best = best_per_variant(study, results)
        figures += plot_alphas(study, best, trials, plots)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        summary = {"table_md": md, "table_csv": csv_path, "plots": figures, "rows": rows, "results": results,
                   "parent_run_id": parent, "champion": None}
        if study.mlflow:
            summary["champion"] = _log_study(study, uri, parent, results, rows, trials, out, figures)
        failed = len(results) < len(study.variants) * len(study.seeds)
        log.info("ablation: %d/%d trials done; table %s", len(results),
                 len(study.variants) * len(study.seeds), md)
        return summary
    finally:
        if parent:
            registry.end_run(uri, parent, failed)


def _log_study(study: AblationStudy, uri: str | None, parent: str, results: list[dict[str, Any]],
               rows: list[dict[str, Any]], trials: Path, out: Path, figures: list[Path]):
    from dartboard.platform import registry

    c = registry.client(uri)
    child_ids = {}
    for r in results:
        v = study.variant(r["variant"])
        folder = trial_dir(trials, v.name, r["seed"])
        history_file = folder / "history.json"
        history = json.loads(history_file.read_text()) if history_file.is_file() else []
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".png", ".safetensors"))
        child_ids[trial_key(v.name, r["seed"])] = registry.log_child_run(
            uri, parent, trial_key(v.name, r["seed"]),
            {"variant": v.name, "searcher": v.searcher, "seed": r["seed"], **study.search, **v.options},
            history, {k: x for k, x in r.items() if isinstance(x, (int, float))}, files,
            {"study": study.name, "variant": v.name, "searcher": v.searcher, "seed": str(r["seed"])})
    for row in rows:
        for m in study.metrics:
            mean, std = row[m]
            if not math.isnan(mean):
                c.log_metric(parent, _metric_name(f"{row['variant']}.{m}_mean"), mean)
                c.log_metric(parent, _metric_name(f"{row['variant']}.{m}_std"), std)
    for path in [out / "table.md", out / "table.csv", out / STUDY_FILE, out / "results.json"]:
        c.log_artifact(parent, str(path))
    for path in figures:
        c.log_artifact(parent, str(path), "plots")
    if not study.register_as or not results:
        return None
    best = min(results, key=lambda r: r[study.rank_metric])
    key = trial_key(best["variant"], best["seed"])
    existing = c.search_model_versions(f"name='{study.register_as}' and tag.study='{study.name}'")
    for version in existing:
        if version.tags.get("trial") == key:
            c.set_registered_model_alias(study.register_as, registry.CHAMPION_ALIAS, version.version)
            return version
    v = study.variant(best["variant"])
    options = {**study.search, **v.options}
    tags = {"study": study.name, "trial": key, "searcher": v.searcher, "space": options.get("space", "darts"),
            "dataset": study.dataset, "seed": best["seed"]}
    tags.update({f"metric.{k}": f"{best[k]:.6g}" for k in ("test_acc", "test_error", "parameters",
                                                            "search_seconds") if k in best})
    return registry.register_champion(uri, study.register_as, child_ids[key],
                                      trial_dir(trials, v.name, best["seed"]), tags)
