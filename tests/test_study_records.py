"""What a study leaves in MLflow: trial runs with one metric point per epoch at the epoch's real time,
their real start/end, tags; a parent run with the objective of every trial, the best configuration,
the champion's test metrics and the summary plots (no Ray needed: the runner's own payloads)."""

from __future__ import annotations

import json

import pytest

from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve

pytestmark = pytest.mark.mlflow


def _payload(cfg, run_dir, trial_id, objective, arch_lr, status="complete", epochs=3, t0=1_700_000_000.0):
    from dartboard.platform.ray.trial import trial_payload

    metrics = {"objective": objective, "val_acc": objective, "search_done": 1.0 if status == "complete" else 0.0,
               "genotype": json.dumps(gt.to_dict(resolve("darts-v2")))}
    p = trial_payload(cfg, run_dir, trial_id, {"arch_lr": arch_lr}, metrics, None)
    p["history"] = [{"val_acc": objective * (e + 1) / epochs if e + 1 < epochs else objective,
                     "train_loss": 1.0 / (e + 1), "epoch": e + 1.0} for e in range(epochs)]
    p["started"], p["times"] = t0, [t0 + 10.0 * (e + 1) for e in range(epochs)]
    return p


def test_study_parent_and_trial_runs(tmp_path):
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.runner import StudyResult
    from dartboard.platform.tracking import runs
    from dartboard.platform.tracking.study import StudyTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = StudyConfig(name="rec", register_as="rec-net", epochs=3,
                      params={"arch_lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}})
    run_dir = str(tmp_path / "rec")
    trials = [_payload(cfg, run_dir, "a", 0.5, 1e-4), _payload(cfg, run_dir, "b", 0.9, 1e-3),
              _payload(cfg, run_dir, "c", 0.3, 1e-2, status="pruned", epochs=1)]
    best = {**trials[1], "final": {"test_acc": 0.97, "test_loss": 0.1, "parameters": 1234}}
    tracker = StudyTracker(uri)
    tracker.open(cfg, run_dir)
    tracker.finish(StudyResult(run_dir, cfg, trials, best, 1.0), [], {})
    tracker.close(failed=False)
    c = runs.client(uri)
    parent = c.get_run(tracker.parent)
    history = c.get_metric_history(tracker.parent, "trial_objective")
    assert [(h.step, h.value) for h in history] == [(0, 0.5), (1, 0.9), (2, 0.3)]
    assert parent.data.metrics["best_objective"] == pytest.approx(0.9)
    assert parent.data.metrics["champion.test_acc"] == pytest.approx(0.97)
    assert parent.data.metrics["champion.parameters"] == 1234
    assert json.loads(parent.data.tags["best.config"])["arch_lr"] == pytest.approx(1e-3)
    assert parent.data.tags["space"] == "darts" and parent.data.tags["dataset"] == "digits"
    plots = {a.path for a in c.list_artifacts(tracker.parent, "plots")}
    assert plots == {"plots/objective_per_trial.png", "plots/parallel_coordinates.png", "plots/trial_curves.png"}
    child = c.get_run(tracker.children["b"])
    points = c.get_metric_history(child.info.run_id, "val_acc")
    assert [p.step for p in points] == [0, 1, 2]  # the final report repeats the last epoch: not logged twice
    assert c.get_run(tracker.children["b"]).data.metrics["objective"] == pytest.approx(0.9)
    assert [p.timestamp for p in points] == [1_700_000_010_000, 1_700_000_020_000, 1_700_000_030_000]
    assert child.info.start_time == 1_700_000_000_000 and child.info.end_time == 1_700_000_030_000
    assert {"pid", "timestamp", "time_total_s", "training_iteration"}.isdisjoint(child.data.metrics)
    assert child.data.tags["space"] == "darts" and child.data.tags["seed"] == "0"
    assert child.data.params["arch_lr"] == "0.001"


def test_option_paths_with_brackets_are_logged_as_mlflow_accepts_them(tmp_path, monkeypatch):
    """The shipped FairDARTS and constrained-DARTS studies sweep `regularizers[NAME].OPTION`, a name MLflow refuses
    as a param key: before, every trial's run failed to log ("trial hook failed", with MLflow's traceback)."""
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.runner import StudyResult
    from dartboard.platform.ray.trial import trial_payload
    from dartboard.platform.tracking import runs
    from dartboard.platform.tracking.study import StudyTracker

    monkeypatch.chdir(tmp_path)  # a sqlite store's artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"regularizers[zero_one].weight": {"type": "uniform", "low": 1.0, "high": 20.0},
              "discretizer_options.sigma_threshold": {"type": "uniform", "low": 0.5, "high": 0.95}}
    cfg = StudyConfig(name="fair", searcher="fairdarts", epochs=1, params=params)
    run_dir = str(tmp_path / "fair")
    config = {"regularizers[zero_one].weight": 12.5, "discretizer_options.sigma_threshold": 0.75}
    trial = trial_payload(cfg, run_dir, "a", config, {"objective": 0.4, "search_done": 1.0,
                                                      "genotype": json.dumps(gt.to_dict(resolve("darts-v2")))}, None)
    trial["history"] = [{"val_acc": 0.4, "epoch": 1.0}]
    tracker = StudyTracker(uri)
    tracker.open(cfg, run_dir)
    tracker.finish(StudyResult(run_dir, cfg, [trial], trial, 1.0), [], {})
    tracker.close(failed=False)
    child = runs.client(uri).get_run(tracker.children["a"])
    assert child.data.params["regularizers/zero_one.weight"] == "12.5"
    assert child.data.params["discretizer_options.sigma_threshold"] == "0.75"
    assert runs.mlflow_name("a b:c/d.e-f_g") == "a b:c/d.e-f_g" and runs.mlflow_name("x[0]@y") == "x/0_y"
    # the champion's version names the space its trial searched, FairDARTS' own (before: an empty tag)
    version = runs.client(uri).get_model_version_by_alias("fair", "champion")
    assert version.tags["space"] == child.data.tags["space"] == "darts-none"


def test_a_trials_space_is_laid_out_as_its_run_config_lays_it():
    """Sampled > the study's `space` > the variant's option > the study's options > the preset's own."""
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.tracking.study import _space

    variants = [{"name": "own", "searcher": "fairdarts"}, {"name": "tiny", "searcher": "darts",
                                                            "options": {"space": "tiny81"}}]
    cfg = StudyConfig(name="s", variants=variants, options={"space": "tiny625"}, sampler="grid")
    trial = {"variant": "tiny", "searcher": "darts", "config": {"variant": "tiny"}}
    assert _space(cfg, trial) == "tiny81"
    assert _space(cfg, {**trial, "variant": "own", "searcher": "fairdarts"}) == "tiny625"
    assert _space(cfg, {**trial, "config": {"space": "darts"}}) == "darts"
    assert _space(cfg.model_copy(update={"space": "darts-none"}), trial) == "darts-none"
    assert _space(cfg.model_copy(update={"options": {}}), {**trial, "variant": "own", "searcher": "fairdarts"}) == \
        "darts-none"


def test_a_half_logged_trial_run_is_logged_again_in_full(tmp_path, monkeypatch):
    """A trial's run whose logging failed part-way (here an artifact that is not there; a tracking server that went
    away, in use) ends FAILED; logging the trial again (the study's end does) replaces it with a complete run,
    where before the half-logged one was taken as done."""
    from dartboard.platform.tracking import runs

    monkeypatch.chdir(tmp_path)  # a sqlite store's artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = runs.start_parent_run(uri, "half", "study-half", {"epochs": 1}, {"study": "half"})
    history, genotype = [{"val_acc": 0.5}], tmp_path / "genotype.json"
    with pytest.raises(Exception):  # noqa: B017 - MLflow's own error for a missing file
        runs.log_child_run(uri, parent, "darts/seed0", {"seed": 0}, history, {}, [genotype])
    c = runs.client(uri)
    (half,) = c.search_runs([c.get_run(parent).info.experiment_id], "tags.`dartboard.kind` = 'trial'")
    assert half.info.status == "FAILED"
    gt.save(resolve("darts-v2"), genotype)
    rid = runs.log_child_run(uri, parent, "darts/seed0", {"seed": 0}, history, {}, [genotype])
    assert rid != half.info.run_id and c.get_run(rid).info.status == "FINISHED"
    assert [f.path for f in c.list_artifacts(rid)] == ["genotype.json"]
    assert c.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    assert runs.log_child_run(uri, parent, "darts/seed0", {}, [], {}, []) == rid  # complete: logged once


def test_a_sqlite_stores_artifacts_go_beside_its_database_wherever_the_command_runs(tmp_path, monkeypatch):
    """MLflow's default puts a new experiment's artifacts in ./mlruns of whichever folder the command ran from."""
    from dartboard.platform.tracking import runs

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    genotype = gt.save(resolve("darts-v2"), tmp_path / "genotype.json")
    parent = runs.start_parent_run(uri, "beside", "study-beside", {"epochs": 1}, {"study": "beside"})
    rid = runs.log_child_run(uri, parent, "darts/seed0", {"seed": 0}, [{"val_acc": 0.5}], {}, [genotype])
    artifact_uri = runs.client(uri).get_run(rid).info.artifact_uri
    assert artifact_uri.startswith(str(tmp_path / "store" / "mlruns" / "beside")), artifact_uri  # one per experiment
    assert list((tmp_path / "store" / "mlruns").rglob("genotype.json")) and not list(elsewhere.iterdir())
    assert runs.artifact_location("http://127.0.0.1:5000", "beside") is None  # a server chooses its own


def test_a_final_value_of_a_metric_the_last_epoch_holds_is_the_runs_latest_and_its_model_registers(tmp_path):
    """A 1-epoch trial whose objective is its final training's: the search's objective of epoch 0 and the final one
    are two values of one metric at step 0. Logged at one time they were no order (the run's latest value either
    one), and logging the champion's model into that run failed in MLflow's logged-model metrics ("UNIQUE
    constraint failed"), after the whole study had run."""
    from dartboard.platform.tracking import models, runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    genotype = gt.save(resolve("darts-v2"), tmp_path / "genotype.json")
    parent = runs.start_parent_run(uri, "one-epoch", "study-one-epoch", {"epochs": 1}, {"study": "one-epoch"})
    rid = runs.log_child_run(uri, parent, "darts/seed0", {"seed": 0}, [{"objective": 0.375, "val_acc": 0.375}],
                             {"objective": 0.75, "val_acc": 0.375, "test_acc": 0.75}, [genotype], started=1000.0,
                             times=[1010.0])
    version = models.register_model_files(uri, "one-epoch-champion", rid, {"genotype": genotype}, {"trial": "x"})
    assert str(version.version) == "1"
    c = runs.client(uri)
    assert c.get_run(rid).data.metrics["objective"] == 0.75  # the final value
    history = sorted((m.timestamp, m.step, m.value) for m in c.get_metric_history(rid, "objective"))
    assert history == [(1010000, 0, 0.375), (1010001, 0, 0.75)]
    assert [m.value for m in c.get_metric_history(rid, "val_acc")] == [0.375]  # the curve's own value: once


def test_a_trials_record_is_its_last_checkpoints_where_tune_missed_its_last_report(tmp_path):
    """ASHA's stop at the last epoch's rung can reach a trial as its final training reports: the report is in the
    trial's checkpoint (written before Tune is told) but not Tune's last result. The trial's objective and metrics
    are the checkpoint's, its final training's."""
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.storage import train_dir
    from dartboard.platform.ray.trial import trial_payload

    cfg = StudyConfig(name="raced", epochs=1, final_training={"scope": "trial", "epochs": 1},
                      objective={"kind": "final"})
    run_dir = str(tmp_path / "raced")
    epoch = {"epoch": 1.0, "objective": 0.25, "val_acc": 0.25, "search_done": 1.0, "done": 0.0}
    final = {**epoch, "objective": 0.75, "test_acc": 0.75, "test_error": 25.0, "parameters": 123.0, "done": 1.0}
    checkpoint = tmp_path / "raced" / train_dir("", "t")[1:] / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "progress.json").write_text(json.dumps({"done": True, "history": [final]}))
    tune_last = {**epoch, "genotype": json.dumps(gt.to_dict(resolve("darts-v2"))), "trial_id": "t"}
    p = trial_payload(cfg, run_dir, "t", {}, tune_last, None)
    assert p["status"] == "complete" and p["objective"] == 0.75
    assert p["metrics"]["test_acc"] == 0.75 and p["metrics"]["parameters"] == 123.0
