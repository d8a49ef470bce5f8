"""A registered version named where a command takes a genotype, without a `dartboard pull` first.
`dartboard train NAME@ALIAS`: the genotype (a study's champion) is pulled (verified) into --out (default
runs/NAME-vVERSION) and trained there on the data set the version records; --tracking-uri names the registry,
with --no-mlflow too; an --out that holds another genotype is refused with nothing written. `dartboard info
NAME@ALIAS`: the version's files described as its folder would be, under the reference's name. `dartboard
distance`: a registered version's genotype compared as a file's would be. Real MLflow (sqlite)."""

from __future__ import annotations

import json

import mlflow
import pytest
from test_cli_contract import run_main

from dartboard.platform.cli.registered import is_registry_reference
from dartboard.platform.tracking import models
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve


def test_what_names_a_registered_version(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "held@out").mkdir()
    for text, expected in (("champ@champion", True), ("champ:3", True), ("models:/champ/3", True),
                           ("darts-v2", False), ("champ", False), ("champ:latest", False), ("runs/a@b", False),
                           ("held@out", False)):  # an existing folder is a folder, whatever its name
        assert is_registry_reference(text) is expected, text


def empty_run(uri: str) -> str:
    """The id of a new, empty run of the experiment 'studies' in the registry at ``uri`` (versions belong to a run)."""
    c = mlflow.MlflowClient(uri)
    experiment = c.get_experiment_by_name("studies")
    return c.create_run(experiment.experiment_id if experiment else c.create_experiment("studies")).info.run_id


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """darts-v2 registered as a genotype-only version of 'searched' (alias champion, searched on colour-digits)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    path = tmp_path / "genotype.json"
    gt.save(resolve("darts-v2"), path)
    models.register_model_files(uri, "searched", empty_run(uri), {"genotype": path}, {"dataset": "colour-digits"},
                                aliases=("champion",))
    return uri


def test_a_registered_genotype_is_pulled_and_trained(registered, tmp_path, capsys):
    code, out, err = run_main(["train", "searched@champion", "--epochs", "1", "--channels", "4", "--layers", "2",
                               "--no-mlflow", "--tracking-uri", registered], capsys)
    assert code == 0, err[-3000:]
    folder = tmp_path / "runs" / "searched-v1"
    assert gt.to_dict(gt.load(folder / "genotype.json")) == gt.to_dict(resolve("darts-v2"))
    assert (folder / "weights.safetensors").is_file()
    assert json.loads((folder / "network.json").read_text())["dataset"] == "colour-digits"  # the version's data
    assert "test_acc" in out
    # the same command again trains the same genotype in the same folder (no refusal of its own genotype)
    code, _, err = run_main(["train", "searched:1", "--epochs", "1", "--channels", "4", "--layers", "2",
                             "--no-mlflow", "--tracking-uri", registered, "--out", str(folder)], capsys)
    assert code == 0, err[-3000:]


def test_an_out_holding_another_genotype_is_refused(registered, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    gt.save(resolve("darts-v1"), other / "genotype.json")
    before = (other / "genotype.json").read_bytes()
    code, _, err = run_main(["train", "searched@champion", "--epochs", "1", "--channels", "4", "--layers", "2",
                             "--no-mlflow", "--tracking-uri", registered, "--out", str(other)], capsys)
    assert code == 2
    assert "--out: " in err and "holds another genotype.json than searched version 1's" in err
    assert (other / "genotype.json").read_bytes() == before and sorted(p.name for p in other.iterdir()) == [
        "genotype.json"]


def test_an_out_that_is_a_file_is_refused(registered, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    code, _, err = run_main(["train", "searched@champion", "--epochs", "1", "--channels", "4", "--layers", "2",
                             "--no-mlflow", "--tracking-uri", registered, "--out", "taken"], capsys)
    assert code == 2 and "--out: 'taken' exists and is not a folder" in err
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_missing_version_is_named(registered, capsys):
    code, _, err = run_main(["train", "searched@nowhere", "--no-mlflow", "--tracking-uri", registered], capsys)
    assert code == 2 and "model 'searched@nowhere' not found in the registry" in err


def test_info_describes_a_registered_version(registered, capsys):
    code, out, err = run_main(["info", "searched@champion", "--tracking-uri", registered], capsys)
    assert code == 0, err[-3000:]
    code, catalog, _ = run_main(["info", "darts-v2"], capsys)
    assert out.splitlines()[0] == "searched@champion: C=36, 20 cells, cifar10 input"
    assert out.splitlines()[1:] == catalog.splitlines()[1:]  # the same genotype's size
    code, _, err = run_main(["info", "darts-v2", "--tracking-uri", registered], capsys)
    assert code == 2 and "--tracking-uri: 'darts-v2' is no registered version" in err


def test_distance_takes_registered_versions(registered, capsys):
    code, out, err = run_main(["distance", "searched@champion", "darts-v2", "darts-v1", "--tracking-uri",
                               registered], capsys)
    assert code == 0, err[-3000:]
    code, catalog, _ = run_main(["distance", "darts-v2", "darts-v1"], capsys)
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    expected = {line.split()[0]: line.split()[1:] for line in catalog.splitlines()[1:]}
    assert rows["searched@champion"] == ["0.0000", *expected["darts-v2"]]  # darts-v2, registered


def test_a_genotype_only_version_points_to_its_training(registered, tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), np.float32))
    code, _, err = run_main(["predict", "searched@champion", "x.npy", "--tracking-uri", registered], capsys)
    assert code == 2 and "holds a genotype only (no trained weights); train it first (dartboard train " \
                         "searched@champion)" in err
    code, _, err = run_main(["export", "searched@champion", "--out", "x.onnx", "--tracking-uri", registered], capsys)
    assert code == 2 and "holds a genotype only, no trained network (dartboard train searched@champion" in err


def test_training_a_trained_version_names_the_size_it_was_trained_at(registered, tmp_path, capsys, caplog):
    import logging

    folder = tmp_path / "trained"
    folder.mkdir()
    gt.save(resolve("darts-v2"), folder / "genotype.json")
    (folder / "network.json").write_text(json.dumps({"channels": 8, "layers": 5}))
    (folder / "weights.safetensors").write_bytes(b"weights")
    models.register_model_files(registered, "trained", empty_run(registered), {
        "genotype": folder / "genotype.json", "network": folder / "network.json",
        "weights": folder / "weights.safetensors"}, {"dataset": "digits"})
    for ref, said in (("trained:1", True), ("searched@champion", False)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dartboard"):
            code, _, err = run_main(["train", ref, "--epochs", "1", "--channels", "4", "--layers", "2",
                                     "--no-mlflow", "--tracking-uri", registered, "--out", f"out-{said}"], capsys)
        assert code == 0, err[-3000:]
        assert ("holds a network of C=8, 5 cells trained from it" in caplog.text) is said, caplog.text


@pytest.mark.parametrize("flags, said", [
    (["--framework", "simclr"], "--framework: only for mlp genotypes"),  # a flag this genotype's training refuses
    (["--dataset", "nowhere"], "nowhere"),  # data it cannot train on
])
def test_a_refused_training_of_a_registered_version_writes_nothing(registered, tmp_path, capsys, flags, said):
    code, _, err = run_main(["train", "searched@champion", "--epochs", "1", "--no-mlflow", "--tracking-uri",
                             registered, *flags], capsys)
    assert code == 2 and said in err, err
    assert not (tmp_path / "runs").exists()  # its default folder (runs/searched-v1) was not made
    held = tmp_path / "held"  # a folder of the user's: the pulled genotype is not left in it
    held.mkdir()
    (held / "notes.txt").write_text("mine")
    code, _, err = run_main(["train", "searched@champion", "--epochs", "1", "--no-mlflow", "--tracking-uri",
                             registered, "--out", str(held), *flags], capsys)
    assert code == 2 and said in err, err
    assert sorted(p.name for p in held.iterdir()) == ["notes.txt"]
