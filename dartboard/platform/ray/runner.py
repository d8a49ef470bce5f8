"""The study runner: one way to run every study (sweep, ablation, benchmark).

    study YAML -> StudyConfig -> Ray Tune (Optuna TPE / random, or a grid; optional ASHA)
        each trial -> TorchTrainer (ray/worker.py), one checkpoint per epoch (ray/checkpoint.py)
    -> StudyResult (every trial: status, metrics, per-epoch history, genotype, last checkpoint)
    -> optional final training of the champion -> tracking (one MLflow parent, a child per trial,
       one champion registration) through the ``tracker`` given by the front end.

A study whose driver died (even SIGKILL) is resumed from its run directory: finished trials are
kept, running ones continue from their last epoch checkpoint with the searcher's full state, none
runs twice. The run directory holds ``study.yaml``, Tune's state, ``trials/`` and the result file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from dartboard.data.catalog import absolute_root
from dartboard.errors import MissingFileError, UserInputError, user_input
from dartboard.platform.config import StudyConfig, load_yaml
from dartboard.platform.ray import storage as st
from dartboard.platform.ray.options import set_study_key
from dartboard.platform.ray.resources import check_resources, driver_cpus
from dartboard.platform.ray.samplers import make_search_alg
from dartboard.platform.ray.session import init_ray, reclaim_sigterm, stop_ray, tune_verbosity
from dartboard.platform.ray.space import check_study, dry_build, grid_param_space, make_scheduler
from dartboard.platform.ray.trial import TrialCallback, TrialHook, trial_payload
from dartboard.platform.ray.trial import trainable as study_trainable  # the name `trainable` is a local below
from dartboard.platform.ray.tune_usage import light_callback_usage
from dartboard.user_files import parse_mapping

log = logging.getLogger("dartboard")

STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"
DEFAULT_STUDY = "digits"
CHAMPION_DIR = "champion"


@dataclass
class StudyResult:
    run_dir: str
    config: StudyConfig
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    tracker: Any = None  # the front end's MLflow tracker, when there is one (its champion decision)


# ------------------------------------------------------------------ loading
def study_path(name_or_path: str | None) -> Path:
    """A YAML path, or the name of a bundled preset in ``dartboard/platform/studies``."""
    name = name_or_path or DEFAULT_STUDY
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    preset = STUDIES_DIR / f"{name}.yaml"
    if not preset.is_file():
        known = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.yaml")))
        raise MissingFileError(f"study: {name!r} is neither a YAML file nor a preset; presets: {known}")
    return preset


def load_study(name_or_path: str | None = None, overrides: dict[str, Any] | None = None,
               settings: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None) -> StudyConfig:
    """The study file (or preset) with ``overrides`` (top-level keys) and ``settings`` (``--set``: dotted keys into
    the study's mappings, ``options.C``) on top, validated; ``defaults``: top-level keys the file may leave out (a
    front end's own defaults)."""
    # An empty study file is a mistake, not the default study: refused like a file that holds no mapping.
    study = {**(defaults or {}),
             **load_yaml(study_path(name_or_path), empty_ok=False, what="a study (a mapping at the top level)"),
             **(overrides or {})}
    for key, value in (settings or {}).items():
        set_study_key(study, key, value)
    return StudyConfig(**study)


def stored_study(run_dir: str) -> StudyConfig:
    """The study of a run directory (for --resume). The directory is the user's input: a study file that cannot
    be read or parsed is a :class:`UserInputError` naming it (its validation, pydantic's error, is one already)."""
    uri = f"{run_dir}/{st.STUDY_FILE}"
    return StudyConfig(**parse_mapping(st.read_text(uri, "resume"), f"resume: {uri!r}",
                                       what="a study (a mapping at the top level)", empty_ok=False))


# ------------------------------------------------------------------ running
def run_study(cfg: StudyConfig | None = None, *, resume: str | None = None, tracker: Any = None,
              report: Callable[[StudyResult], tuple[list[Path], dict[str, float]]] | None = None,
              hooks: list[TrialHook] = (), run_dir: str | None = None) -> StudyResult:
    """Run ``cfg`` (or resume the study stored in the run directory ``resume``).

    ``tracker`` (``tracking.study.StudyTracker``) gets the parent run, a child per trial and the
    champion; ``report(result)`` (the front end's tables and plots) returns files and numbers for the
    parent run; ``hooks`` are called with each trial's payload as it finishes. ``run_dir``: where a
    new study lives (default ``STORAGE/NAME-TIMESTAMP``)."""
    if resume is not None:
        run_dir = st.resolve_storage(resume)
        cfg = stored_study(run_dir)
    assert cfg is not None
    if cfg.ray_address:  # a cluster that is not there: said at once, not after the checks below (torch, dry builds)
        from dartboard.platform.checks import check_ray_address

        check_ray_address(cfg.ray_address)
    # Ray starts in the background (2-4 s) while a thread of lower priority checks the study: the checks import
    # torch and build each variant's searcher (about 3 s together on 2 cores). The study is written and tracked only
    # once they passed; a study they refuse says so first, once the Ray started for it is stopped again. Ray is
    # stopped after the study and its champion (a later ``init_ray`` in this process then starts one with the
    # environment of that moment).
    ray_start = _RayInBackground(cfg)
    try:
        run_dir = _behind_ray_start(_checks, cfg, resume, run_dir, waiting=ray_start.reclaim_sigterm)
    except BaseException:
        ray_start.stop()
        raise
    # the trials' workers run in folders of their own, a resumed study maybe from another folder: the data folder
    # as this command's folder names it (the checks named it as the user gave it)
    cfg = cfg.model_copy(update={"data_root": absolute_root(cfg.data_root)})
    try:
        ray_start.result()
        if resume is None:
            st.check_storage(run_dir)
            st.write_text(f"{run_dir}/{st.STUDY_FILE}", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        return _tracked(cfg, run_dir, resume is not None, tracker, report, hooks)
    finally:
        ray_start.stop()


def _checks(cfg: StudyConfig, resume: str | None, run_dir: str | None) -> str | None:
    """Every check of the study before anything is written; returns the run directory of a new study. The
    study's own checks (its searchers, options, parameters, data, and the dry build of each variant on a tiny
    shape) only validate what the study file says: what they refuse is the user's input."""
    with user_input():
        check_study(cfg, new=resume is None)
        dry_build(cfg)
    if resume is None:
        run_dir = _new_run_dir(cfg, run_dir)
    elif not tune.Tuner.can_restore(run_dir):
        raise UserInputError(f"resume: {run_dir!r} holds no Tune experiment to resume")
    _local_checks(cfg)
    return run_dir


#: How much lower the priority of the thread that checks a study while Ray starts is (Linux; niceness, at most
#: 19). Ray's start ends when its agents,
#: fresh Python processes of normal priority, have started; the checks had about 0.8 s to spare on 2 cores.
CHECKS_NICENESS = 10


def _behind_ray_start(fn: Callable[..., Any], *args: Any, waiting: Callable[[], None] = lambda: None) -> Any:
    """``fn(*args)`` in a thread of its own whose CPU priority is lowered (by ``CHECKS_NICENESS``; Linux sets a
    niceness per thread), so that the processes of Ray's start, which the study waits for anyway, get the cores
    first. The thread ends with ``fn``: the lower priority goes with it, as an unprivileged process cannot raise it
    again. ``fn``'s result is returned and its error raised here; ``waiting()`` is called here every 50 ms meanwhile.
    Elsewhere than on Linux ``fn`` runs here."""
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return fn(*args)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            me = threading.get_native_id()  # a new thread starts at its creator's niceness: lowered from there
            os.setpriority(os.PRIO_PROCESS, me, min(os.getpriority(os.PRIO_PROCESS, me) + CHECKS_NICENESS, 19))
        except OSError as err:  # a sandbox that refuses it: the checks run at the usual priority
            log.debug("checks at the usual priority: %s", err)
        try:
            outcome["result"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="dartboard-study-checks", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
        waiting()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _new_run_dir(cfg: StudyConfig, run_dir: str | None) -> str:
    if run_dir is not None:
        run_dir = st.resolve_storage(run_dir)
        if st.exists(f"{run_dir}/{st.STUDY_FILE}"):
            raise UserInputError(f"out: {run_dir!r} already holds a study; continue it with --resume {run_dir}")
        return run_dir
    storage = st.resolve_storage(cfg.storage)
    st.check_storage(storage)
    return f"{storage}/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _tracked(cfg: StudyConfig, run_dir: str, resume: bool, tracker: Any,
             report: Callable[[StudyResult], tuple[list[Path], dict[str, float]]] | None,
             hooks: list[TrialHook]) -> StudyResult:
    if tracker is not None:
        tracker.open(cfg, run_dir)
    failed = True
    try:
        result = _run_on_ray(cfg, run_dir, resume, ([tracker.log_trial] if tracker else []) + list(hooks))
        artifacts, numbers = report(result) if report is not None else ([], {})
        if tracker is not None:
            tracker.finish(result, artifacts, numbers)
        failed = False
        return result
    finally:
        if tracker is not None:
            tracker.close(failed)


def _local_checks(cfg: StudyConfig) -> None:
    if not cfg.ray_address:
        import torch

        check_resources(cfg, float(cfg.ray_num_cpus or os.cpu_count() or 1), float(torch.cuda.device_count()))
    _warm_tune_imports()


def _warm_tune_imports() -> None:
    """Import, while Ray starts, what ``Tuner.fit`` imports before it starts the first trial: its default
    TensorBoard logger's tensorboardX (0.14 s in a driver profile of a digits sweep). Ray's usage record of the
    callbacks imported Ray's logger integrations there too (0.92 s); ``Tuner.fit`` now runs inside
    ``tune_usage.light_callback_usage``, which records them without. Only a warm-up: should a Ray release move
    these, the study runs as it would without it."""
    try:
        from ray.tune.logger import TBXLoggerCallback

        TBXLoggerCallback()
    except Exception as err:  # noqa: BLE001 - Tune imports them itself then
        log.debug("warming Tune's imports: %s", err)


class _RayInBackground:
    """``init_ray(cfg)`` in a thread that lives until :meth:`stop`. Ray starts its processes with a parent-death
    signal, which Linux ties to the thread that forked them (``PR_SET_PDEATHSIG``): were that thread to end, its
    GCS, raylet and agents would be killed with it. ``result()`` waits for the start and raises its error;
    ``stop()`` stops the Ray it started (none where Ray was running already or the start failed)."""

    def __init__(self, cfg: StudyConfig) -> None:
        self._ready, self._release = threading.Event(), threading.Event()
        self._started = self._reclaimed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(cfg,), name="dartboard-ray-start", daemon=True)
        self._thread.start()

    def _run(self, cfg: StudyConfig) -> None:
        try:
            self._started = init_ray(cfg)
        except BaseException as err:  # noqa: BLE001 - handed to the caller of result()
            self._error = err
        finally:
            self._ready.set()
        self._release.wait()

    def result(self) -> None:
        self._ready.wait()
        if self._error is not None:
            raise self._error
        self.reclaim_sigterm()

    def reclaim_sigterm(self) -> None:
        """On the main thread, once Ray has started: the process's own SIGTERM handler alone, without the native
        handler Ray's core worker installs when it connects (``session.reclaim_sigterm``), as soon as the main
        thread sees the start done (it looks every 50 ms while the study's checks run)."""
        if self._ready.is_set() and self._error is None and not self._reclaimed:
            self._reclaimed = True
            reclaim_sigterm()

    def stop(self) -> None:
        self._ready.wait()
        try:
            if self._started:
                stop_ray()
        finally:
            self._started = False
            self._release.set()
            self._thread.join()


def _run_on_ray(cfg: StudyConfig, run_dir: str, resume: bool, hooks: list[TrialHook]) -> StudyResult:
    import ray

    if cfg.ray_address:
        total = ray.cluster_resources()
        check_resources(cfg, float(total.get("CPU", 0)), float(total.get("GPU", 0)))
    start = time.perf_counter()
    # cwd: the command's folder, where the trials' workers read what the study names by relative paths (a start
    # genotype's file, say), as the checks here did
    study = {"config": cfg.model_dump(), "run_dir": run_dir, "cwd": os.getcwd()}
    trainable = study_trainable(study, driver_cpus(cfg))
    callback = TrialCallback(cfg, run_dir, hooks)
    if resume:  # _checks made sure there is one
        tuner = tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, resume_errored=False)
        # Tune restores the first driver's RunConfig (callbacks pickled without their hooks): use ours.
        tuner._local_tuner.get_run_config().callbacks = [callback]
    else:
        parent, name = run_dir.rsplit("/", 1)
        tuner = tune.Tuner(
            trainable, param_space=grid_param_space(cfg) if cfg.sampler == "grid" else None,
            tune_config=tune.TuneConfig(search_alg=make_search_alg(cfg), scheduler=make_scheduler(cfg),
                                        num_samples=cfg.num_samples, max_concurrent_trials=cfg.max_concurrent,
                                        reuse_actors=True,  # trial.ReusableTrial
                                        trial_dirname_creator=lambda t: f"run_trial_{t.trial_id}"),
            run_config=tune.RunConfig(name=name, storage_path=parent, verbose=tune_verbosity(),
                                      failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                      callbacks=[callback]),
        )
    with light_callback_usage():
        grid = tuner.fit()
    trials = []
    for r in grid:
        error = _last_line(str(r.error)) if r.error is not None else None
        trial_id = (r.metrics or {}).get("trial_id") or _trial_id_from_path(r.path)
        trials.append({**trial_payload(cfg, run_dir, trial_id, r.config, r.metrics or {}, error),
                       "span": callback.spans.get(trial_id)})  # None: ended under an earlier driver
    trials.sort(key=lambda t: t["key"])
    complete = [t for t in trials if t["status"] == "complete" and _finite(t["objective"])]
    best = max(complete, key=lambda t: t["objective"]) if complete else None
    if best is not None and cfg.final_training is not None and cfg.final_training.scope == "champion":
        best["final"] = _train_champion(cfg, best, run_dir)
    counts = {s: sum(t["status"] == s for t in trials) for s in ("complete", "pruned", "error")}
    result = StudyResult(run_dir, cfg, trials, best, time.perf_counter() - start, counts)
    st.write_text(f"{run_dir}/{st.RESULT_FILE}", json.dumps({"best": best, "counts": counts, "trials": trials},
                                                            indent=1, default=str))
    return result


def _train_champion(cfg: StudyConfig, best: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Train the best genotype from scratch (``final_training``, scope champion) on the study's data, as
    a Ray Train job on the study's cluster (``resources``: workers, GPUs; checkpointed per epoch under
    the run directory, so a resumed study continues it), not on the driver; the folder holds
    genotype.json, network.json and weights.safetensors, ready for the registry. On s3:// or gs://
    storage the files land in a local staging folder that is then uploaded."""
    from dartboard.data.catalog import load_dataset
    from dartboard.platform.ray.final_job import train_on_ray
    from dartboard.platform.tracking.models import NETWORK_FILE, network_spec
    from dartboard.spaces import genotype as gt
    from dartboard.training.final import TrainConfig

    final = cfg.final_training
    champion = f"{run_dir}/{CHAMPION_DIR}"
    staging = Path(tempfile.mkdtemp(prefix="dartboard-champion-")) if "://" in run_dir else None
    out = staging or Path(champion)
    try:
        splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
        r = cfg.resources
        train_cfg = TrainConfig(channels=final.channels, layers=final.layers, epochs=final.epochs,
                                batch_size=final.batch_size, seed=final.seed or 0,
                                device="cuda" if r.gpus_per_worker > 0 else "cpu")
        result, _ = train_on_ray(gt.from_dict(best["genotype"]), train_cfg, cfg.dataset, cfg.data_root, out,
                                 workers=r.workers, gpus_per_worker=r.gpus_per_worker,
                                 cpus_per_worker=r.cpus_per_worker, address=cfg.ray_address,
                                 max_failures=cfg.train_max_failures, storage=f"{run_dir}/{CHAMPION_DIR}-ray",
                                 image_size=cfg.image_size)
        (out / NETWORK_FILE).write_text(json.dumps(network_spec(train_cfg, splits.info, cfg.dataset, cfg.data_root)))
        if staging is not None:
            st.upload_dir(staging, champion)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("champion trained: test accuracy %.4f (%d parameters)", result.test_acc, result.parameters)
    return {"dir": champion, "test_acc": result.test_acc, "test_loss": result.test_loss,
            "parameters": result.parameters, "weights_sha256": result.weights_sha256}


def _last_line(text: str) -> str:
    """The exception line of a remote traceback (the reason, without Ray's frames)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else text


def _trial_id_from_path(path: str | None) -> str:
    # trial folders are named run_trial_<trial_id> (trial_dirname_creator above)
    name = (path or "").rstrip("/").rsplit("/", 1)[-1]
    return name.removeprefix("run_trial_").split("_", 1)[0]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
