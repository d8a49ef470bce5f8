"""Ablation studies: summaries (hand-computed), presets, and a tiny study on a local Ray with a
kill and a resume (through clusters/submit.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dartboard.platform import ablation as ab

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "dartboard" / "platform" / "studies"


def test_mean_std_matches_hand_values():
    # values 1, 2, 4: mean 7/3; sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3
    mean, std = ab.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(7 / 3))
    assert ab.mean_std([5.0]) == (5.0, 0.0)


def _study(**kw):
    base = {"name": "s", "variants": ["darts", {"name": "B", "searcher": "darts", "options": {"C": 6}}],
            "seeds": [0, 1], "metrics": ["test_error", "parameters"]}
    return ab.AblationStudy(**{**base, **kw})


def test_summarize_table_and_csv(tmp_path):
    study = _study()
    results = [{"variant": "darts", "seed": 0, "test_error": 10.0, "parameters": 100.0},
               {"variant": "darts", "seed": 1, "test_error": 14.0, "parameters": 300.0},
               {"variant": "B", "seed": 0, "test_error": 5.0, "parameters": 50.0}]
    rows = ab.summarize(study, results)
    assert [r["variant"] for r in rows] == ["darts", "B"]
    assert rows[0]["test_error"] == pytest.approx((12.0, math.sqrt(8.0)))
    assert rows[1]["seeds"] == 1 and rows[1]["parameters"] == (50.0, 0.0)
    md, csv_path = ab.write_tables(study, rows, tmp_path)
    assert "| darts | `darts` | 2 | 12.00 ± 2.83 | 200.00 ± 141.42 |" in md.read_text()
    assert csv_path.read_text().splitlines()[1].startswith("darts,darts,2,12,2.82843,200,141.421")
    assert ab.best_per_variant(study, results)["darts"]["seed"] == 0
    with pytest.raises(ValueError, match="'val_acc' is not reported"):
        ab.summarize(_study(metrics=["val_acc"]), results)


def test_study_validation_names_the_field():
    with pytest.raises(ValueError, match="names must be unique"):
        _study(variants=["darts", "darts"])
    with pytest.raises(ValueError, match="distinct seeds"):
        _study(seeds=[1, 1])
    with pytest.raises(ValueError, match="unknown searchers for variants nope"):
        ab.check_searchers(_study(variants=["nope"]))


@pytest.mark.parametrize("path", sorted(STUDIES.glob("ablation_*.yaml")), ids=lambda p: p.name)
def test_presets_load_and_name_registered_searchers(path):
    study = ab.load_study(path)
    ab.check_searchers(study)
    assert len(study.seeds) == 3 and study.metrics == ["test_error", "parameters", "search_seconds"]


def test_maile_preset_has_every_table1_row():
    study = ab.load_study(STUDIES / "ablation_maile_table1.yaml")
    assert [v.name for v in study.variants] == [
        "DARTS", "+CS10", "+FIMT", "+CRB", "+FIMT+CRB", "+PR", "+PR+FIMT", "+PR+FIMT+CRB", "+ADMM",
        "+ADMM+FIMT", "+ADMM+FIMT+CRB"]


def _trial_results(storage: Path) -> list[Path]:
    return [p for p in storage.rglob("result.json") if "checkpoint" in str(p.parent)]


def test_tiny_study_runs_on_ray_is_killed_and_resumes(tmp_path):
    """2 variants x 2 seeds, 1 epoch each, tiny supernet; killed after its first finished trial."""
    study = {"name": "tiny", "variants": ["darts", {"name": "darts-C6", "searcher": "darts", "options": {"C": 6}}],
             "seeds": [0, 1], "batch_size": 256, "search": {"C": 4, "layers": 2, "epochs": 1},
             "train": {"channels": 4, "layers": 2, "epochs": 1, "batch_size": 256}, "device": "cpu",
             "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "register_as": "tiny-champion",
             "max_concurrent_trials": 1}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "clusters" / "submit.py"), "--local", "ablate",
                             str(tmp_path / "tiny.yaml"), "--out", str(out), "--num-cpus", "2"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    deadline = time.time() + 240
    while not _trial_results(out / "ray") and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    assert _trial_results(out / "ray"), "no trial finished in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "table.md").exists()
    import ray

    try:
        summary = ab.run_ablation(ab.load_study(tmp_path / "tiny.yaml"), out, resume=True, num_cpus=2)
    finally:
        ray.shutdown()
    rows = {r["variant"]: r for r in summary["rows"]}
    assert set(rows) == {"darts", "darts-C6"} and all(r["seeds"] == 2 for r in rows.values())
    table = (out / "table.md").read_text()
    assert "| darts | `darts` | 2 |" in table and "| darts-C6 | `darts` | 2 |" in table
    for name, row in rows.items():
        errors = [r["test_error"] for r in summary["results"] if r["variant"] == name]
        assert row["test_error"] == pytest.approx(ab.mean_std(errors)) and row["parameters"][0] > 0
    assert (out / "plots" / "metric_vs_size.png").is_file() and (out / "plots" / "alphas-darts.png").is_file()
    from dartboard.platform import registry

    c = registry.client(study["tracking_uri"])
    parent = c.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    assert {"table.md", "table.csv", "plots"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}
    version = c.get_model_version_by_alias("tiny-champion", "champion")
    best = min(summary["results"], key=lambda r: r["test_error"])
    assert version.tags["trial"] == f"{best['variant']}/seed{best['seed']}"
    assert json.loads((out / "results.json").read_text()) == summary["results"]
