"""Sweeps of the outer hyperparameters: Ray Tune + OptunaSearch (TPE, seeded) + ASHA.

A study (YAML -> :class:`~dartboard.platform.config.SweepConfig`) names the searcher(s), space,
dataset, budget (search epochs) and the outer hyperparameters as distributions. Each Tune trial
is a function (:func:`run_trial`) that launches the trial's search as a Ray Train TorchTrainer
(``worker.py``) named ``train-<trial_id>``, so a retried or resumed trial continues from its last
checkpoint. ASHA decides on a per-epoch metric with ``time_attr="epoch"`` (the epoch counter the
workers report, which survives restores, unlike ``training_iteration``).

ASHA-stopped trials and Optuna: Tune hands a stopped trial to the searcher as *complete* with
its truncated last value, which would bias TPE. :class:`PruneAwareOptunaSearch` tells Optuna such
trials are PRUNED instead (a trial is complete only when its last report says ``search_done``),
and reports every epoch's objective as an intermediate value keyed by the epoch, so TPE still
learns from pruned trials the way Optuna's own pruners make it do.

NaN/inf: the workers end a diverged trial with a ``nonfinite`` report; :class:`_TrialHooks` turns
Tune's retries off for it and :func:`run_trial` raises :class:`NonFiniteLossError`, so the trial
ends as errored with that reason and the sweep goes on.

Plug-ins (MLflow, issue 6): callables in :data:`SWEEP_CALLBACKS` or passed as ``callbacks`` are
called as ``hook("trial", payload)`` for each finished trial (complete, pruned or errored) and
``hook("study", payload)`` once with the best result at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from dartboard.platform.config import SearchRunConfig, SweepConfig, load_yaml
from dartboard.platform.worker import NonFiniteLossError, make_trainer

log = logging.getLogger("dartboard")

STUDIES_DIR = Path(__file__).parent / "studies"
DEFAULT_STUDY = "digits"
STUDY_FILE = "study.yaml"
RESULT_FILE = "sweep_result.json"
CHAMPION_DIR = "champion"
#: Hooks called as hook(event, payload), event "trial" or "study"; other modules append here.
SWEEP_CALLBACKS: list[Callable[[str, dict[str, Any]], None]] = []
# Worker start-up imports torch in fresh processes; Ray Train's 60 s default is tight on 2 busy cores.
WORKER_START_TIMEOUT_S = "600"
MIN_DRIVER_CPUS = 0.01


# ------------------------------------------------------------------ study loading and validation
def study_path(name_or_path: str | None) -> Path:
    """A YAML path, or the name of a bundled preset in ``dartboard/platform/studies``."""
    name = name_or_path or DEFAULT_STUDY
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    preset = STUDIES_DIR / f"{name}.yaml"
    if not preset.is_file():
        known = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"study: {name!r} is neither a YAML file nor a preset; presets: {known}")
    return preset


def load_study(name_or_path: str | None = None) -> SweepConfig:
    return SweepConfig(**load_yaml(study_path(name_or_path)))


def validate_study(cfg: SweepConfig) -> None:
    """Every check that needs no running cluster: searchers, hyperparameter names, space, data."""
    from dartboard.searchers.registry import get_searcher_spec
    from dartboard.spaces.catalog import get_space

    specs = {}
    for name in cfg.searchers():
        try:
            specs[name] = get_searcher_spec(name)
        except ValueError as err:
            raise ValueError(f"searcher: {err}") from None
    if cfg.space is not None:
        try:
            get_space(cfg.space)
        except (KeyError, ValueError) as err:
            raise ValueError(f"space: {err}") from None
    for key in ("epochs", "space"):
        if key in cfg.options or key in cfg.params:
            raise ValueError(f"options.{key}: set the study's top-level {key!r} field instead")
    for name, spec in specs.items():
        unknown = sorted(set(cfg.options) - set(spec.options))
        if unknown:
            raise ValueError(f"options.{unknown[0]}: searcher {name!r} has no hyperparameter {unknown[0]!r}; "
                             f"its hyperparameters: {', '.join(sorted(spec.options))}")
    for pname, dist in cfg.params.items():
        if pname == "searcher":
            raise ValueError("params.searcher: give several searchers as a list in the study's 'searcher' field")
        when = dict(dist.when)
        applies = when.pop("searcher", cfg.searchers())
        applies = [applies] if isinstance(applies, str) else list(applies)
        for s in applies:
            if s not in specs:
                raise ValueError(f"params.{pname}.when.searcher: {s!r} is not one of the study's searchers "
                                 f"{cfg.searchers()}")
            if pname not in specs[s].options:
                raise ValueError(f"params.{pname}: searcher {s!r} has no hyperparameter {pname!r}; "
                                 f"its hyperparameters: {', '.join(sorted(specs[s].options))}")
        for other in when:
            if other not in cfg.params:
                raise ValueError(f"params.{pname}.when.{other}: conditions may name 'searcher' or another "
                                 f"parameter of the study, got {other!r}")
        for v in dist.values or []:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(f"params.{pname}.values: choices must be numbers, strings, booleans or null, "
                                 f"got {v!r}")
    if cfg.dataset != "digits" and cfg.data_root is None and cfg.dataset != "imagefolder":
        raise ValueError(f"data_root: dataset {cfg.dataset!r} needs a local data_root (nothing is downloaded)")


def check_resources(cfg: SweepConfig, cpus: float, gpus: float) -> None:
    """Refuse a trial that no node set of this size could ever run (one clear error, before start)."""
    r = cfg.resources
    need_cpu = r.workers * r.cpus_per_worker + r.trial_driver_cpus
    need_gpu = r.workers * r.gpus_per_worker
    if need_gpu > gpus:
        raise ValueError(f"resources.gpus_per_worker: a trial needs {r.workers} worker(s) x {r.gpus_per_worker:g} GPU "
                         f"= {need_gpu:g} GPU(s) but the cluster has {gpus:g}")
    if need_cpu > cpus:
        raise ValueError(f"resources.cpus_per_worker: a trial needs {r.workers} worker(s) x {r.cpus_per_worker:g} CPU "
                         f"+ {r.trial_driver_cpus:g} for its driver = {need_cpu:g} CPUs but the cluster has {cpus:g}")


def resolve_storage(storage: str | None) -> str:
    """Local folders become absolute (default ./runs/sweeps); s3://, gs:// and other URIs stay."""
    if storage and "://" in storage and not storage.startswith("file://"):
        return storage.rstrip("/")
    return str(Path(storage.removeprefix("file://") if storage else "runs/sweeps").expanduser().resolve())


def check_storage(storage: str) -> None:
    """Write and delete a probe file, so an unwritable storage fails before any trial starts."""
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage)
        fs.create_dir(root, recursive=True)
        probe = f"{root}/.dartboard-write-probe"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as err:  # noqa: BLE001 - any filesystem failure is the same user error
        raise ValueError(f"storage: {storage!r} is not writable ({' '.join(str(err).split())})") from None


# ------------------------------------------------------------------ search space and Optuna
class StudySpace:
    """Optuna define-by-run space (picklable: OptunaSearch saves its state with pickle)."""

    def __init__(self, params: dict[str, dict[str, Any]], searchers: list[str]):
        self.params, self.searchers = params, searchers

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        chosen: dict[str, Any] = {}
        if len(self.searchers) > 1:
            chosen["searcher"] = trial.suggest_categorical("searcher", self.searchers)
        for name, d in self.params.items():
            if not all(_condition_holds(chosen, key, want, self.searchers) for key, want in d["when"].items()):
                continue
            kind = d["type"]
            if kind == "choice":
                chosen[name] = trial.suggest_categorical(name, d["values"])
            elif kind == "int":
                chosen[name] = trial.suggest_int(name, int(d["low"]), int(d["high"]), step=d["step"] or 1,
                                                 log=d["log"])
            else:
                chosen[name] = trial.suggest_float(name, d["low"], d["high"], log=kind == "loguniform" or d["log"])
        return None


def _condition_holds(chosen: dict[str, Any], key: str, want: Any, searchers: list[str]) -> bool:
    value = chosen.get(key, searchers[0] if key == "searcher" and len(searchers) == 1 else None)
    return value in want if isinstance(want, list) else value == want


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna an ASHA-stopped trial is PRUNED (not complete with a truncated
    value) and keys intermediate values by the reported epoch counter."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, step = result.get(self.metric), result.get("epoch")
        if isinstance(value, (int, float)) and math.isfinite(value) and step is not None:
            ot_trial = self._ot_trials[trial_id]
            if int(step) not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
                ot_trial.report(float(value), int(step))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if (not error and result is not None and result.get("search_done") != 1.0
                and trial_id in self._ot_trials and trial_id not in self._completed_trials):
            from optuna.trial import TrialState

            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        if result is not None and not error and not math.isfinite(float(result.get(self.metric, math.nan))):
            error, result = True, None  # a non-finite objective is a failed trial, never a value
        super().on_trial_complete(trial_id, result=result, error=error)


def make_search_alg(cfg: SweepConfig) -> PruneAwareOptunaSearch:
    import optuna

    params = {k: v.model_dump() for k, v in cfg.params.items()}
    # TPE's default 10 random start-up trials would make a small study pure random search.
    startup = min(10, max(2, cfg.num_samples // 3))
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup)
    return PruneAwareOptunaSearch(space=StudySpace(params, cfg.searchers()), metric="objective", mode="max",
                                  sampler=sampler)


def make_scheduler(cfg: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = cfg.scheduler
    if s.type == "fifo":
        return FIFOScheduler()
    mode = "min" if s.metric.endswith("loss") else "max"
    return ASHAScheduler(time_attr="epoch", metric=s.metric, mode=mode, max_t=cfg.epochs,
                         grace_period=min(s.grace_period, cfg.epochs), reduction_factor=s.reduction_factor)


# ------------------------------------------------------------------ one trial
def trial_run_config(cfg: SweepConfig, trial_config: dict[str, Any]) -> dict[str, Any]:
    """The trial's SearchRunConfig (as a dict): fixed options + this trial's sampled values."""
    searcher = trial_config.get("searcher", cfg.searchers()[0])
    options = {**cfg.options, **({"space": cfg.space} if cfg.space else {}), "epochs": cfg.epochs,
               **{k: v for k, v in trial_config.items() if k != "searcher"}}
    run = SearchRunConfig(searcher=searcher, dataset=cfg.dataset, data_root=cfg.data_root, image_size=cfg.image_size,
                          batch_size=cfg.batch_size, train_fraction=cfg.train_fraction, seed=cfg.seed,
                          device="cuda" if cfg.resources.gpus_per_worker > 0 else "cpu", options=options,
                          mlflow=False)
    return run.model_dump()


def run_trial(config: dict[str, Any], study: dict[str, Any]) -> None:
    """The Tune function trainable: launch this trial's search TorchTrainer and wait for it."""
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = SweepConfig(**study["config"])
    trial_id = tune.get_context().get_trial_id()
    r = cfg.resources
    trainer = make_trainer(trial_run_config(cfg, config), name=f"train-{trial_id}",
                           storage_path=study["train_storage"], workers=r.workers, cpus_per_worker=r.cpus_per_worker,
                           gpus_per_worker=r.gpus_per_worker, max_failures=cfg.train_max_failures,
                           objective=cfg.objective.model_dump(), callbacks=[TuneReportCallback()],
                           required_metrics=["objective", cfg.scheduler.metric])
    finished_before = train_run_finished(f"{study['train_storage']}/train-{trial_id}")
    result = trainer.fit()
    if finished_before and result.metrics:
        # The Train run had ended before a driver crash, but Tune never recorded its end (or this
        # trial would not run again): fit() resumes nothing and forwards nothing, so report it here.
        tune.report(dict(result.metrics))
    if result.metrics and result.metrics.get("nonfinite"):
        raise NonFiniteLossError(f"trial {trial_id}: {result.metrics.get('error', 'loss became NaN or inf')}")


class _TrialHooks(tune.Callback):
    """Driver-side: no retries for diverged trials; the plug-in hooks for each finished trial."""

    def __init__(self, study: str, run_dir: str, hooks: list[Callable[[str, dict[str, Any]], None]]):
        self.study, self.run_dir, self.hooks = study, run_dir, list(hooks)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("nonfinite"):
            trial.max_failures = 0  # deterministic divergence: retrying would diverge again

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        release_placement_group(last.get("placement_group_id"), last.get("node_id"))
        self._call(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        release_placement_group(last.get("placement_group_id"), last.get("node_id"))
        self._call(trial, last.get("error") or f"trial {trial.trial_id} failed (see {trial.local_path})")

    def _call(self, trial, error: str | None) -> None:
        payload = trial_payload(trial.trial_id, trial.config, trial.last_result or {}, error)
        payload.update(study=self.study, run_dir=self.run_dir)
        for hook in self.hooks + SWEEP_CALLBACKS:
            hook("trial", payload)


def release_placement_group(pg_hex: str | None, node_id: str | None = None) -> None:
    """Free the Train workers' placement group of a finished trial. Ray Train's own cleaner needs
    the state API, which fails when several Ray instances run on one machine ("Found multiple
    active Ray instances"): an ASHA-stopped trial would then hold its CPUs forever.

    A result restored from before a driver crash names a placement group of the previous Ray
    session; ids repeat across sessions, so it could name a live group of another trial. Only a
    group reported from a node of the current cluster is removed."""
    if not pg_hex:
        return
    import ray

    if node_id is not None and node_id not in {n["NodeID"] for n in ray.nodes() if n.get("Alive")}:
        return
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))
    if placement_group_table(pg).get("state") not in (None, "REMOVED"):
        try:
            remove_placement_group(pg)
        except Exception as err:  # noqa: BLE001 - already gone is fine
            log.debug("placement group %s: %s", pg_hex, err)


def trial_payload(trial_id: str, config: dict, metrics: dict, error: str | None) -> dict[str, Any]:
    status = "error" if error or metrics.get("nonfinite") else (
        "complete" if metrics.get("search_done") == 1.0 else "pruned")
    genotype = json.loads(metrics["genotype"]) if metrics.get("genotype") else None
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"trial_id": trial_id, "status": status, "config": dict(config or {}), "metrics": keep,
            "objective": metrics.get("objective"), "epoch": metrics.get("epoch"), "genotype": genotype,
            "error": metrics.get("error") or error}


# ------------------------------------------------------------------ the sweep
@dataclass
class SweepResult:
    run_dir: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)


def driver_cpus(cfg: SweepConfig) -> float:
    # Tune refuses an empty resource request; the driver only waits on its trainer.
    return max(cfg.resources.trial_driver_cpus, MIN_DRIVER_CPUS)


def local_num_cpus(cfg: SweepConfig) -> int:
    """Logical CPUs of a local Ray: this machine's, or enough for ``max_concurrent`` trials (drivers
    included), so that a trial's workers never wait on CPUs another trial's idle driver holds."""
    if cfg.ray_num_cpus:
        return cfg.ray_num_cpus
    r = cfg.resources
    per_trial = r.workers * r.cpus_per_worker + driver_cpus(cfg)
    return max(os.cpu_count() or 1, math.ceil(per_trial * cfg.max_concurrent))


def init_ray(cfg: SweepConfig) -> None:
    import ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_START_TIMEOUT_S)
    if ray.is_initialized():
        return
    # The dashboard stays on: Ray Train's placement-group cleaner needs the state API, or an ASHA-stopped
    # trial leaks its workers' placement group (PLATFORM-NOTES).
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]}
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, runtime_env={"env_vars": env})
    else:
        # address="local": always a new local instance, never another `ray start` cluster on this machine.
        ray.init(address="local", num_cpus=local_num_cpus(cfg), runtime_env={"env_vars": env})


def train_champion(cfg: SweepConfig, best: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Train the best genotype from scratch (``cfg.final_training``) on the study's data; the folder
    holds genotype.json, network.json and weights.safetensors, ready for the registry."""
    from dartboard.data.datasets import load_dataset
    from dartboard.platform.config import resolve_device
    from dartboard.platform.registry import NETWORK_FILE, network_spec
    from dartboard.spaces import genotype as gt
    from dartboard.training.final import TrainConfig, train_genotype

    final = cfg.final_training
    splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    train_cfg = TrainConfig(channels=final.channels, layers=final.layers, epochs=final.epochs,
                            batch_size=final.batch_size, seed=final.seed, device=resolve_device("auto"))
    result = train_genotype(gt.from_dict(best["genotype"]), splits, train_cfg, out_dir)
    (out_dir / NETWORK_FILE).write_text(json.dumps(network_spec(train_cfg, splits.info, cfg.dataset)))
    log.info("champion trained: test accuracy %.4f (%d parameters)", result.test_acc, result.parameters)
    return {"dir": str(out_dir), "test_acc": result.test_acc, "test_loss": result.test_loss,
            "parameters": result.parameters, "weights_sha256": result.weights_sha256}


def train_run_finished(train_dir: str) -> bool:
    """Whether the Train run stored in ``train_dir`` already reported its last epoch."""
    try:
        snapshot = json.loads(_read_text(f"{train_dir}/checkpoint_manager_snapshot.json", "train run"))
    except (ValueError, json.JSONDecodeError):
        return False
    latest = snapshot.get("latest_checkpoint_result") or {}
    return bool((latest.get("metrics") or {}).get("search_done") == 1.0)


def study_name(run_dir: str) -> str:
    """The name of the study whose sweep lives in ``run_dir``."""
    return str(yaml.safe_load(_read_text(f"{run_dir}/{STUDY_FILE}", "resume")).get("name", "study"))


def run_sweep(cfg: SweepConfig | None = None, *, resume: str | None = None,
              callbacks: list[Callable[[str, dict[str, Any]], None]] = ()) -> SweepResult:
    """Run a study (or resume the one in ``resume`` = its run directory); returns all trials and the best."""
    if resume is not None:
        run_dir = resolve_storage(resume)
        cfg = SweepConfig(**yaml.safe_load(_read_text(f"{run_dir}/{STUDY_FILE}", "resume")))
    assert cfg is not None
    validate_study(cfg)
    if resume is None:
        storage = resolve_storage(cfg.storage)
        check_storage(storage)
        run_dir = f"{storage}/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not cfg.ray_address:
        import torch

        check_resources(cfg, float(cfg.ray_num_cpus or os.cpu_count() or 1), float(torch.cuda.device_count()))
    if resume is None:
        check_storage(run_dir)
        _write_text(f"{run_dir}/{STUDY_FILE}", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    init_ray(cfg)
    import ray

    if cfg.ray_address:
        total = ray.cluster_resources()
        check_resources(cfg, float(total.get("CPU", 0)), float(total.get("GPU", 0)))
    start = time.perf_counter()
    study = {"config": cfg.model_dump(), "train_storage": f"{run_dir}/trials"}
    trainable = tune.with_resources(tune.with_parameters(run_trial, study=study), {"cpu": driver_cpus(cfg)})
    if resume is not None:
        if not tune.Tuner.can_restore(run_dir):
            raise ValueError(f"resume: {run_dir!r} holds no Tune experiment to resume")
        tuner = tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, resume_errored=False)
    else:
        parent, name = run_dir.rsplit("/", 1)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=make_search_alg(cfg), scheduler=make_scheduler(cfg),
                                        num_samples=cfg.num_samples, max_concurrent_trials=cfg.max_concurrent),
            run_config=tune.RunConfig(name=name, storage_path=parent, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                      callbacks=[_TrialHooks(cfg.name, run_dir, list(callbacks))]),
        )
    grid = tuner.fit()
    trials = []
    for r in grid:
        error = _last_line(str(r.error)) if r.error is not None else None
        trial_id = (r.metrics or {}).get("trial_id") or _trial_id_from_path(r.path)
        trials.append(trial_payload(trial_id, r.config, r.metrics or {}, error))
    complete = [t for t in trials if t["status"] == "complete" and _finite(t["objective"])]
    best = max(complete, key=lambda t: t["objective"]) if complete else None
    # On s3:// or gs:// storage the champion trains in a local staging folder, then is uploaded.
    final = best is not None and cfg.final_training is not None
    staging = Path(tempfile.mkdtemp(prefix="dartboard-champion-")) if final and "://" in run_dir else None
    try:
        hook_best = best
        if final:
            champion = f"{run_dir}/{CHAMPION_DIR}"
            best["final"] = train_champion(cfg, best, staging or Path(champion))
            if staging is not None:
                _upload_dir(staging, champion)
                best["final"]["dir"] = champion
                hook_best = {**best, "final": {**best["final"], "dir": str(staging)}}  # hooks read local files
        counts = {s: sum(t["status"] == s for t in trials) for s in ("complete", "pruned", "error")}
        result = SweepResult(run_dir, trials, best, time.perf_counter() - start, counts)
        _write_text(f"{run_dir}/{RESULT_FILE}", json.dumps({"best": best, "counts": counts, "trials": trials},
                                                              indent=1, default=str))
        payload = {"study": cfg.name, "run_dir": run_dir, "best": hook_best, "counts": counts, "trials": trials,
                   "dataset": cfg.dataset, "searcher": cfg.searchers()[0] if len(cfg.searchers()) == 1 else ""}
        for hook in list(callbacks) + SWEEP_CALLBACKS:
            hook("study", payload)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return result


def _last_line(text: str) -> str:
    """The exception line of a remote traceback (the reason, without Ray's frames)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else text


def _trial_id_from_path(path: str | None) -> str:
    # Tune names trial folders <trainable>_<trial_id>_<n>_<params>_<date>; the trainable is run_trial.
    name = (path or "").rstrip("/").rsplit("/", 1)[-1]
    return name.removeprefix("run_trial_").split("_", 1)[0]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _write_text(uri: str, text: str) -> None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def _upload_dir(local: Path, uri: str) -> None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)


def _read_text(uri: str, field_name: str) -> str:
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError) as err:
        raise ValueError(f"{field_name}: cannot read {uri!r}: is it a sweep run directory? ({err})") from None
