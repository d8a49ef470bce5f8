"""An in-process final training (`dartboard train` without Ray) checkpoints every epoch in OUT/train-checkpoint;
the same command relaunched after an interrupt continues it and ends exactly as an uninterrupted training
(weights, per-epoch history, test accuracy), logging into the same MLflow run; a checkpoint of another
training is refused, never loaded or overwritten. The Ray Train job's relaunch is tested in test_final_ray.py."""

from __future__ import annotations

import json
import signal
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file
from test_cli_contract import signalled
from test_final_training import tiny_splits

from dartboard.errors import UserInputError
from dartboard.platform import search_checkpoint, train_checkpoint
from dartboard.platform.ray.final_job import job_identity
from dartboard.platform.train_checkpoint import CHECKPOINT_DIR, TrainCheckpoint
from dartboard.spaces.catalog import resolve
from dartboard.spaces.genotype import to_dict
from dartboard.training.final import TrainConfig, train_genotype

#: every random part of the protocol on: the shuffling, cutout's squares and drop path's masks must all resume
CFG = TrainConfig(channels=4, layers=3, epochs=3, batch_size=8, auxiliary=True, drop_path_prob=0.3, cutout=True,
                  cutout_length=4, seed=5)


def _checkpoint(out, cfg: TrainConfig = CFG, classes: list[str] | None = None) -> TrainCheckpoint:
    train = {k: v for k, v in asdict(cfg).items() if k != "device"}
    return TrainCheckpoint(out, job_identity(to_dict(resolve("darts-v2")), train, "tiny", 32), classes)


class _Stop(Exception):
    pass


def _stopped_after_its_first_epoch(out, checkpoint: TrainCheckpoint) -> None:
    """Train CFG into ``out``, stopped in the second epoch: its first epoch's checkpoint is written."""

    def stop(epoch, metrics):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train_genotype(resolve("darts-v2"), tiny_splits(), CFG, out, on_epoch=stop, checkpoint=checkpoint)


def test_an_interrupted_training_continues_bit_identically(tmp_path, monkeypatch):
    whole = train_genotype(resolve("darts-v2"), tiny_splits(), CFG, tmp_path / "whole")
    real_save, saves = TrainCheckpoint.save, []

    def save_then_interrupt(self, *args, **kwargs):  # after the 2nd epoch's checkpoint: a state the test controls
        real_save(self, *args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainCheckpoint, "save", save_then_interrupt)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_genotype(resolve("darts-v2"), tiny_splits(), CFG, cut, checkpoint=_checkpoint(cut))
    monkeypatch.setattr(TrainCheckpoint, "save", real_save)
    assert not (cut / "weights.safetensors").exists()
    assert json.loads((cut / CHECKPOINT_DIR / "progress.json").read_text())["epochs_done"] == 2
    epochs = []
    torch.manual_seed(12345)  # the process's RNG moved on: the checkpoint must restore it, not rely on it
    resumed_checkpoint = _checkpoint(cut)
    assert resumed_checkpoint.epochs_done == 2
    resumed = train_genotype(resolve("darts-v2"), tiny_splits(), CFG, cut, on_epoch=lambda e, m: epochs.append(e),
                             checkpoint=resumed_checkpoint)
    assert epochs == [2]  # only the epoch left
    assert resumed.history == whole.history
    assert resumed.test_acc == whole.test_acc and resumed.test_loss == whole.test_loss
    a, b = load_file(str(resumed.weights_path)), load_file(str(whole.weights_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.weights_sha256 == whole.weights_sha256
    assert sorted(p.name for p in cut.iterdir()) == ["genotype.json", "train.json", "weights.safetensors"]
    assert _checkpoint(cut).epochs_done == 0  # a finished training leaves no checkpoint: the next one starts anew


def test_a_checkpoint_of_another_training_is_refused_and_kept(tmp_path):
    out = tmp_path / "out"
    _stopped_after_its_first_epoch(out, _checkpoint(out))
    saved = {p.name: p.read_bytes() for p in (out / CHECKPOINT_DIR).iterdir()}
    other = TrainConfig(**{**asdict(CFG), "epochs": 4, "seed": 6})
    with pytest.raises(UserInputError, match=rf"checkpoint {out / CHECKPOINT_DIR}: it belongs to another training "
                                             r"\(train.epochs, train.seed differ\); use a new output folder, or the "
                                             r"same genotype and settings to resume it"):
        _checkpoint(out, other)
    assert {p.name: p.read_bytes() for p in (out / CHECKPOINT_DIR).iterdir()} == saved
    (out / CHECKPOINT_DIR / "progress.json").write_text(json.dumps({"epochs_done": 1, "seconds": 0.0}))
    with pytest.raises(UserInputError, match="not a final-training checkpoint"):
        _checkpoint(out)
    for broken in ('{"identity": {}, "epochs', '["a list"]', '{"identity": {}}'):  # edited by hand, say
        (out / CHECKPOINT_DIR / "progress.json").write_text(broken)
        with pytest.raises(UserInputError, match=r"progress.json cannot be read \(.*\); remove the folder to start "
                                                 r"the training anew, or use a new output folder"):
            _checkpoint(out)
    (out / CHECKPOINT_DIR / "progress.json").write_bytes(saved["progress.json"])
    for damage in (lambda f: f.write_bytes(saved["trainer.pt"][:300]), lambda f: f.unlink()):  # cut short, gone
        damage(out / CHECKPOINT_DIR / "trainer.pt")
        with pytest.raises(UserInputError, match=r"trainer.pt cannot be read \(.*\); remove the folder to start the "
                                                 r"training anew, or use a new output folder"):  # was a traceback
            train_genotype(resolve("darts-v2"), tiny_splits(), CFG, out, checkpoint=_checkpoint(out))
    assert train_checkpoint.CHECKPOINT_DIR != search_checkpoint.CHECKPOINT_DIR  # both may live in one OUT


def _train(out, *extra: str, signum: int | None = None) -> tuple[int, str]:
    """`dartboard train` on digits through the console script (12 epochs unless ``extra`` says otherwise); with
    ``signum``, sent once epoch 2 has ended."""
    args = ["train", "darts-v2", "--channels", "4", "--layers", "2", "--epochs", "12", "--out", str(out), *extra]
    return signalled(args, "epoch   2 " if signum is not None else None, signum or 0, timeout=300, cwd=out.parent)


@pytest.mark.mlflow
def test_the_same_command_relaunched_after_ctrl_c_continues_in_the_same_run(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, log = _train(tmp_path / "cut", "--tracking-uri", uri, signum=signal.SIGINT)
    assert code == 130, log[-3000:]
    assert "Traceback" not in log
    assert "Creating initial MLflow database tables" not in log  # MLflow's set-up notes: only with --verbose
    done = json.loads((tmp_path / "cut" / CHECKPOINT_DIR / "progress.json").read_text())["epochs_done"]
    assert 1 <= done < 12
    assert f"train: stopped after epoch {done} of 12; the same command continues it from" in log
    run_id = json.loads((tmp_path / "cut" / "mlflow-run.json").read_text())["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    code, log = _train(tmp_path / "cut", "--tracking-uri", uri)
    assert code == 0, log[-3000:]
    assert f"train: continuing the training in {tmp_path / 'cut'} after epoch {done} of 12" in log
    # the registration said once, by dartboard (MLflow's own two lines for it left out)
    assert "registry: final-darts-v2-digits version 1" in log
    assert "Successfully registered model" not in log and "Created version '" not in log, log[-3000:]
    assert [line for line in log.splitlines() if line.startswith("epoch")][0].startswith(f"epoch {done + 1:3d} ")
    # the epochs equal an uninterrupted training's: test_an_interrupted_training_continues_bit_identically
    assert [h["epoch"] for h in json.loads((tmp_path / "cut" / "train.json").read_text())["history"]] == list(range(12))
    assert not (tmp_path / "cut" / CHECKPOINT_DIR).exists()
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(12))
    (version,) = client.search_model_versions("name='final-darts-v2-digits'")
    assert version.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    # another training in the same folder is a new run, not the finished one's
    code, log = _train(tmp_path / "cut", "--tracking-uri", uri, "--epochs", "1")
    assert code == 0, log[-3000:]
    again = json.loads((tmp_path / "cut" / "mlflow-run.json").read_text())["run_id"]
    assert again != run_id and [m.step for m in client.get_metric_history(again, "train_loss")] == [0]
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(12))


def test_an_unfinished_training_of_the_other_kind_is_refused(tmp_path, capsys, monkeypatch):
    """In one process after an interrupted Ray Train job in the same --out, or the reverse: refused before any work
    (neither would later finish over the other's model files)."""
    from test_cli_bad_input import refused_here

    from dartboard.platform.ray.final_job import RAY_DIR, RUN_NAME
    from dartboard.platform.train_checkpoint import check_no_other_kind

    local = tmp_path / "local"
    (local / CHECKPOINT_DIR).mkdir(parents=True)
    (local / CHECKPOINT_DIR / "progress.json").write_text(json.dumps({"identity": {}, "epochs_done": 3,
                                                                      "seconds": 1.0}))
    line = refused_here(["train", "darts-v2", "--workers", "2", "--no-mlflow", "--out", "local"], tmp_path, capsys,
                        monkeypatch)
    assert line == ("error: --out: 'local' holds an unfinished training in one process (3 epochs done); finish it "
                    "with the same command without --workers and --address, or give another --out")
    check_no_other_kind(local, ray_job=False)  # a training in one process goes on with its own
    job = tmp_path / "job"
    epoch = job / RAY_DIR / RUN_NAME / "checkpoint_000001"
    epoch.mkdir(parents=True)
    (epoch / "progress.json").write_text(json.dumps({"history": [{}, {}], "done": False}))
    line = refused_here(["train", "darts-v2", "--no-mlflow", "--out", "job"], tmp_path, capsys, monkeypatch)
    assert line == ("error: --out: 'job' holds an unfinished Ray Train job (2 epochs done); finish it with the same "
                    "command and its --workers and --address, or give another --out")
    check_no_other_kind(job, ray_job=True)
    (epoch / "progress.json").write_text(json.dumps({"history": [{}, {}], "done": True}))
    check_no_other_kind(job, ray_job=False)  # a finished job's folder takes a new training, as before


def test_a_checkpoint_of_data_whose_classes_changed_is_refused(tmp_path):
    """An image folder whose class folders changed since the interrupt: other labels, another classifier (it ended
    in a size-mismatch traceback). A checkpoint records its classes and refuses other ones by name; one written
    before it recorded them is refused when its network does not fit."""
    from torch.utils.data import TensorDataset

    from dartboard.data.datasets import DatasetInfo, Splits

    out = tmp_path / "out"
    names = [f"c{i}" for i in range(10)]
    _stopped_after_its_first_epoch(out, _checkpoint(out, classes=names))
    assert json.loads((out / CHECKPOINT_DIR / "progress.json").read_text())["classes"] == names
    assert _checkpoint(out, classes=names).epochs_done == 1
    renamed = ["bird", *names[1:]]
    with pytest.raises(UserInputError, match=rf"checkpoint {out / CHECKPOINT_DIR}: it trained on the classes c0, c1, "
                                             r".*; the data has bird, c1, .* now \(class folders added, removed or "
                                             r"renamed since\); restore the data to continue it"):
        _checkpoint(out, classes=renamed)
    progress = json.loads((out / CHECKPOINT_DIR / "progress.json").read_text())
    del progress["classes"]  # as a checkpoint written before the classes were recorded
    (out / CHECKPOINT_DIR / "progress.json").write_text(json.dumps(progress))
    g = torch.Generator().manual_seed(0)
    three = Splits(TensorDataset(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)),
                   TensorDataset(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)),
                   DatasetInfo("tiny", 1, 8, 3))
    with pytest.raises(UserInputError, match=r"its network does not fit this training's \(size mismatch for "
                                             r"classifier.*\); the data changed since"):
        train_genotype(resolve("darts-v2"), three, CFG, out, checkpoint=_checkpoint(out))
