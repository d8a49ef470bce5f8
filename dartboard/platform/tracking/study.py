"""One MLflow layout for every study kind: the study is a parent run (tagged with its run directory,
so a resumed study reopens it), each trial a child run (its config as params, every epoch's
metrics, its final metrics, the files of its last checkpoint), the front end's tables and plots are
the parent's artifacts, and the champion (the complete trial with the best objective) is registered
once as ``register_as@champion`` with its genotype and, when trained, its weights."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dartboard.platform.tracking import runs
from dartboard.platform.tracking.models import CHAMPION_ALIAS, GENOTYPE_FILE, register_champion

log = logging.getLogger("dartboard")
SKIP_FILES = {"searcher.pt", "progress.json"}  # the search state: large and of no use outside a resume


class StudyTracker:
    """Plug into ``run_study(tracker=...)``: ``open`` -> ``log_trial`` (live, idempotent) ->
    ``finish`` (every trial again, idempotent; parent artifacts; champion) -> ``close``."""

    def __init__(self, uri: str | None = None, experiment: str | None = None, register: bool = True):
        from dartboard.platform.checks import check_tracking_server

        check_tracking_server(runs.tracking_uri(uri))  # a server that is down: one line now, before any trial
        self.uri, self.experiment, self.register = uri, experiment, register
        self.parent: str | None = None
        self.study: Any = None
        self.children: dict[str, str] = {}
        self.champion: Any = None  # the registered model version, after finish()

    def open(self, cfg: Any, run_dir: str) -> str:
        self.study = cfg
        experiment = self.experiment or cfg.experiment
        params = {"run_dir": run_dir, "sampler": cfg.sampler, "epochs": cfg.epochs, "dataset": cfg.dataset,
                  "variants": [v.name for v in cfg.variants], "seeds": cfg.trial_seeds(), "options": cfg.options,
                  "params": sorted(cfg.params)}
        self.parent = runs.start_parent_run(self.uri, experiment, f"study-{cfg.name}", params,
                                            {"study": cfg.name, runs.RUN_DIR_TAG: run_dir},
                                            run_id=runs.find_study_run(self.uri, experiment, run_dir))
        return self.parent

    def log_trial(self, trial: Mapping[str, Any]) -> str:
        assert self.parent is not None, "open() the study first"
        params = {"variant": trial["variant"], "searcher": trial["searcher"], "seed": trial["seed"],
                  **{k: v for k, v in trial["config"].items() if k not in ("variant", "seed")}}
        tags = {"study": self.study.name, "status": str(trial["status"]), "variant": trial["variant"],
                "searcher": trial["searcher"], "seed": str(trial["seed"]), "trial": trial["key"]}
        with tempfile.TemporaryDirectory() as tmp:
            files = _trial_files(trial, Path(tmp))
            rid = runs.log_child_run(self.uri, self.parent, trial["key"], params, trial.get("history") or [],
                                     dict(trial.get("metrics") or {}), files, tags)
        self.children[trial["key"]] = rid
        return rid

    def finish(self, result: Any, artifacts: list[Path], numbers: Mapping[str, float]) -> None:
        c = runs.client(self.uri)
        for trial in result.trials:  # idempotent: trials logged live are found, not logged twice
            self.log_trial(trial)
        for key, value in numbers.items():
            c.log_metric(self.parent, _metric_name(key), float(value))
        for path in artifacts:
            c.log_artifact(self.parent, str(path), "plots" if Path(path).suffix == ".png" else None)
        if self.register and result.best is not None and result.best.get("genotype"):
            self.champion = self._register(result.best)

    def close(self, failed: bool) -> None:
        if self.parent is not None:
            runs.end_run(self.uri, self.parent, failed)

    def _register(self, best: Mapping[str, Any]):
        cfg = self.study
        name = cfg.register_as or cfg.name
        c = runs.client(self.uri)
        for version in c.search_model_versions(f"name='{name}' and tag.study='{cfg.name}'"):
            if version.tags.get("trial") == best["key"]:  # a resumed study registered it already
                c.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
                return version
        tags = {"study": cfg.name, "trial": best["key"], "searcher": best["searcher"],
                "space": cfg.space or best["config"].get("space", ""), "dataset": cfg.dataset, "seed": best["seed"],
                "metric.objective": best.get("objective")}
        metrics = {**best.get("metrics", {}), **(best.get("final") or {})}
        tags.update({f"metric.{k}": f"{metrics[k]:.6g}" for k in ("test_acc", "test_error", "parameters")
                     if isinstance(metrics.get(k), (int, float))})
        with tempfile.TemporaryDirectory() as tmp:
            folder = _champion_folder(best, Path(tmp))
            return register_champion(self.uri, name, self.children.get(best["key"]) or self.parent, folder, tags)


def _trial_files(trial: Mapping[str, Any], tmp: Path) -> list[Path]:
    """The trial's last checkpoint without the search state; just genotype.json for a pruned trial."""
    from dartboard.platform.ray.storage import download_dir

    if trial.get("checkpoint"):
        folder = download_dir(trial["checkpoint"], tmp / "checkpoint")
        return sorted(p for p in folder.iterdir() if p.is_file() and p.name not in SKIP_FILES)
    if trial.get("genotype"):
        import json

        (tmp / GENOTYPE_FILE).write_text(json.dumps(trial["genotype"]))
        return [tmp / GENOTYPE_FILE]
    return []


def _champion_folder(best: Mapping[str, Any], tmp: Path) -> Path:
    """Where the champion's files are: the study's trained champion, else the trial's checkpoint
    (it holds weights when every trial trained its network), else its genotype alone."""
    import json

    from dartboard.platform.ray.storage import download_dir

    final = best.get("final")
    if final and final.get("dir"):
        return download_dir(final["dir"], tmp / "champion") if "://" in final["dir"] else Path(final["dir"])
    if best.get("checkpoint"):
        return download_dir(best["checkpoint"], tmp / "checkpoint")
    (tmp / GENOTYPE_FILE).write_text(json.dumps(best["genotype"]))
    return tmp


def _metric_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_./ " else "_" for c in text)
