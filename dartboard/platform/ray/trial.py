"""One trial of a study: a Ray Tune function that launches the trial's search as a Ray Train
TorchTrainer named ``train-<trial_id>`` (so a retried or resumed trial continues from its last
epoch checkpoint), and the driver-side callback that frees placement groups, turns retries off for
diverged trials and hands every finished trial to the study's hooks.

NaN/inf: the workers end a diverged trial with a ``nonfinite`` report; :class:`TrialCallback` turns
Tune's retries off for it and :func:`run_trial` raises :class:`NonFiniteLossError`, so the trial
ends as errored with that reason and the study goes on. Input that cannot be used (a data folder, an image
in it) ends the trial with an ``input_error`` report, its last (``done``): errored with that reason, not retried
(the worker's report; with several workers, :func:`run_trial`'s, once Ray Train has ended the run).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ray import tune

from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.space import trial_key, trial_run_config
from dartboard.platform.ray.storage import train_run_finished
from dartboard.platform.ray.worker import NonFiniteLossError, input_error_report, make_trainer

log = logging.getLogger("dartboard")
TrialHook = Callable[[dict[str, Any]], None]


def run_trial(config: dict[str, Any], study: dict[str, Any]) -> None:
    """The Tune function trainable: launch this trial's search TorchTrainer and wait for it."""
    cfg = StudyConfig(**study["config"])
    trial_id = tune.get_context().get_trial_id()
    r = cfg.resources
    final = cfg.final_training.model_dump() if cfg.final_training and cfg.final_training.scope == "trial" else None
    trainer = make_trainer(trial_run_config(cfg, config), name=f"train-{trial_id}",
                           storage_path=f"{study['run_dir']}/trials", workers=r.workers,
                           cpus_per_worker=r.cpus_per_worker, gpus_per_worker=r.gpus_per_worker,
                           max_failures=cfg.train_max_failures, objective=cfg.objective.model_dump(), final=final,
                           key=trial_key(cfg, config, trial_id), callbacks=[report_callback(trial_id)],
                           required_metrics=["objective", cfg.scheduler.metric], cwd=study.get("cwd"))
    finished_before = train_run_finished(study["run_dir"], trial_id)
    try:
        result = trainer.fit()
    except Exception as err:
        from dartboard.platform.ray.trainer import input_error_of

        found = input_error_of(err)  # a rank of several read input it cannot use: the run ended, not retried
        if found is None:
            raise
        tune.report(input_error_report(found[1], ["objective", cfg.scheduler.metric], f" (rank {found[0]})"))
        return
    if finished_before and result.metrics:
        # The Train run had ended before a driver crash, but Tune never recorded its end (or this
        # trial would not run again): fit() resumes nothing and forwards nothing, so report it here.
        tune.report(dict(result.metrics))
    if result.metrics and result.metrics.get("nonfinite"):
        raise NonFiniteLossError(f"trial {trial_id}: {result.metrics.get('error', 'loss became NaN or inf')}")


#: The report queue of this process's trials (a trial actor's), kept from one trial to the next: see
#: :func:`report_callback`.
_slot_queue: Any = None


class TrialReports:
    """A trial's side of its trial actor's report queue: what the Train controller puts is tagged with the trial,
    and the Tune session takes only its own trial's reports (another trial's, left behind by a Train run that was
    ended, come back as ``None``, which the session skips). Picklable: Ray hands it to the controller inside
    Tune's report callback."""

    def __init__(self, queue: Any, trial_id: str) -> None:
        self.queue, self.trial_id = queue, trial_id

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.queue.put((self.trial_id, item), block=block, timeout=timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        trial_id, item = self.queue.get(block=block, timeout=timeout)
        return item if trial_id == self.trial_id else None


def report_callback(trial_id: str) -> Any:
    """Ray Train's callback that forwards a trial's reports to its Tune session, on one report queue per trial
    actor instead of one per trial.

    Tune's callback reports through a queue actor (``ray.util.queue.Queue``) that the Tune session makes for each
    trial: a Ray worker process of its own, about 1 CPU s to start on this machine, for every trial, while the trial
    actor itself is reused from trial to trial (:class:`ReusableTrial`). Here the session gets the queue of the
    trial actor's earlier trials, wrapped as :class:`TrialReports`, so a reused actor starts no new queue. On a Ray
    release whose session has no such queue attribute, Tune's callback makes its own, as before. The queue runs on
    the trial actor's node (Tune's may land on any), so that losing another node cannot leave the actor's later
    trials without their queue."""
    global _slot_queue
    from ray.train._internal.session import get_session
    from ray.tune.integration.ray_train import TuneReportCallback

    session = get_session()
    if session is not None and hasattr(session, "_inter_actor_queue"):
        if _slot_queue is None:
            import ray
            from ray.util.queue import Queue
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # Tune's own queue, as its session makes it, on the trial actor's node: a node lost takes both or neither
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            _slot_queue = Queue(1, actor_options={"num_cpus": 0, "scheduling_strategy": here})
        session._inter_actor_queue = TrialReports(_slot_queue, trial_id)
    return TuneReportCallback()


class ReusableTrial:
    """Mixed into the trial's Tune trainable (``__mixins__``), for ``TuneConfig(reuse_actors=True)``: the next
    trial of a slot runs in the actor of the trial that ended there, instead of a fresh Ray worker process
    (1.8-3.1 s each on 2 cores: Python importing Ray and Tune; ``benchmarks/HISTORY.md``).

    Tune resets a cached actor with ``reset_config``, which waits 2 s for the previous trial's function to
    return. A trial that Tune stopped (ASHA) is still inside its Train run: its controller is killed first
    (``trainer.abort_runs``; the workers go with it, its placement group was freed by :class:`TrialCallback`), as
    a stopped trial's actor and everything it owned were killed before. The report queue stays: the next trial
    takes it over (:func:`report_callback`), and what the ended run had put in it is not taken as the new trial's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with ipython_left_alone():
            super().__init__(*args, **kwargs)

    def reset_config(self, new_config: dict) -> bool:
        from dartboard.platform.ray.trainer import abort_runs

        aborted = abort_runs()
        reset = super().reset_config(new_config)
        log.debug("trial actor reused (Train runs aborted: %d): %s", aborted, reset)
        return reset


@contextmanager
def ipython_left_alone() -> Iterator[None]:
    """Inside the block, Tune's ``Trainable.__init__`` clears IPython's shell only where IPython is loaded.

    In an actor, ``Trainable.__init__`` calls ``disable_ipython``, which imports IPython (where it is installed) to
    clear its ``InteractiveShell`` instance: 0.17-0.2 s of each trial actor's start on this machine, before the trial
    runs. A Ray worker process has no such instance unless something in it imported IPython, so the import clears
    nothing; where IPython is loaded, Ray's own call runs. Outside the block (and on a Ray release that moved the
    call) Ray's function is untouched."""
    try:
        from ray.tune.trainable import trainable as module
    except ImportError:
        yield
        return
    ray_disable = getattr(module, "disable_ipython", None)
    if ray_disable is None:
        yield
        return

    def disable_ipython() -> None:
        if "IPython" in sys.modules:
            ray_disable()

    module.disable_ipython = disable_ipython
    try:
        yield
    finally:
        module.disable_ipython = ray_disable


def trainable(study: dict[str, Any], cpus: float):
    """The study's Tune trainable: :func:`run_trial` with the study's parameters, reusable
    (:class:`ReusableTrial`), holding ``cpus`` CPUs."""
    fn = tune.with_parameters(run_trial, study=study)
    fn.__mixins__ = (ReusableTrial,)
    return tune.with_resources(fn, {"cpu": cpus})


class TrialCallback(tune.Callback):
    """Driver-side: no retries for diverged trials; placement groups freed; each finished trial's
    payload (:func:`trial_payload`) handed to ``hooks`` (live tracking)."""

    def __init__(self, cfg: StudyConfig, run_dir: str, hooks: list[TrialHook]):
        self.cfg, self.run_dir, self.hooks = cfg, run_dir, list(hooks)
        #: trial id -> [start, end]: wall-clock seconds at which this driver saw the trial start and finish
        #: (``span`` in the study's result file; the sweep-overhead benchmark's timeline)
        self.spans: dict[str, list[float | None]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks; hooks and spans belong to one driver
        return {**self.__dict__, "hooks": [], "spans": {}}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.spans[trial.trial_id] = [time.time(), None]  # a retried trial: its last start

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("nonfinite"):
            trial.max_failures = 0  # deterministic divergence: retrying would diverge again

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)
        last = trial.last_result or {}
        release_placement_group(last.get("placement_group_id"), last.get("node_id"))
        self._call(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)
        last = trial.last_result or {}
        release_placement_group(last.get("placement_group_id"), last.get("node_id"))
        self._call(trial, last.get("error") or f"trial {trial.trial_id} failed (see {trial.local_path})")

    def _ended(self, trial) -> None:
        span = self.spans.get(trial.trial_id)
        if span is not None:
            span[1] = time.time()

    def _call(self, trial, error: str | None) -> None:
        payload = trial_payload(self.cfg, self.run_dir, trial.trial_id, trial.config, trial.last_result or {}, error)
        for hook in self.hooks:
            try:
                hook(payload)
            except Exception:  # noqa: BLE001 - live tracking must not stop the study; the end logs again
                log.exception("trial hook failed for %s", trial.trial_id)


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


def trial_payload(cfg: StudyConfig, run_dir: str, trial_id: str, config: dict, metrics: dict,
                  error: str | None) -> dict[str, Any]:
    """A finished trial as plain data: status (complete / pruned / error), key, variant, searcher,
    seed, final numeric metrics, objective, genotype, and where its last checkpoint is."""
    from dartboard.platform.ray.storage import last_checkpoint

    config = dict(config or {})
    status = "error" if error or metrics.get("nonfinite") or metrics.get("input_error") else (
        "complete" if metrics.get("search_done") == 1.0 else "pruned")
    variant = cfg.variant(config.get("variant", cfg.variants[0].name))
    found = last_checkpoint(run_dir, trial_id) if status != "error" else None
    history = found[1]["history"] if found else []
    last = history[-1] if history else {}
    from ray.tune.result import AUTO_RESULT_KEYS  # Tune's bookkeeping (pid, timers), not the trial's

    # A finished trial's checkpoint holds its last report, written before Tune is told of it: where Tune missed that
    # report (its final training's, when ASHA's stop at the last epoch's rung came as the trial ended) it is the
    # record. A stopped trial's stays Tune's: its checkpoint may hold an epoch run while the stop was on its way.
    done = bool(found and found[1].get("done"))
    keep = {k: v for k, v in ({**metrics, **last} if done else {**last, **metrics}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in AUTO_RESULT_KEYS}
    if found and status == "complete" and not done:
        status = "pruned"  # its last epoch reported, but the trial never finished (e.g. final training)
    genotype = metrics.get("genotype")
    genotypes = [json.loads(g) for g in found[1].get("genotypes", [])] if found else []
    # a trial restored after a driver crash may reach Tune without its last report: its checkpoint has it
    genotype = json.loads(genotype) if genotype else (genotypes[-1] if genotypes else None)
    return {"trial_id": trial_id, "key": trial_key(cfg, config, trial_id), "status": status, "config": config,
            "variant": variant.name, "searcher": variant.searcher,
            "seed": int(config.get("seed", cfg.trial_seeds()[0])),
            "metrics": keep, "objective": keep.get("objective"), "epoch": keep.get("epoch"),
            "genotype": genotype, "history": history, "genotypes": genotypes,
            "started": found[1].get("started") if found else None, "times": found[1].get("times", []) if found else [],
            "checkpoint": found[0] if found else None, "error": metrics.get("error") or error}
