"""`dartboard pmsm compare` in MLflow (sqlite backend): the comparison is one run of the `pmsm` experiment (its table,
CSV and maps), and each model's best seed (lowest validation criterion) a registered version `pmsm-NAME` that
`dartboard.load` and `dartboard pull` give back as the flux network it was (same outputs), whose pulled folder
`dartboard pmsm flux` reads. A flux model is refused by name where an image classifier is expected."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli_contract import run_main

import dartboard
from dartboard.training.pmsm import flux_table, load_flux_model

pytest.importorskip("mlflow")
pytestmark = pytest.mark.mlflow
SMALL = {"n_train": 256, "n_val": 64, "n_test": 64}  # a small simulated motor: seconds per training


def test_a_comparison_registers_each_models_best_seed(tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "motor.json").write_text(json.dumps(SMALL))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    code, out, err = run_main(["pmsm", "compare", "thesis=pmsm-thesis", "--seeds", "0,1", "--epochs", "2",
                               "--batch-size", "64", "--data-root", "motor.json", "--out", "cmp", "--tracking-uri",
                               uri], capsys)
    assert code == 0, err[-3000:]
    runs = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]
    client = MlflowClient(uri)
    for name in ("thesis",):
        mine = [r for r in runs if r["model"] == name]
        best = min(mine, key=lambda r: r["criterion_val"])
        assert f"registered pmsm-{name} version 1 (seed {best['seed']}, the lowest validation criterion)" in out
        version = client.get_model_version(f"pmsm-{name}", "1")
        assert int(version.tags["seed"]) == best["seed"]
        assert float(version.tags["metric.criterion_test"]) == pytest.approx(best["criterion_test"])
        local, _ = load_flux_model(tmp_path / "cmp" / "models" / name / f"seed{best['seed']}")
        loaded = dartboard.load(f"models:/pmsm-{name}/1", tracking_uri=uri, cache_dir=tmp_path / f"cache-{name}")
        theirs, ours = flux_table(loaded, 1.0, 4), flux_table(local, 1.0, 4)  # flux and inductances on a grid
        assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    run = client.get_run(version.run_id)
    assert run.data.params["epochs"] == "2" and run.data.metrics["thesis.criterion_test"] > 0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"comparison.md", "runs.csv", "flux_maps.png"}
    code, out, err = run_main(["pull", "pmsm-thesis:1", "--to", "pulled", "--tracking-uri", uri], capsys)
    assert code == 0, err
    code, out, err = run_main(["pmsm", "flux", "pulled", "--points", "3"], capsys)
    assert code == 0, err
    assert (tmp_path / "pulled" / "flux_map.csv").read_text().count("\n") == 1 + 9
    code, out, err = run_main(["evaluate", "pmsm-thesis:1", "--tracking-uri", uri], capsys)
    assert code == 2 and "error: model 'pmsm-thesis:1' is a PMSM flux model (currents to flux linkages)" in err, err


def test_no_mlflow_logs_and_registers_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "motor.json").write_text(json.dumps(SMALL))
    code, out, err = run_main(["pmsm", "compare", "base=pmsm-baseline", "--seeds", "0", "--epochs", "1", "--batch-size",
                               "64", "--data-root", "motor.json", "--out", "cmp", "--no-mlflow"], capsys)
    assert code == 0, err[-3000:]
    assert "registered" not in out and not (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "cmp" / "comparison.md").is_file()
