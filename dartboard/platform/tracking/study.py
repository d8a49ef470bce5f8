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
from dartboard.platform.tracking.champion import SIGNATURE_TAG, Decision, decide, objective_signature
from dartboard.platform.tracking.models import (
    CHAMPION_ALIAS,
    GENOTYPE_FILE,
    NETWORK_FILE,
    filter_literal,
    register_champion,
)

log = logging.getLogger("dartboard")
SKIP_FILES = {"searcher.pt", "progress.json"}  # the search state: large and of no use outside a resume


class StudyTracker:
    """Plug into ``run_study(tracker=...)``: ``open`` -> ``log_trial`` (live, idempotent) ->
    ``finish`` (every trial again, idempotent; parent artifacts; champion) -> ``close``."""

    def __init__(self, uri: str | None = None, experiment: str | None = None, register: bool = True,
                 promote: bool = False):
        from dartboard.platform.checks import check_tracking_server

        check_tracking_server(runs.tracking_uri(uri))  # a server that is down: one line now, before any trial
        self.uri, self.experiment, self.register, self.promote = uri, experiment, register, promote
        self.parent: str | None = None
        self.study: Any = None
        self.children: dict[str, str] = {}
        self.champion: Any = None  # the registered model version, after finish()
        self.decision: Decision | None = None  # whether it took the champion alias, and why

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
                "searcher": trial["searcher"], "seed": str(trial["seed"]), "trial": trial["key"],
                "space": _space(self.study, trial), "dataset": self.study.dataset}
        with tempfile.TemporaryDirectory() as tmp:
            files = _trial_files(trial, Path(tmp))
            rid = runs.log_child_run(self.uri, self.parent, trial["key"], params, trial.get("history") or [],
                                     dict(trial.get("metrics") or {}), files, tags, trial.get("started"),
                                     trial.get("times"))
        self.children[trial["key"]] = rid
        return rid

    def finish(self, result: Any, artifacts: list[Path], numbers: Mapping[str, float]) -> None:
        c = runs.client(self.uri)
        for trial in result.trials:  # idempotent: trials logged live are found, not logged twice
            self.log_trial(trial)
        for key, value in numbers.items():
            c.log_metric(self.parent, runs.mlflow_name(key), float(value))
        for path in artifacts:
            c.log_artifact(self.parent, str(path), "plots" if Path(path).suffix == ".png" else None)
        self._summary(c, result)
        if self.register and result.best is not None and result.best.get("genotype"):
            self.champion = self._register(result.best)

    def _summary(self, c: Any, result: Any) -> None:
        """The study at a glance on its parent run: the objective of every trial (step = study order),
        the best trial's objective, configuration and champion metrics, tags, summary plots."""
        import json

        from mlflow.entities import Metric

        from dartboard.platform.reports import study_plots

        now = int(__import__("time").time() * 1000)
        points = [Metric("trial_objective", float(t["objective"]), now, i) for i, t in enumerate(result.trials)
                  if runs._is_number(t.get("objective"))]
        best = result.best
        if best is not None:
            final = best.get("final") or {}
            merged = {**best.get("metrics", {}), **final}
            points.append(Metric("best_objective", float(best["objective"]), now, 0))
            points += [Metric(f"champion.{k}", float(merged[k]), now, 0) for k in ("test_acc", "test_loss",
                                                                                 "parameters")
                       if runs._is_number(merged.get(k))]
            c.set_tag(self.parent, "best.trial", best["key"])
            c.set_tag(self.parent, "best.config", json.dumps({"variant": best["variant"], **best["config"]},
                                                             sort_keys=True, default=str)[:5000])
        if points:
            c.log_batch(self.parent, metrics=points)
        study = self.study
        c.set_tag(self.parent, "space", study.space or ",".join(sorted({_space(study, t) for t in result.trials})))
        c.set_tag(self.parent, "dataset", study.dataset)
        c.set_tag(self.parent, "seeds", ",".join(str(s) for s in study.trial_seeds()))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            made = [study_plots.plot_objectives(result.trials, folder / "objective_per_trial.png", study.name),
                    study_plots.plot_parallel(result.trials, sorted(study.params), folder / "parallel_coordinates.png"),
                    study_plots.plot_curves(result.trials, folder / "trial_curves.png")]
            for path in (p for p in made if p is not None):
                c.log_artifact(self.parent, str(path), "plots")

    def close(self, failed: bool) -> None:
        if self.parent is not None:
            runs.end_run(self.uri, self.parent, failed)

    def _register(self, best: Mapping[str, Any]):
        cfg = self.study
        name = cfg.register_as or cfg.name
        c = runs.client(self.uri)
        for version in c.search_model_versions(f"name={filter_literal(name)} and tag.study={filter_literal(cfg.name)}"):
            if version.tags.get("trial") == best["key"]:  # a resumed study registered it already
                moved = version.tags.get("champion.moved") == "1"
                self.decision = Decision(moved, version.tags.get("champion.decision", "registered before a resume"))
                if moved:
                    c.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
                return version
        tags = {"study": cfg.name, "trial": best["key"], "searcher": best["searcher"],
                "space": _space(cfg, best), "dataset": cfg.dataset, "seed": best["seed"],
                "metric.objective": best.get("objective"), SIGNATURE_TAG: objective_signature(cfg)}
        metrics = {**best.get("metrics", {}), **(best.get("final") or {})}
        # full precision (str of a float round-trips), as the final-training registration stores them
        tags.update({f"metric.{k}": str(metrics[k]) for k in ("test_acc", "test_error", "parameters")
                     if isinstance(metrics.get(k), (int, float))})
        with tempfile.TemporaryDirectory() as tmp:
            folder = _champion_folder(best, Path(tmp))
            tags.update(_pruned_vit_tags(folder, metrics))
            self.decision = decide(_alias_tags(c, name), tags, self.promote)
            log.info("champion: %s %s (%s)", name, "takes @" + CHAMPION_ALIAS if self.decision.move
                     else "is registered without the alias", self.decision.reason)
            return register_champion(self.uri, name, self.children.get(best["key"]) or self.parent, folder,
                                     {**tags, "champion.decision": self.decision.reason,
                                      "champion.moved": "1" if self.decision.move else "0"},
                                     alias=CHAMPION_ALIAS if self.decision.move else None)


def _pruned_vit_tags(folder: Path, metrics: Mapping[str, Any]) -> dict[str, str]:
    """A DARIO trial's fine-tuned pruned ViT records its accuracy on the test split in its network.json: the
    version's ``metric.test_acc``, as a final training's has it; its parameter counts before and after the pruning
    (the trial's ``params_original`` and ``parameters``), the kept blocks and the model: the tags a pruned ViT of
    ``dartboard prune`` has."""
    import json

    from dartboard.platform.tracking.pruned import pruned_tags
    from dartboard.spaces.genotype import GateGenotype, load

    try:
        network = json.loads((folder / NETWORK_FILE).read_text())
        genotype = load(folder / GENOTYPE_FILE)
    except (OSError, ValueError):  # a GenotypeError is one
        return {}
    if not isinstance(network, dict) or network.get("kind") != "pruned-vit" or not isinstance(genotype, GateGenotype):
        return {}
    acc, sizes = network.get("test_acc"), [metrics.get(k) for k in ("params_original", "parameters")]
    tags = {"metric.test_acc": str(float(acc))} if isinstance(acc, int | float) else {}
    if all(isinstance(n, int | float) and n > 0 for n in sizes):
        tags.update({k: str(v) for k, v in pruned_tags(int(sizes[0]), int(sizes[1]), None, genotype).items()})
    return tags


def _space(study: Any, trial: Mapping[str, Any]) -> str:
    """The space a trial searched: a sampled one, the study's, its variant's option, the study's options', else its
    preset's default (the order ``trial_run_config`` lays them in)."""
    from dartboard.searchers.presets import space_of

    variant = next((v for v in study.variants if v.name == trial.get("variant")), None)
    given = (trial["config"].get("space") or study.space or (variant.options.get("space") if variant else None)
             or study.options.get("space"))
    return space_of(trial["searcher"], {"space": given})


def _alias_tags(c: Any, name: str) -> dict[str, str] | None:
    """The tags of the version of ``name`` holding the champion alias (None: no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(c.get_model_version_by_alias(name, CHAMPION_ALIAS).tags)
    except MlflowException:
        return None


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
