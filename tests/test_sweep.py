"""Sweeps without a cluster: study validation (one clear error naming the field), the conditional
search space, and how ASHA-stopped trials reach Optuna (PRUNED, never COMPLETE with a truncated value)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.resources import check_resources
from dartboard.platform.ray.runner import load_study
from dartboard.platform.ray.samplers import StudySpace, make_search_alg
from dartboard.platform.ray.space import trial_run_config, validate_study
from dartboard.platform.ray.storage import check_storage, resolve_storage


def study(**kw) -> StudyConfig:
    base = {"name": "t", "searcher": "darts", "epochs": 2, "options": {"C": 4, "layers": 3},
            "params": {"arch_lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}
    return StudyConfig(**{**base, **kw})


def test_bundled_presets_are_valid():
    for name in ("digits", "digits-derived"):
        cfg = load_study(name)
        validate_study(cfg)
    cfg = load_study(None)  # `dartboard sweep` with no argument
    assert cfg.name == "digits-darts" and cfg.num_samples >= 8 and cfg.max_concurrent == 2


def test_unknown_searcher_is_one_clear_error():
    with pytest.raises(ValueError, match=r"searcher: unknown searcher 'nope'"):
        validate_study(study(searcher="nope"))


def test_distribution_for_a_hyperparameter_the_searcher_lacks():
    cfg = study(params={"rho_p": {"type": "uniform", "low": 0.0, "high": 1.0}})
    with pytest.raises(ValueError, match=r"params.rho_p: searcher 'darts' has no hyperparameter 'rho_p'"):
        validate_study(cfg)
    cond = study(searcher=["darts", "darts-2nd"],
                 params={"unrolled_r": {"type": "uniform", "low": 0.001, "high": 0.1, "when": {"searcher": "fair"}}})
    with pytest.raises(ValueError, match=r"params.unrolled_r.when.searcher: 'fair' is not one of the study's "):
        validate_study(cond)
    with pytest.raises(ValueError, match=r"options.epochs: set the study's top-level 'epochs'"):
        validate_study(study(options={"epochs": 3}))


def test_bad_distributions_name_the_problem():
    with pytest.raises(ValidationError, match="needs low > 0"):
        study(params={"arch_lr": {"type": "loguniform", "low": 0.0, "high": 1.0}})
    with pytest.raises(ValidationError, match="expected low < high"):
        study(params={"arch_lr": {"type": "uniform", "low": 2.0, "high": 1.0}})
    with pytest.raises(ValidationError, match="non-empty 'values'"):
        study(params={"C": {"type": "choice", "values": []}})
    with pytest.raises(ValidationError, match="a 'choice' distribution lists 4 more than once; give each value once"):
        study(params={"C": {"type": "choice", "values": [4, 8, 4.0]}})  # the grid would run C=4 twice


def test_impossible_resource_request():
    with pytest.raises(ValueError, match=r"resources.gpus_per_worker: a trial needs 2 worker\(s\) x 1 GPU = 2 GPU"):
        check_resources(study(resources={"workers": 2, "gpus_per_worker": 1}), cpus=2, gpus=1)
    with pytest.raises(ValueError, match=r"resources.gpus_per_worker: a trial needs 1 worker\(s\) x 0.25 GPU"):
        check_resources(study(resources={"gpus_per_worker": 0.25}), cpus=2, gpus=0)
    with pytest.raises(ValueError, match=r"resources.cpus_per_worker: .* = 8 CPUs but the cluster has 2"):
        check_resources(study(resources={"workers": 2, "cpus_per_worker": 4}), cpus=2, gpus=0)
    check_resources(study(resources={"cpus_per_worker": 1, "gpus_per_worker": 0.5}), cpus=2, gpus=1)  # 2 trials/GPU
    check_resources(study(resources={"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 1}), cpus=2, gpus=2)
    with pytest.raises(ValidationError, match="fraction <= 1 or a whole number"):
        study(resources={"gpus_per_worker": 1.5})
    with pytest.raises(ValidationError, match="DDP ranks of one trial on a shared GPU, which NCCL refuses"):
        study(resources={"workers": 2, "gpus_per_worker": 0.5})


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_storage_non_root(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="storage: .* is not writable"):
        check_storage(str(locked / "sweeps"))


def test_unwritable_storage(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a path below a regular file can never be created, even by root
    with pytest.raises(ValueError, match=r"storage: '.*a-file/sweeps' is not writable"):
        check_storage(str(blocker / "sweeps"))
    check_storage(str(tmp_path / "ok" / "studies"))
    assert not (tmp_path / "ok").exists()  # the folders the probe made are gone again: a refused study leaves none
    (tmp_path / "there").mkdir()
    check_storage(str(tmp_path / "there"))
    assert (tmp_path / "there").is_dir() and not list((tmp_path / "there").iterdir())
    assert resolve_storage("s3://bucket/x/") == "s3://bucket/x"
    assert resolve_storage(None).endswith("runs/studies") and os.path.isabs(resolve_storage(None))


def test_conditional_space_and_trial_config():
    import optuna

    params = {"arch_lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
              "unrolled_r": {"type": "uniform", "low": 0.001, "high": 0.1, "when": {"searcher": "darts-2nd"}},
              "layers": {"type": "int", "low": 3, "high": 5}}
    cfg = study(searcher=["darts", "darts-2nd"], params=params)
    validate_study(cfg)
    space = StudySpace({k: v.model_dump() for k, v in cfg.params.items()}, {v.name: v.searcher for v in cfg.variants})
    opt = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        t = opt.ask()
        space(t)
        seen.add(t.params["variant"])
        assert ("unrolled_r" in t.params) == (t.params["variant"] == "darts-2nd")
        assert 3 <= t.params["layers"] <= 5 and isinstance(t.params["layers"], int)
        run = trial_run_config(cfg, t.params)
        assert run["searcher"] == t.params["variant"] and run["options"]["epochs"] == 2
        assert "variant" not in run["options"] and "searcher" not in run["options"] and run["options"]["C"] == 4
        opt.tell(t, 0.5)
    assert seen == {"darts", "darts-2nd"}


def test_asha_stopped_trials_reach_optuna_as_pruned():
    """Complete = the last report says search_done; a trial stopped earlier is PRUNED with its
    per-epoch intermediate values; an errored or non-finite one is FAIL; never a truncated COMPLETE."""
    from optuna.trial import TrialState

    alg = make_search_alg(study(num_samples=4))
    ids = ["a", "b", "c", "d"]
    for i in ids:
        assert "arch_lr" in alg.suggest(i)
    for epoch in (1, 2):
        alg.on_trial_result("a", {"objective": 0.5 + epoch / 10, "epoch": epoch})
    alg.on_trial_result("b", {"objective": 0.3, "epoch": 1})
    alg.on_trial_result("b", {"objective": 0.3, "epoch": 1})  # a restored trial re-reporting an epoch
    alg.on_trial_complete("a", {"objective": 0.7, "epoch": 2, "search_done": 1.0})
    alg.on_trial_complete("b", {"objective": 0.3, "epoch": 1, "search_done": 0.0})  # ASHA stopped it
    alg.on_trial_complete("c", None, error=True)
    alg.on_trial_complete("d", {"objective": float("nan"), "epoch": 2, "search_done": 1.0})
    trials = {t.number: t for t in alg._ot_study.trials}
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == pytest.approx(0.7)
    assert trials[0].intermediate_values == {1: pytest.approx(0.6), 2: pytest.approx(0.7)}
    # Optuna's own convention for a pruned trial: it keeps its last intermediate value for TPE's ranking.
    assert trials[1].state == TrialState.PRUNED and trials[1].values == [pytest.approx(0.3)]
    assert trials[1].intermediate_values == {1: pytest.approx(0.3)}
    assert trials[2].state == TrialState.FAIL and trials[3].state == TrialState.FAIL


def test_seeded_tpe_proposes_the_same_configs():
    a, b = make_search_alg(study(seed=3)), make_search_alg(study(seed=3))
    assert [a.suggest(str(i)) for i in range(3)] == [b.suggest(str(i)) for i in range(3)]


@pytest.mark.parametrize("verbose, level", [(None, "WARNING"), ("1", "INFO")])
def test_optunas_info_lines_only_with_verbose(verbose, level, monkeypatch):
    # every sweep printed Optuna's "[I ...] A new study created in memory with name: optuna" on stderr
    import logging

    import optuna

    from dartboard.platform.ray.session import VERBOSE_ENV

    before = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.INFO)
        if verbose is None:
            monkeypatch.delenv(VERBOSE_ENV, raising=False)
        else:
            monkeypatch.setenv(VERBOSE_ENV, verbose)
        make_search_alg(study(seed=3))
        assert logging.getLevelName(optuna.logging.get_verbosity()) == level
    finally:
        optuna.logging.set_verbosity(before)


class _FakeQueue:
    def __init__(self):
        self.items = []

    def put(self, item, block=True, timeout=None):
        self.items.append(item)

    def get(self, block=True, timeout=None):
        return self.items.pop(0)


def test_a_trials_reports_come_through_and_an_ended_trials_are_skipped():
    """The report queue one trial actor keeps for its trials: the Train run's reports are tagged with their
    trial, and the Tune session of the next trial skips what an ended run left in the queue."""
    from dartboard.platform.ray.trial import TrialReports

    queue = _FakeQueue()
    ended, now = TrialReports(queue, "t1"), TrialReports(queue, "t2")
    ended.put({"epoch": 2})  # put by the ended trial's Train run after Tune stopped it
    now.put({"epoch": 1})
    assert queue.items == [("t1", {"epoch": 2}), ("t2", {"epoch": 1})]
    assert now.get(timeout=1.0) is None  # skipped: the session reports nothing for it
    assert now.get(timeout=1.0) == {"epoch": 1}


def test_a_trial_actor_makes_one_report_queue_for_all_its_trials(monkeypatch):
    """``report_callback`` hands each trial's Tune session the queue the actor's first trial made (a Ray queue
    actor is a worker process: about 1 CPU s to start), wrapped for that trial; Tune's callback puts into it."""
    pytest.importorskip("ray")
    import ray.util.queue
    from ray.train._internal import session as train_session
    from ray.tune.integration import ray_train

    from dartboard.platform.ray import trial

    made = []

    class Queue(_FakeQueue):
        def __init__(self, maxsize=0, actor_options=None):
            super().__init__()
            self.options = actor_options
            made.append(self)

    class Context:
        def get_node_id(self):
            return "ab" * 28

    class Session:
        _inter_actor_queue = None

        def _get_or_create_inter_actor_queue(self):
            return self._inter_actor_queue

    sessions = [Session(), Session()]  # the two trials' Tune sessions in one actor
    current = iter(sessions)
    monkeypatch.setattr(ray.util.queue, "Queue", Queue)
    monkeypatch.setattr(ray, "get_runtime_context", Context)
    monkeypatch.setattr(trial, "_slot_queue", None)
    monkeypatch.setattr(ray_train, "_in_tune_session", lambda: True)
    for trial_id in ("t1", "t2"):
        session = next(current)
        monkeypatch.setattr(train_session, "get_session", lambda s=session: s)
        monkeypatch.setattr(ray_train, "get_session", lambda s=session: s)
        callback = trial.report_callback(trial_id)
        callback.after_report(None, [{"epoch": 1}], None)
    assert len(made) == 1
    here = made[0].options["scheduling_strategy"]  # on the trial actor's node, for good
    assert made[0].options["num_cpus"] == 0 and here.node_id == "ab" * 28 and here.soft is False
    assert [s._inter_actor_queue.trial_id for s in sessions] == ["t1", "t2"]
    assert made[0].items == [("t1", {"epoch": 1}), ("t2", {"epoch": 1})]


def test_on_a_ray_without_the_sessions_queue_tunes_callback_makes_its_own(monkeypatch):
    """A Ray release whose Train session has no ``_inter_actor_queue``: ``report_callback`` makes no queue and
    leaves the session alone; Tune's callback asks the session for one, as it does without dartboard."""
    pytest.importorskip("ray")
    import ray.util.queue
    from ray.train._internal import session as train_session
    from ray.tune.integration import ray_train

    from dartboard.platform.ray import trial

    asked = []

    class Session:
        def _get_or_create_inter_actor_queue(self):
            asked.append(True)
            return _FakeQueue()

    session = Session()
    monkeypatch.setattr(ray.util.queue, "Queue", lambda *a, **k: pytest.fail("no queue is made here"))
    monkeypatch.setattr(trial, "_slot_queue", None)
    monkeypatch.setattr(ray_train, "_in_tune_session", lambda: True)
    monkeypatch.setattr(train_session, "get_session", lambda: session)
    monkeypatch.setattr(ray_train, "get_session", lambda: session)
    trial.report_callback("t1")
    assert asked == [True] and not hasattr(session, "_inter_actor_queue") and trial._slot_queue is None


@pytest.mark.parametrize("epoch, words", [(1, "after 1 epoch\n"), (3.0, "after 3 epochs\n")])
def test_the_sweeps_summary_names_the_best_trials_epochs(epoch, words, capsys, tmp_path):
    from types import SimpleNamespace

    from dartboard.platform.cli.sweep import echo_summary

    best = {"trial_id": "t1", "objective": 0.9, "epoch": epoch, "variant": "darts", "config": {"C": 4},
            "genotype": {"kind": "darts"}}
    result = SimpleNamespace(seconds=12.0, trials=[{"status": "complete", **best}], run_dir=str(tmp_path),
                             counts={"complete": 1}, best=best)
    echo_summary(result, registered=False)
    out = capsys.readouterr().out
    assert f"best trial t1: objective 0.9000 {words}" in out
    # with the study's config, the objective is named by its kind
    from dartboard.platform.config import StudyConfig

    for kind, metrics, said in (("supernet", {"val_acc": 0.9}, "the supernet's validation accuracy"),
                                ("supernet", {"val_loss": -0.9}, "minus the supernet's validation loss"),  # PMSM
                                ("derived", {}, "the derived model's accuracy after a short training"),
                                ("final", {}, "its final training's test accuracy")):
        extra = {"final_training": {"scope": "trial"}} if kind == "final" else {}
        result.config, best["metrics"] = StudyConfig(name="s", objective={"kind": kind}, **extra), metrics
        echo_summary(result, registered=False)
        assert f"best trial t1: objective 0.9000 ({said}) {words}" in capsys.readouterr().out
    assert "took no alpha step" not in out
    best["metrics"] = {"arch_steps": 0.0}  # the update schedule never let one run (FIMT on a short search)
    echo_summary(result, registered=False)
    assert "best trial took no alpha step (arch_steps 0): its genotype is the parse of the initial alphas" in (
        capsys.readouterr().out)
    # a derived objective of a DARIO or NASiam study scores no trained cell network (was: "after a short training")
    result.config = StudyConfig(name="s", objective={"kind": "derived"})
    for genotype, said in (("gates", "the pruned ViT's validation accuracy after fine-tuning its last block"),
                           ("mlp", "the kNN accuracy of a backbone pretrained briefly with the derived heads")):
        best["genotype"] = {"kind": genotype}
        echo_summary(result, registered=False)
        assert f"best trial t1: objective 0.9000 ({said}) {words}" in capsys.readouterr().out
    assert "sweep finished in 12 s: 1 trial (1 complete, 0 stopped by ASHA, 0 errored)" in out  # was "1 trials"
    assert "pruned ViT" not in out
    best["metrics"] = {"parameters": 31114.0, "params_original": 52042.0}  # a DARIO trial's sizes
    echo_summary(result, registered=False)
    assert "best pruned ViT: 31,114 of the original's 52,042 parameters (59.8 %)\n" in capsys.readouterr().out
