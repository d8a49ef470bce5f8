"""Tracking and model registry against a real `mlflow server` process on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from servers import free_port, stop_group, wait_for_url

from dartboard.platform.cli import main as cli_main
from dartboard.platform.tracking import models, runs
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve

pytest.importorskip("mlflow")


def _cli(argv: list[str]) -> int:
    try:
        cli_main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    # MLflow's job execution (7 huey consumer processes for GenAI jobs dartboard never submits) off: the
    # server's start-up took 27 CPU s with it and 9 without on the 2-core machine
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{uri}/health", lambda: proc.poll() is None, root / "server.log", "mlflow server")
        yield {"uri": uri, "root": root}
    finally:
        stop_group(proc.pid, lambda: proc.poll() is None, grace=5)
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def champion(server, tmp_path_factory):
    """A digits search (tiny supernet, 1 epoch), its final network trained 1 epoch, registered."""
    from dartboard.data.catalog import load_dataset
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.run import run_search_job
    from dartboard.training.final import TrainConfig, train_genotype

    out = tmp_path_factory.mktemp("champion")
    cfg = SearchRunConfig(searcher="darts", batch_size=256, seed=0, device="cpu", mlflow=False, out=str(out / "search"),
                          options={"C": 4, "layers": 2, "epochs": 1})
    result = run_search_job(cfg, progress=False)
    splits = load_dataset("digits")
    tcfg = TrainConfig(channels=4, layers=2, epochs=1, batch_size=128, seed=0)
    trained = train_genotype(result.genotype, splits, tcfg, out / "model")
    (out / "model" / "network.json").write_text(json.dumps(models.network_spec(tcfg, splits.info, "digits")))
    parent = runs.start_parent_run(server["uri"], "test-registry", "study-digits", {"epochs": 1}, {"study": "t"})
    child = runs.log_child_run(server["uri"], parent, "darts/seed0", {"searcher": "darts", "seed": 0},
                                   result.history, {"test_acc": trained.test_acc}, [out / "model" / "genotype.json"])
    runs.end_run(server["uri"], parent)
    version = models.register_champion(server["uri"], "digits-net", child, out / "model",
                                         {"study": "t", "searcher": "darts", "space": "darts", "dataset": "digits",
                                          "seed": 0, "metric.test_acc": trained.test_acc})
    files = {key: out / "model" / name for key, name in (("genotype", "genotype.json"), ("network", "network.json"),
                                                          ("weights", "weights.safetensors"))}
    return {"version": version, "test_acc": trained.test_acc, "sha": trained.weights_sha256, "parent": parent,
            "child": child, "history": result.history, "files": files}


def test_study_is_parent_run_with_child_trials(server, champion):
    c = runs.client(server["uri"])
    parent, child = c.get_run(champion["parent"]), c.get_run(champion["child"])
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == champion["parent"]
    steps = c.get_metric_history(champion["child"], "train_loss")
    assert [m.step for m in steps] == list(range(len(champion["history"])))
    assert "genotype.json" in [f.path for f in c.list_artifacts(champion["child"])]
    # logging the same trial twice returns the existing child run
    again = runs.log_child_run(server["uri"], champion["parent"], "darts/seed0", {}, [], {}, [])
    assert again == champion["child"]


def test_champion_alias_tags_and_pull_rebuilds_network(server, champion, tmp_path, capsys, monkeypatch):
    v = champion["version"]
    c = runs.client(server["uri"])
    by_alias = c.get_model_version_by_alias("digits-net", "champion")
    assert by_alias.version == v.version
    assert by_alias.tags["sha256.weights.safetensors"] == champion["sha"]
    assert {"study", "searcher", "space", "dataset", "seed", "metric.test_acc"} <= set(by_alias.tags)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    assert _cli(["pull", "digits-net@champion", "--to", "pulled", "--tracking-uri", server["uri"]]) == 0
    pulled = fresh / "pulled"
    assert {"genotype.json", "weights.safetensors", "network.json"} <= {p.name for p in pulled.iterdir()}
    from dartboard.data.catalog import load_dataset
    from dartboard.data.datasets import make_loader
    from dartboard.training.final import evaluate

    net = models.build_from_files({"genotype": pulled / "genotype.json", "network": pulled / "network.json",
                                     "weights": pulled / "weights.safetensors"})
    acc, _ = evaluate(net, make_loader(load_dataset("digits").test, 256, shuffle=False, seed=0), torch.device("cpu"))
    assert acc == pytest.approx(champion["test_acc"], abs=1e-9)
    # dartboard.load gives the same network, ready in eval mode
    import dartboard

    loaded = dartboard.load("models:/digits-net@champion", tracking_uri=server["uri"])
    assert not loaded.training
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded(x), net(x))
    # list / show name the model, its alias, tags and metrics
    for argv in (["models", "list"], ["models", "show", "digits-net"]):
        assert _cli([*argv, "--tracking-uri", server["uri"]]) == 0
    text = capsys.readouterr().out
    assert "digits-net" in text and "@champion" in text and "sha256.weights.safetensors" in text


def _version_files(server, version) -> Path:
    """The server's stored copy of a version's artifacts (what an attacker with store access edits)."""
    hits = [p for p in (server["root"] / "artifacts").rglob("weights.safetensors")]
    assert hits, "weights not found in the artifact store"
    return hits[-1].parent


def test_tampered_weights_are_refused_and_nothing_written(server, champion, tmp_path):
    folder = _version_files(server, champion["version"])
    weights = folder / "weights.safetensors"
    original = weights.read_bytes()
    try:
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        key = next(iter(state))
        state[key] = state[key] + 1.0
        save_file(state, str(weights))
        with pytest.raises(models.ModelIntegrityError, match="weights.safetensors: sha256"):
            models.pull_model(server["uri"], "digits-net@champion", tmp_path / "out")
        assert not (tmp_path / "out").exists()
        assert _cli(["pull", "digits-net:1", "--to", str(tmp_path / "cli"), "--tracking-uri", server["uri"]]) == 2
    finally:
        weights.write_bytes(original)


def test_invalid_or_altered_genotype_is_refused(server, champion, tmp_path):
    folder = _version_files(server, champion["version"])
    path = folder / "genotype.json"
    original = path.read_text()
    try:
        data = json.loads(original)
        data["normal"]["edges"][0][0] = "no_such_op"
        path.write_text(json.dumps(data))
        with pytest.raises(models.ModelIntegrityError, match="genotype.json fails validation"):
            models.pull_model(server["uri"], "digits-net@champion", tmp_path / "a")
        data = json.loads(original)
        first = data["normal"]["edges"][0]
        first[0] = "skip_connect" if first[0] != "skip_connect" else "max_pool_3x3"
        path.write_text(json.dumps(data))  # still a valid genotype, but not the registered one
        with pytest.raises(models.ModelIntegrityError, match="genotype.json: sha256"):
            models.pull_model(server["uri"], "digits-net@champion", tmp_path / "b")
    finally:
        path.write_text(original)
    models.pull_model(server["uri"], "digits-net@champion", tmp_path / "ok")  # restored: accepted again


def _trial(cfg, run_dir: str, trial_id: str, objective: float, genotype: dict | None = None) -> dict:
    from dartboard.platform.ray.trial import trial_payload  # the runner's own payload format

    metrics = {"objective": objective, "search_done": 1.0, **({"genotype": json.dumps(genotype)} if genotype else {})}
    return trial_payload(cfg, run_dir, trial_id, {"w_lr": 0.1}, metrics, None)


def test_study_tracker_registers_best_genotype(server, tmp_path):
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.runner import StudyResult
    from dartboard.platform.tracking.study import StudyTracker

    cfg = StudyConfig(name="s", experiment="test-sweep", register_as="sweep-best")
    tracker = StudyTracker(server["uri"])
    tracker.open(cfg, str(tmp_path / "x"))
    geno = gt.to_dict(resolve("darts-v2"))
    trials = [_trial(cfg, str(tmp_path / "x"), tid, obj, geno) for tid, obj in (("t1", 0.5), ("t2", 0.8))]
    for t in trials:
        assert t["status"] == "complete"
        tracker.log_trial(t)
    tracker.finish(StudyResult(str(tmp_path / "x"), cfg, trials, trials[1], 1.0), [], {"best_objective": 0.8})
    tracker.close(failed=False)
    c = runs.client(server["uri"])
    v = c.get_model_version_by_alias("sweep-best", "champion")
    assert v.tags["trial"] == "t2" and v.run_id == tracker.children["t2"] and tracker.champion.version == v.version
    assert c.get_run(tracker.parent).info.status == "FINISHED"
    assert c.get_run(tracker.parent).data.metrics["best_objective"] == pytest.approx(0.8)
    genotype = models.load("models:/sweep-best@champion", server["uri"], tmp_path / "g")
    assert gt.to_dict(genotype) == geno


@pytest.mark.parametrize("ref, expected", [
    ("models:/net@champion", ("net", "champion", None)), ("net:3", ("net", None, "3")),
    ("models:/net/4", ("net", None, "4")), ("net", ("net", None, None))])
def test_parse_model_ref(ref, expected):
    assert models.parse_model_ref(ref) == expected


def test_parse_model_ref_rejects_bad_version():
    with pytest.raises(ValueError, match="version 'x' is not a number"):
        models.parse_model_ref("net:x")


@pytest.mark.ray
def test_digits_sweep_registers_a_champion_that_pulls_and_rebuilds(ray_local, server, tmp_path, monkeypatch):
    """A real digits sweep (Ray Tune + Train) with final training registers NAME@champion on the
    server; `dartboard pull` in a fresh folder rebuilds a network with the logged test accuracy."""
    from dartboard.data.catalog import load_dataset
    from dartboard.data.datasets import make_loader
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.sweep import run_sweep
    from dartboard.training.final import evaluate

    cfg = StudyConfig(name="digits-sweep", searcher="darts", epochs=1, num_samples=2, max_concurrent=2,
                      options={"C": 4, "layers": 2}, params={"arch_lr": {"type": "loguniform", "low": 1e-4,
                                                                         "high": 1e-2}},
                      scheduler={"type": "fifo"}, storage=str(tmp_path / "sweeps"),
                      final_training={"channels": 4, "layers": 3, "epochs": 1})
    result = run_sweep(cfg, tracking_uri=server["uri"])
    assert result.best is not None and result.counts["complete"] == 2
    logged = result.best["final"]["test_acc"]
    # the champion trained as a Ray Train job (not on the driver): its per-epoch checkpoints are in the run
    assert list(Path(result.run_dir, "champion-ray").rglob("checkpoint_*/weights.safetensors"))
    # the study's MLflow records: trial runs with one point per epoch at real times, a parent run's summary
    c = runs.client(server["uri"])
    tracker = result.tracker
    parent = c.get_run(tracker.parent)
    assert parent.data.metrics["champion.test_acc"] == pytest.approx(logged)
    assert len(c.get_metric_history(tracker.parent, "trial_objective")) == 2
    assert {a.path for a in c.list_artifacts(tracker.parent, "plots")} >= {"plots/objective_per_trial.png",
                                                                           "plots/parallel_coordinates.png",
                                                                           "plots/trial_curves.png"}
    for rid in tracker.children.values():
        child = c.get_run(rid)
        points = c.get_metric_history(rid, "val_acc")
        assert [p.step for p in points] == list(range(cfg.epochs))
        assert child.info.start_time <= points[0].timestamp <= child.info.end_time
        assert {"pid", "timestamp", "time_total_s"}.isdisjoint(child.data.metrics)
        assert child.data.tags["space"] == "darts" and child.data.tags["seed"] == "0"
        assert "alpha_entropy" in child.data.metrics
    version = runs.client(server["uri"]).get_model_version_by_alias("digits-sweep", "champion")
    assert float(version.tags["metric.test_acc"]) == logged  # the full value, not a rounding of it
    assert version.tags["dataset"] == "digits" and version.tags["study"] == "digits-sweep"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    assert _cli(["pull", "digits-sweep@champion", "--to", "pulled", "--tracking-uri", server["uri"]]) == 0
    pulled = fresh / "pulled"
    assert gt.load(pulled / "genotype.json") == gt.from_dict(result.best["genotype"])
    net = models.build_from_files({"genotype": pulled / "genotype.json", "network": pulled / "network.json",
                                     "weights": pulled / "weights.safetensors"})
    acc, _ = evaluate(net, make_loader(load_dataset("digits").test, 256, shuffle=False, seed=0), torch.device("cpu"))
    assert acc == pytest.approx(logged, abs=1e-9)


def test_resumed_study_tracker_reopens_its_parent_run(tmp_path):
    """A second tracker (the driver after a crash) on the same run directory logs into the same parent."""
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.tracking.study import StudyTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = StudyConfig(name="s")
    run_dir, other_dir = str(tmp_path / "sweeps" / "s-1"), str(tmp_path / "sweeps" / "s-2")
    first = StudyTracker(uri)
    first.open(cfg, run_dir)
    first.log_trial(_trial(cfg, run_dir, "a", 0.5))
    second = StudyTracker(uri)
    second.open(cfg, run_dir)
    second.log_trial(_trial(cfg, run_dir, "a", 0.5))  # reported again after the crash: not logged twice
    second.log_trial(_trial(cfg, run_dir, "b", 0.5))
    other = StudyTracker(uri)
    other.open(cfg, other_dir)
    other.log_trial(_trial(cfg, other_dir, "a", 0.5))
    assert second.parent == first.parent != other.parent
    c = runs.client(uri)
    children = c.search_runs([c.get_run(first.parent).info.experiment_id],
                             f"tags.mlflow.parentRunId = '{first.parent}'")
    assert sorted(r.data.tags[runs.TRIAL_TAG] for r in children) == ["a", "b"]


_OLD_MODEL_CODE = '''import mlflow.pyfunc
from mlflow.models import set_model


class DartboardNetwork(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from dartboard.platform.registry import build_from_files

        self.net = build_from_files(context.artifacts)

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        with torch.no_grad():
            return self.net(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).numpy()


set_model(DartboardNetwork())
'''


def test_pyfunc_loads_current_and_pre_move_versions(server, champion, monkeypatch):
    """mlflow.pyfunc.load_model serves the champion, and a version registered with the model code of
    before the platform's layout change (importing dartboard.platform.registry) still loads and predicts
    the same classes."""
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(server["uri"])
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    current = mlflow.pyfunc.load_model("models:/digits-net@champion").predict(x)
    net = dartboard_load(server["uri"])
    expected = net(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(current, expected, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(models, "_MODEL_CODE", _OLD_MODEL_CODE)
    files = {k: Path(v) for k, v in champion["files"].items()}
    old = models.register_model_files(server["uri"], "digits-net-premove", champion["child"], files, {})
    served = mlflow.pyfunc.load_model(f"models:/digits-net-premove/{old.version}").predict(x)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def dartboard_load(uri: str):
    import dartboard

    return dartboard.load("models:/digits-net@champion", tracking_uri=uri)


def test_registering_prints_no_progress_bars_and_no_type_hint_advice(tmp_path, capfd, monkeypatch):
    """A registration in the middle of the sweep's summary: MLflow's artifact progress bars (off unless the user
    turns them on) and its advice to type-hint ``predict`` (whose input is any array of images) stay out of it."""
    import warnings

    import mlflow

    monkeypatch.chdir(tmp_path)  # the experiment below is MLflow's own: its artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("quiet")
    with mlflow.start_run() as run:
        pass
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(gt.to_dict(resolve("darts-v2"))))
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"  # dartboard.platform's default
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        version = models.register_model_files(uri, "quiet", run.info.run_id, {"genotype": path}, {"trial": "t"})
        genotype = models.load(f"models:/quiet/{version.version}", uri, tmp_path / "g")
    out, err = capfd.readouterr()
    assert gt.to_dict(genotype) == gt.to_dict(resolve("darts-v2"))
    assert "Downloading artifacts" not in out + err, err[-2000:]
    assert not [w for w in caught if "type hint" in str(w.message).lower()], [str(w.message) for w in caught]
