"""Ablation studies on the one study runner: summaries (hand-computed), presets, and a tiny study
whose driver is SIGKILLed while a trial is held inside its search (after epoch 1, by a gate file the
test controls), then resumed: the resumed study equals an uninterrupted one (metrics per epoch,
genotypes, final training), the held trial continued from its checkpoint (no epoch ran twice), and
MLflow has one parent with a child per trial and the champion registered once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import epoch_gate
import pytest
import yaml
from servers import kill_session

from dartboard.platform.ablation import load_study
from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.space import validate_study
from dartboard.platform.ray.worker import EPOCH_GATE_ENV
from dartboard.platform.reports.tables import best_per_variant, mean_std, summarize, write_tables

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "dartboard" / "platform" / "studies"


def test_mean_std_matches_hand_values():
    # values 1, 2, 4: mean 7/3; sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(7 / 3))
    assert mean_std([5.0]) == (5.0, 0.0)


def _study(**kw):
    base = {"name": "s", "variants": [{"name": "darts", "searcher": "darts"},
                                      {"name": "B", "searcher": "darts", "options": {"C": 6}}],
            "seeds": [0, 1], "sampler": "grid",
            "report": {"metrics": ["test_error", "parameters"], "rank_metric": "test_error", "rank_mode": "min"}}
    return StudyConfig(**{**base, **kw})


def test_summarize_table_and_csv(tmp_path):
    study = _study()
    results = [{"variant": "darts", "seed": 0, "test_error": 10.0, "parameters": 100.0},
               {"variant": "darts", "seed": 1, "test_error": 14.0, "parameters": 300.0},
               {"variant": "B", "seed": 0, "test_error": 5.0, "parameters": 50.0}]
    rows = summarize(study, results)
    assert [r["variant"] for r in rows] == ["darts", "B"]
    assert rows[0]["test_error"] == pytest.approx((12.0, math.sqrt(8.0)))
    assert rows[1]["seeds"] == 1 and rows[1]["parameters"] == (50.0, 0.0)
    md, csv_path = write_tables(study, rows, tmp_path)
    assert "| darts | `darts` | 2 | 12.00 ± 2.83 | 200.00 ± 141.42 |" in md.read_text()
    # one seed: its value alone (before: "5.00 ± 0.00"), said under the table
    assert "| B | `darts` | 1 | 5.00 | 50.00 |" in md.read_text()
    assert md.read_text().endswith("\n\nA variant with one seed shows its value alone: one value has no standard "
                                   "deviation.\n")
    two = summarize(study, results + [{"variant": "B", "seed": 1, "test_error": 7.0, "parameters": 50.0}])
    assert "one seed" not in write_tables(study, two, tmp_path)[0].read_text()
    assert md.read_text().startswith("# s\n\n| variant |")  # a study without a description: no empty paragraph
    described = write_tables(_study(description="what it compares"), rows, tmp_path)[0].read_text()
    assert described.startswith("# s\n\nwhat it compares\n\n| variant |")
    assert csv_path.read_text().splitlines()[1].startswith("darts,darts,2,12,2.82843,200,141.421")
    assert best_per_variant(study, results)["darts"]["seed"] == 0
    higher = _study(report={"metrics": ["test_error"], "rank_metric": "test_error", "rank_mode": "max"})
    assert best_per_variant(higher, results)["darts"]["seed"] == 1
    with pytest.raises(ValueError, match="report.metrics: 'val_acc' is not reported"):
        summarize(_study(report={"metrics": ["val_acc"]}), results)


def test_a_sampled_ablation_counts_trials_not_seeds(tmp_path):
    """Under tpe or random a variant's trials are draws of params with the study's one seed: the table counts them
    as trials and says that their spread is the hyperparameters'."""
    study = _study(sampler="random", seeds=None, num_samples=3, seed=4,
                   params={"w_lr": {"type": "uniform", "low": 0.001, "high": 0.01}})
    results = [{"variant": "darts", "seed": 4, "test_error": 10.0, "parameters": 100.0},
               {"variant": "darts", "seed": 4, "test_error": 14.0, "parameters": 100.0},
               {"variant": "B", "seed": 4, "test_error": 5.0, "parameters": 50.0}]
    md, csv_path = write_tables(study, summarize(study, results), tmp_path)
    text = md.read_text()
    assert "| variant | searcher | trials | test error (%) | parameters |" in text
    assert "A variant with one trial shows its value alone" in text
    assert text.endswith("\n\nEach variant's trials are the random sampler's draws of params (seed 4): their spread "
                         "is the hyperparameters', not the seeds'.\n")
    assert csv_path.read_text().splitlines()[0].startswith("variant,searcher,trials,")
    assert "| seeds |" in write_tables(_study(), summarize(_study(), results), tmp_path)[0].read_text()  # the grid


def test_a_report_metric_no_trial_reports_keeps_the_trials_and_a_resume_can_change_the_report(tmp_path):
    """Before: a report metric the trials do not report failed the study after its last trial, and --resume refused
    --set, so the table could not be made without editing the run's study.yaml by hand."""
    import yaml

    from dartboard.errors import UserInputError
    from dartboard.platform.ablation import set_report, write_report
    from dartboard.platform.ray.runner import StudyResult, stored_study

    study = _study(report={"metrics": ["nope"]})
    run = tmp_path / "run"
    run.mkdir()
    (run / "study.yaml").write_text(yaml.safe_dump(study.model_dump(), sort_keys=False))
    trials = [{"status": "complete", "variant": v, "searcher": "darts", "seed": 0, "key": f"{v}/seed0",
               "metrics": {"test_error": e, "parameters": 10.0}} for v, e in (("darts", 5.0), ("B", 7.0))]
    with pytest.raises(UserInputError, match=rf"report.metrics: 'nope' is not reported by the trials; they report "
                                             rf"parameters, seed, test_error; the trials are done and kept: dartboard "
                                             rf"ablate --resume {run} --set report.metrics=\[...\] writes the table"):
        write_report(StudyResult(str(run), study, trials, trials[0], 1.0))
    set_report(str(run), {"report.metrics": ["test_error"], "report.rank_mode": "min"})
    fixed = stored_study(str(run))
    assert fixed.report.metrics == ["test_error"] and fixed.report.rank_mode == "min"
    assert fixed.model_dump(exclude={"report"}) == study.model_dump(exclude={"report"})  # nothing else changed
    files, numbers, _ = write_report(StudyResult(str(run), fixed, trials, trials[0], 1.0))
    assert numbers["darts.test_error_mean"] == 5.0 and (run / "table.md").is_file()
    before = (run / "study.yaml").read_text()
    for settings, message in (({"epochs": 1, "report.metrics": ["x"]}, "--set: epochs: a resumed study keeps what its "
                                                                       "trials ran with"),
                              ({"report.rank_mode": "lowest"}, "rank_mode")):
        with pytest.raises(ValueError, match=message):  # a UserInputError, or pydantic's error of the study file
            set_report(str(run), settings)
    assert (run / "study.yaml").read_text() == before  # a refused change writes nothing


def test_the_size_plot_is_drawn_only_where_trials_report_a_size(tmp_path, caplog):
    """A study whose objective trains no network (supernet) reports no parameters: the metric-vs-size scatter was an
    empty plot, saved with a matplotlib warning; now none, and the log says why."""
    import logging
    import warnings

    from dartboard.platform.reports.plots import plot_scatter

    study = _study()
    sized = [{"variant": "darts", "seed": 0, "test_error": 10.0, "parameters": 100.0},
             {"variant": "B", "seed": 0, "test_error": 5.0, "parameters": 50.0}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no artists with labels" warning either
        assert plot_scatter(study, sized, tmp_path / "a.png") == tmp_path / "a.png"
        with caplog.at_level(logging.INFO, logger="dartboard"):
            unsized = [{k: v for k, v in r.items() if k != "parameters"} for r in sized]
            assert plot_scatter(study, unsized, tmp_path / "b.png") is None
    assert (tmp_path / "a.png").stat().st_size > 5_000 and not (tmp_path / "b.png").exists()
    assert "no b.png plot: no trial reports both 'parameters' and 'test_error'" in caplog.text


def test_study_validation_names_the_field():
    with pytest.raises(ValueError, match="variants: names must be unique, repeated: darts"):
        _study(variants=[{"name": "darts", "searcher": "darts"}] * 2)
    with pytest.raises(ValueError, match="seeds: expected distinct seeds"):
        _study(seeds=[1, 1])
    with pytest.raises(ValueError, match="seeds: the 'tpe' sampler draws one configuration per trial"):
        _study(sampler="tpe")
    with pytest.raises(ValueError, match=r"num_samples: the grid sampler runs each grid point once .*got 3; run "
                       r"each 3 times with seeds \(seeds: \[0, 1, 2\]\) \["):  # pydantic's [type=...] follows
        _study(num_samples=3)
    with pytest.raises(ValueError, match=r"\(seeds: \[0, 1\]\), or draw 2 configurations of params with sampler: "
                       r"random or tpe \["):  # with params to draw
        _study(num_samples=2, params={"w_lr": {"type": "uniform", "low": 0.001, "high": 0.01}})
    with pytest.raises(ValueError, match="objective.kind: 'final' needs final_training with scope: trial"):
        _study(objective={"kind": "final"})
    with pytest.raises(ValueError, match="variants.nope.searcher: unknown searcher 'nope'"):
        validate_study(_study(variants=[{"name": "nope", "searcher": "nope"}, {"name": "ok", "searcher": "darts"}]))


def test_asha_lets_a_trial_that_trains_after_its_search_run_its_final_training():
    """ASHA stopped every trial whose report reached its max_t, the last search epoch: a trial that then trains its
    genotype (final_training scope trial) lost that training's report, or was stopped inside it. Its rungs stay."""
    from types import SimpleNamespace

    from dartboard.platform.ray.space import make_scheduler

    def actions(cfg: StudyConfig, *rows: tuple[str, int, float]) -> list[str]:
        scheduler = make_scheduler(cfg)
        for trial_id in {r[0] for r in rows}:
            scheduler.on_trial_add(None, SimpleNamespace(trial_id=trial_id))
        return [scheduler.on_trial_result(None, SimpleNamespace(trial_id=t), {"epoch": e, "val_acc": v})
                for t, e, v in rows]

    base = {"name": "s", "searcher": "darts", "epochs": 2}
    # without a final training the last epoch ends the trial, as before
    assert actions(StudyConfig(**base), ("a", 1, 0.5), ("a", 2, 0.5)) == ["CONTINUE", "STOP"]
    trained = StudyConfig(**base, final_training={"scope": "trial", "epochs": 1})
    # the last search epoch and the final training's report (the same epoch) go on
    assert actions(trained, ("a", 1, 0.5), ("a", 2, 0.5), ("a", 2, 0.5)) == ["CONTINUE"] * 3
    # the rung at the last epoch still stops the trial behind (reduction factor 2: the top half goes on)
    assert actions(trained, ("a", 1, 0.5), ("b", 1, 0.9), ("a", 2, 0.9), ("b", 2, 0.1)) == \
        ["CONTINUE", "CONTINUE", "CONTINUE", "STOP"]


def test_an_ablation_without_a_scheduler_runs_every_trial_to_its_end(tmp_path):
    """A comparison needs every variant x seed: `dartboard ablate` of a file that names no scheduler runs FIFO (a
    study's own default, ASHA, would stop the trials behind: rows, and final trainings, missing from the table);
    one that asks for ASHA gets it; a sweep keeps ASHA."""
    from dartboard.platform.ray.runner import load_study as load_sweep

    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"name": "a", "sampler": "grid", "seeds": [0, 1],
                                                     "variants": [{"name": "darts", "searcher": "darts"}]}))
    assert load_study(tmp_path / "a.yaml").scheduler.type == "fifo"
    assert load_study(tmp_path / "a.yaml", settings={"scheduler.type": "asha"}).scheduler.type == "asha"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"name": "b", "sampler": "grid", "seeds": [0],
                                                     "variants": [{"name": "darts", "searcher": "darts"}],
                                                     "scheduler": {"type": "asha", "metric": "val_loss"}}))
    assert load_study(tmp_path / "b.yaml").scheduler.model_dump()["metric"] == "val_loss"
    assert load_sweep(tmp_path / "a.yaml").scheduler.type == "asha"


def test_an_ablation_without_a_sampler_runs_every_variant_with_every_seed_once(tmp_path):
    """Before: a file that named no sampler got a study's default, TPE with 8 samples: 2 variants x 1 seed ran as
    8 trials, TPE's picks (2 of one variant, 6 of the other: the table's rows of unequal counts)."""
    from dartboard.platform.ray.runner import load_study as load_sweep

    study = {"name": "a", "seeds": [0], "variants": [{"name": "x", "searcher": "darts"},
                                                     {"name": "y", "searcher": "fairdarts"}]}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(study))
    cfg = load_study(tmp_path / "a.yaml")
    assert (cfg.sampler, cfg.num_samples) == ("grid", 1)
    assert load_study(tmp_path / "a.yaml", settings={"sampler": "tpe"}).sampler == "tpe"  # asked for: kept
    assert load_sweep(tmp_path / "a.yaml").sampler == "tpe"  # a sweep's default is its own


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*ablation*.yaml")), ids=lambda p: p.name)
def test_presets_load_and_name_registered_searchers(path):
    study = load_study(path)
    validate_study(study)
    assert study.trial_seeds() == [0, 1, 2] and study.report.metrics == ["test_error", "parameters", "search_seconds"]
    assert study.sampler == "grid" and study.final_training.scope == "trial" and study.objective.kind == "final"


def test_maile_preset_has_every_table1_row():
    study = load_study(STUDIES / "ablation_maile_table1.yaml")
    assert [v.name for v in study.variants] == [
        "DARTS", "+CS10", "+FIMT", "+CRB", "+FIMT+CRB", "+PR", "+PR+FIMT", "+PR+FIMT+CRB", "+ADMM",
        "+ADMM+FIMT", "+ADMM+FIMT+CRB"]


# ------------------------------------------------------------------ kill inside a trial, resume
TIMING = ("search_seconds", "train_seconds")  # wall-clock durations: the only numbers allowed to differ


def _cli(args: list[str], log: Path, env: dict[str, str], via_submit: bool = False) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", EPOCH_GATE_ENV)}, **env}
    entry = [str(ROOT / "clusters" / "submit.py"), "--local"] if via_submit else ["-m", "dartboard.platform.cli"]
    return subprocess.Popen([sys.executable, *entry, "ablate", *args], env=env, start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=log.parent)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the session the test started (driver, Ray daemons and workers) and wait until it is gone."""
    kill_session(proc.pid)
    proc.wait()


def _held_after_epoch_1(gate: Path, run_dir: Path) -> bool:
    """Both trials (2 variants, 2 at a time) are held by the gate after epoch 1, and Tune (the trial's
    result) and Ray Train (its checkpoint manager's snapshot) have recorded that epoch for both: the state
    the test kills in (killed with one trial still finishing epoch 1, that epoch would rightly run again)."""
    return epoch_gate.held_after_epoch_1(gate, lambda: [run_dir], 2)


def _trials(run_dir: Path) -> dict[str, dict]:
    return {t["key"]: t for t in json.loads((run_dir / "study_result.json").read_text())["trials"]}


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.ray
def test_ablation_driver_killed_inside_a_trial_resumes_like_an_uninterrupted_one(tmp_path):
    """2 variants x 1 seed, 2 search epochs, each trial trains its network; the first driver is
    SIGKILLed while both trials are held after epoch 1."""
    study = {"name": "tiny", "sampler": "grid", "seeds": [0], "batch_size": 256, "epochs": 2,
             "variants": [{"name": "darts", "searcher": "darts"},
                          {"name": "darts-C6", "searcher": "darts", "options": {"C": 6}}],
             "options": {"C": 4, "layers": 2}, "scheduler": {"type": "fifo"}, "max_concurrent": 2,
             "final_training": {"scope": "trial", "channels": 4, "layers": 2, "epochs": 1, "batch_size": 256},
             "objective": {"kind": "final"}, "register_as": "tiny-champion", "ray_num_cpus": 3,
             "report": {"metrics": ["test_error", "parameters", "search_seconds"], "rank_metric": "test_error",
                        "rank_mode": "min"}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(study))
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "hold").write_text("held by the test")
    run1, run2 = tmp_path / "interrupted", tmp_path / "reference"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = _cli(["tiny.yaml", "--out", str(run1), "--tracking-uri", uri], tmp_path / "first.log",
                 {EPOCH_GATE_ENV: str(gate)}, via_submit=True)
    try:
        deadline = time.time() + 1200  # a safety net only: the kill happens at the gate's state
        while not _held_after_epoch_1(gate, run1) and first.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert _held_after_epoch_1(gate, run1), "no trial held:\n" + (tmp_path / "first.log").read_text()[-3000:]
    finally:
        _kill_session(first)
    held = {line.split()[0] for line in (gate / "epochs.log").read_text().splitlines()}
    assert not (run1 / "table.md").exists()
    (gate / "hold").unlink()
    reference = _cli(["tiny.yaml", "--out", str(run2), "--no-mlflow"], tmp_path / "reference.log", {})
    second = _cli(["--resume", str(run1), "--tracking-uri", uri], tmp_path / "second.log", {EPOCH_GATE_ENV: str(gate)})
    try:
        for proc, log in ((second, "second.log"), (reference, "reference.log")):
            try:
                proc.wait(timeout=1500)  # a safety net only (a few minutes on 2 idle cores)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{log} did not finish:\n" + (tmp_path / log).read_text()[-6000:])
            assert proc.returncode == 0, (tmp_path / log).read_text()[-3000:]
    finally:
        _kill_session(second)
        _kill_session(reference)

    # the held trials continued from their epoch-1 checkpoint: no (trial, epoch) ran twice, none was lost
    lines = (gate / "epochs.log").read_text().splitlines()
    assert len(lines) == len(set(lines)), lines
    assert sorted(lines) == sorted(f"{k}/seed{s} {e}" for k in ("darts", "darts-C6") for s in (0,) for e in (1, 2))
    assert held and all(f"{key} 2" in lines for key in held)

    resumed, uninterrupted = _trials(run1), _trials(run2)
    assert sorted(resumed) == sorted(uninterrupted) == ["darts-C6/seed0", "darts/seed0"]
    for key, t in resumed.items():
        u = uninterrupted[key]
        assert t["status"] == u["status"] == "complete"
        assert _without_timing(t["history"]) == _without_timing(u["history"]), key  # every epoch, bit for bit
        assert t["genotypes"] == u["genotypes"] and t["genotype"] == u["genotype"]
        assert {k: v for k, v in t["metrics"].items() if k not in TIMING} == \
            {k: v for k, v in u["metrics"].items() if k not in TIMING}

    summary = json.loads((run1 / "results.json").read_text())
    table = (run1 / "table.md").read_text()
    assert "| darts | `darts` | 1 |" in table and "| darts-C6 | `darts` | 1 |" in table
    for name in ("darts", "darts-C6"):
        errors = [r["test_error"] for r in summary if r["variant"] == name]
        assert len(errors) == 1 and all(r["parameters"] > 0 for r in summary)
    assert (run1 / "plots" / "metric_vs_size.png").is_file() and (run1 / "plots" / "alphas-darts.png").is_file()

    from dartboard.platform.tracking import runs

    c = runs.client(uri)
    (parent,) = c.search_runs([c.get_experiment_by_name("dartboard-studies").experiment_id],
                              "tags.`dartboard.kind` = 'study'")
    assert parent.info.status == "FINISHED"
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["trial"] for r in children) == sorted(resumed)
    assert {"table.md", "table.csv", "plots"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}
    version = c.get_model_version_by_alias("tiny-champion", "champion")
    best = min(summary, key=lambda r: r["test_error"])
    assert version.tags["trial"] == best["key"]
    assert len(c.search_model_versions("name='tiny-champion'")) == 1
