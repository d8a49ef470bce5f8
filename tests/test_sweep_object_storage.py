"""Sweeps on object storage, against real servers on loopback: an S3-compatible one (moto), reached the
way a cluster reaches MinIO or S3 (``AWS_ENDPOINT_URL`` and credentials in the environment), and a Google
Cloud Storage emulator (``CLOUD_STORAGE_EMULATOR_ENDPOINT``, anonymous ``gs://anonymous@BUCKET``). Trial
checkpoints, Tune's experiment state, the study file and the result go to the bucket; the champion trains
in a local staging folder, is uploaded next to them and registered in MLflow, and the staging folder is
removed; the study resumes from the bucket."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from servers import free_port, stop_group, wait_for_url

pytestmark = pytest.mark.ray

BUCKET = "dartboard-test"


def _no_ray_yet() -> None:
    """Ray's workers take the environment of the moment Ray starts: no instance of an earlier test may
    still be up when the fixture points the environment at its server."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture()
def s3(tmp_path, monkeypatch):
    """A moto S3 server on loopback with an empty bucket; the environment points pyarrow (and so Ray
    Tune, Ray Train and dartboard) at it."""
    _no_ray_yet()
    port = free_port()
    log = tmp_path / "moto.log"
    proc = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{endpoint}/moto-api/", lambda: proc.poll() is None, log, "moto S3 server", timeout=60)
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(key, value)
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=10)
        yield f"s3://{BUCKET}"
    finally:
        stop_group(proc.pid, lambda: proc.poll() is None)
        proc.wait(timeout=30)


@pytest.fixture()
def gcs(tmp_path, monkeypatch):
    """A Google Cloud Storage emulator on loopback with an empty bucket (anonymous access)."""
    _no_ray_yet()
    port = free_port()
    log = tmp_path / "gcs.log"
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                             f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{endpoint}/storage/v1/b", lambda: proc.poll() is None, log, "GCS emulator", timeout=60)
        monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", endpoint)
        yield f"gs://anonymous@{BUCKET}"
    finally:
        stop_group(proc.pid, lambda: proc.poll() is None)
        proc.wait(timeout=30)


@pytest.fixture(params=["s3", "gcs"])
def bucket(request):
    return request.getfixturevalue(request.param)


def _listing(uri: str) -> list[str]:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    return sorted(i.path[len(root) + 1:] for i in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)))


def test_unwritable_bucket_is_one_clear_error(bucket):
    from dartboard.platform.ray.storage import check_storage

    missing = bucket.replace(BUCKET, "no-such-bucket")
    with pytest.raises(ValueError, match=f"storage: '{missing}/sweeps' is not writable"):
        check_storage(f"{missing}/sweeps")
    check_storage(f"{bucket}/sweeps")  # the bucket exists: fine, and the probe file is gone again
    assert _listing(f"{bucket}/sweeps") == []


def test_sweep_on_object_storage_checkpoints_resumes_and_registers_the_champion(bucket, tmp_path, monkeypatch):
    import hashlib
    import tempfile

    import ray

    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.checkpoint import STATE_FILE
    from dartboard.platform.ray.runner import stored_study
    from dartboard.platform.ray.session import init_ray
    from dartboard.platform.ray.storage import RESULT_FILE
    from dartboard.platform.sweep import run_sweep
    from dartboard.platform.tracking import models, runs

    cfg = StudyConfig(name="bucket-sweep", searcher="darts", epochs=1, num_samples=2, max_concurrent=2,
                      options={"C": 4, "layers": 2}, params={"arch_lr": {"type": "loguniform", "low": 1e-4,
                                                                         "high": 1e-2}},
                      scheduler={"type": "fifo"}, storage=f"{bucket}/sweeps",
                      final_training={"channels": 4, "layers": 3, "epochs": 1})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))  # where the champion is staged before upload
    init_ray(num_cpus=4)  # after the fixture set the environment
    try:
        result = run_sweep(cfg, tracking_uri=uri)
        # --resume reads the study and Tune's experiment state back from the bucket; a finished study
        # runs no trial again (the driver-loss test resumes an unfinished one on local storage)
        again = run_sweep(resume=result.run_dir, mlflow=False)
    finally:
        ray.shutdown()
    assert sorted(t["trial_id"] for t in again.trials) == sorted(t["trial_id"] for t in result.trials)
    assert [t["epoch"] for t in again.trials] == [1, 1]
    run_dir = result.run_dir
    assert run_dir.startswith(f"{bucket}/sweeps/bucket-sweep-") and result.counts["complete"] == 2
    files = _listing(run_dir)
    assert {"study.yaml", RESULT_FILE, "champion/genotype.json", "champion/network.json",
            "champion/weights.safetensors"} <= set(files)
    for t in result.trials:  # each trial's Train run checkpointed its epoch into the bucket
        assert any(f.startswith(f"trials/train-{t['trial_id']}/checkpoint_") and f.endswith(f"/{STATE_FILE}")
                   for f in files), files
    assert stored_study(run_dir).name == "bucket-sweep"  # what --resume reads back
    best = result.best
    assert best["final"]["dir"] == f"{run_dir}/champion"
    summary = json.loads(_read(f"{run_dir}/{RESULT_FILE}"))
    assert summary["best"]["final"]["dir"] == f"{run_dir}/champion"
    assert json.loads(_read(f"{run_dir}/champion/genotype.json")) == best["genotype"]
    version = runs.client(uri).get_model_version_by_alias("bucket-sweep", "champion")
    assert float(version.tags["metric.test_acc"]) == best["final"]["test_acc"]  # the full value
    pulled, _ = models.pull_model(uri, "bucket-sweep@champion", tmp_path / "pulled")
    weights = (pulled / "weights.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == best["final"]["weights_sha256"]
    assert _read_bytes(f"{run_dir}/champion/weights.safetensors") == weights
    assert not list(staging.glob("dartboard-champion-*"))  # the local staging folder is gone


def _read_bytes(uri: str) -> bytes:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def _read(uri: str) -> str:
    return _read_bytes(uri).decode()
