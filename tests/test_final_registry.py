"""A trained final network through the registry and out of it, on a sqlite MLflow backend, through the
installed console script: `dartboard train` registers it (genotype, weights with SHA-256, training
config, metrics, parameter count), `dartboard pull NAME@ALIAS` and `dartboard.load("models:/NAME@ALIAS")`
return the same network ready for inference, and `dartboard export` writes ONNX / TorchScript / pt2
files that their own runtimes load and that compute what the network computes. Bad input (a corrupted
weights file, a format that is not installed or does not exist, more GPUs than there are, a checkpoint
of another genotype, a genotype kind the protocol cannot build) is one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_contract import env_for, error_lines, run, run_here

import dartboard
from dartboard.platform.tracking.models import client
from dartboard.training.final import network_from_files, sha256_file

pytest.importorskip("mlflow")
NAME = "final-tiny"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """darts-v2 at C=4, 3 cells, 2 epochs on digits with the auxiliary head, trained and registered by the CLI."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "model"
    result = run(["train", "darts-v2", "--channels", "4", "--layers", "3", "--epochs", "2", "--batch-size", "64",
                  "--auxiliary", "--out", str(out), "--tracking-uri", uri, "--register", f"{NAME}@champion", "--json"],
                 env_for(), timeout=600)
    assert result.returncode == 0, result.stderr
    files = {"genotype": out / "genotype.json", "network": out / "network.json", "weights": out / "weights.safetensors"}
    return {"uri": uri, "out": out, "root": root, "json": json.loads(result.stdout), "net": network_from_files(files)}


def test_the_version_records_genotype_weights_config_metrics_and_parameters(trained):
    version = client(trained["uri"]).get_model_version_by_alias(NAME, "champion")
    tags, out = version.tags, trained["out"]
    assert tags["genotype"] == "darts-v2" and tags["dataset"] == "digits"
    assert tags["sha256.weights.safetensors"] == sha256_file(out / "weights.safetensors") == trained["json"][
        "weights_sha256"]
    assert {"sha256.genotype.json", "sha256.network.json", "sha256.train.json"} <= set(tags)
    assert tags["config.channels"] == "4" and tags["config.auxiliary"] == "True" and tags["config.epochs"] == "2"
    assert tags["config.auxiliary_weight"] == "0.4" and tags["config.grad_clip"] == "5.0"
    assert float(tags["metric.test_acc"]) == pytest.approx(trained["json"]["test_acc"])
    assert int(tags["parameters"]) == trained["json"]["parameters"] == sum(
        p.numel() for k, p in trained["net"].named_parameters() if "auxiliary" not in k)
    history = client(trained["uri"]).get_metric_history(version.run_id, "train_loss")
    assert [m.step for m in history] == [0, 1]  # one point per epoch


def test_pull_and_load_return_the_trained_network_ready_for_inference(trained, tmp_path):
    result = run(["pull", f"{NAME}@champion", "--to", str(tmp_path / "pulled"), "--tracking-uri", trained["uri"]])
    assert result.returncode == 0, result.stderr
    for name in ("genotype.json", "network.json", "weights.safetensors", "train.json"):
        assert sha256_file(tmp_path / "pulled" / name) == sha256_file(trained["out"] / name)
    net = dartboard.load(f"models:/{NAME}@champion", tracking_uri=trained["uri"], cache_dir=tmp_path / "cache")
    assert not net.training
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), trained["net"](x))


def _outputs(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray:
    """The exported file run by its runtime alone."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
        return module(x).numpy()


@pytest.mark.parametrize("fmt, source", [("onnx", "registry"), ("torchscript", "registry"), ("pt2", "files")])
def test_export_writes_a_file_that_computes_the_network(trained, tmp_path, fmt, source):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    target = tmp_path / f"net.{fmt}"
    args = ([f"{NAME}@champion", "--tracking-uri", trained["uri"]] if source == "registry" else
            ["darts-v2", "--weights", str(trained["out"] / "weights.safetensors")])
    result = run(["export", *args, "--format", fmt, "--out", str(target)], timeout=600)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no partial file left
    # the file is checked under a name with its suffix: torch's pt2 loader warns of any other (its own logger, on
    # stderr: "Unable to load package. f must be a buffer or a file ending in .pt2")
    assert "pt2_archive" not in result.stderr, result.stderr
    x = torch.randn(7, 1, 8, 8)  # another batch size than the export traced
    with torch.no_grad():
        expected = trained["net"](x).numpy()
    np.testing.assert_allclose(_outputs(fmt, target, x), expected, atol=1e-4, rtol=1e-4)


def test_bad_export_input_is_one_line_exit_2_and_writes_nothing(trained, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    data = bytearray((trained["out"] / "weights.safetensors").read_bytes())
    (corrupt / "weights.safetensors").write_bytes(bytes(data[: len(data) // 2]))  # truncated
    (corrupt / "network.json").write_text((trained["out"] / "network.json").read_text())
    no_onnx = tmp_path / "no_onnx"
    no_onnx.mkdir()
    (no_onnx / "sitecustomize.py").write_text(
        "import importlib.util\n_find = importlib.util.find_spec\n\n\n"
        "def find_spec(name, *args):\n    return None if name == 'onnxscript' else _find(name, *args)\n\n\n"
        "importlib.util.find_spec = find_spec\n")
    weights = ["darts-v2", "--weights"]
    cases = [
        ([*weights, str(corrupt / "weights.safetensors"), "--format", "pt2"], env_for(),
         "is not the trained weights of this network"),
        ([*weights, str(trained["out"] / "weights.safetensors"), "--format", "tflite"], env_for(),
         "--format: 'tflite' is not an export format"),
        ([*weights, str(trained["out"] / "weights.safetensors"), "--format", "onnx"], env_for(no_onnx),
         "--format onnx: needs the Python package(s) onnxscript"),
        (["darts-v1", "--weights", str(trained["out"] / "weights.safetensors"), "--format", "pt2"], env_for(),
         "is not the trained weights of this network"),  # weights of another genotype
    ]
    for args, env, message in cases:
        target = tmp_path / "out" / "net.bin"
        result = run(["export", *args, "--out", str(target)], env)
        errors = error_lines(result.stderr)
        assert result.returncode == 2 and len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_train_input_is_one_line_exit_2_and_writes_nothing(trained, tmp_path, capsys, monkeypatch):
    other = tmp_path / "other"  # a folder holding a final-training checkpoint of darts-v2
    checkpoint = other / "ray" / "final" / "checkpoint_0"
    checkpoint.mkdir(parents=True)
    identity = {"genotype": json.loads((trained["out"] / "genotype.json").read_text()), "dataset": "digits",
                "train": {}}
    (checkpoint / "progress.json").write_text(json.dumps({"history": [], "identity": identity}))
    tiny = ["--channels", "4", "--layers", "3", "--epochs", "1", "--no-mlflow"]
    tracked = ["--tracking-uri", trained["uri"]]  # found by the driver after the MLflow run is opened
    runs_before = len(client(trained["uri"]).search_runs([e.experiment_id for e in client(
        trained["uri"]).search_experiments()]))
    cases = [
        (["darts-v2", "--workers", "2", "--gpus-per-worker", "1", "--out", str(tmp_path / "a")],
         "--gpus-per-worker: 2 worker(s) x 1 GPU = 2 GPU(s) asked for, but the cluster has"),
        (["darts-v1", "--workers", "2", "--out", str(other), *tracked], "belongs to another training (genotype"),
        (["pmsm-baseline", "--workers", "2", "--out", str(tmp_path / "b")], "is of kind 'flux_mlp'; train takes"),
        (["darts-v2", "--precision", "fp8", "--out", str(tmp_path / "c")], "--precision: expected one of fp32"),
        (["darts-v2", "--workers", "3", "--batch-size", "64", "--out", str(tmp_path / "d"), *tracked],
         "batch_size: 64 is not divisible by the 3 workers"),
    ]
    if torch.cuda.is_available():
        cases = cases[1:]
    for args, message in cases:
        args = ["train", *args, *(tiny[:-1] if "--tracking-uri" in args else tiny)]
        if "--tracking-uri" in args:  # through the console script: MLflow's client state stays out of this process
            result = run(args)
            code, err = result.returncode, result.stderr
        else:  # refused before any work: the command's main in this process (2-4 s of start-up less each)
            monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
            code, err = run_here(args, capsys)
        errors = error_lines(err)
        assert code == 2 and len(errors) == 1 and message in errors[0], (args, err)
    assert not any((tmp_path / name).exists() for name in "abcd")
    assert sorted(p.name for p in other.rglob("*")) == ["checkpoint_0", "final", "progress.json", "ray"]
    # no MLflow run left behind by the refused trainings (their runs held no epoch: deleted)
    assert len(client(trained["uri"]).search_runs([e.experiment_id for e in client(
        trained["uri"]).search_experiments()])) == runs_before
