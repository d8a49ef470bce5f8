"""A local search checkpoints every epoch; an interrupted search resumed with `--resume` ends exactly as an
uninterrupted one (genotype, alphas, every epoch's metrics), and its MLflow run is marked KILLED."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from test_cli_contract import console_script, env_for, sigint_default

from dartboard.errors import UserInputError
from dartboard.platform import run as run_module
from dartboard.platform.config import SearchRunConfig
from dartboard.platform.run import resume_search_job, run_search_job

OPTIONS = {"C": 4, "layers": 2, "epochs": 3}


def _cfg(out, **kw) -> SearchRunConfig:
    return SearchRunConfig(searcher="fairdarts", batch_size=128, seed=3, device="cpu", mlflow=False, out=str(out),
                           options=OPTIONS, **kw)


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if "seconds" not in k} == {k: v for k, v in y.items() if "seconds" not in k}


def test_an_interrupted_search_resumes_bit_identically(tmp_path, monkeypatch):
    whole = run_search_job(_cfg(tmp_path / "whole"), progress=False)
    # interrupt after the 2nd epoch's checkpoint: a state the test controls, not a timer
    real_write = run_module.ckpt.write
    calls = []

    def write_then_interrupt(*args, **kwargs):
        real_write(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module.ckpt, "write", write_then_interrupt)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_search_job(_cfg(cut), progress=False)
    assert json.loads((cut / "interrupted.json").read_text()) == {"epochs_finished": 2, "epochs": 3}
    monkeypatch.setattr(run_module.ckpt, "write", real_write)
    # the same command again (not --resume) would clear the checkpoint: refused, the checkpoint untouched
    saved = {p: p.read_bytes() for p in (cut / "checkpoint").iterdir()}
    with pytest.raises(UserInputError, match=f"--out: '{cut}' holds an unfinished search \\(2 epochs done\\); "
                                             f"finish it with `dartboard search --resume {cut}`"):
        run_search_job(_cfg(cut), progress=False)
    assert {p: p.read_bytes() for p in (cut / "checkpoint").iterdir()} == saved
    torch.manual_seed(12345)  # the process's RNG moved on: resume must restore it, not rely on it
    resumed = resume_search_job(cut, progress=False)
    assert resumed.genotype == whole.genotype
    _same_metrics(resumed.history, whole.history)
    for a, b in zip(resumed.searcher.arch_parameters(), whole.searcher.arch_parameters(), strict=True):
        assert torch.equal(a, b)
    assert not (cut / "interrupted.json").exists()
    assert json.loads((cut / "history.json").read_text()) == resumed.history
    with pytest.raises(UserInputError, match="has finished"):
        resume_search_job(cut, progress=False)
    with pytest.raises(UserInputError, match="no search checkpoint"):
        resume_search_job(tmp_path, progress=False)


@pytest.mark.mlflow
def test_an_interrupted_search_run_is_marked_killed(tmp_path, monkeypatch):
    from dartboard.platform.tracking import runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    cfg = _cfg(tmp_path / "run", tracking_uri=uri).model_copy(update={"mlflow": True})
    real_write = run_module.ckpt.write
    monkeypatch.setattr(run_module.ckpt, "write", lambda *a, **k: (real_write(*a, **k), interrupt()))
    with pytest.raises(KeyboardInterrupt):
        run_search_job(cfg, progress=False)
    c = runs.client(uri)
    found = c.search_runs([c.get_experiment_by_name("dartboard").experiment_id])
    assert [r.info.status for r in found] == ["KILLED"]
    assert found[0].data.tags["space"] == "darts-none"  # fairdarts's own space, not DARTS's
    assert [m.step for m in c.get_metric_history(found[0].info.run_id, "train_loss")] == [0]


def test_sigint_then_resume_through_the_console_script(tmp_path):
    """Ctrl-C after the first epoch exits 130; `dartboard search --resume OUT` finishes it with exit 0 (the
    bit-identity of a resume is checked in-process above); --resume refuses other flags."""
    out = tmp_path / "run"
    args = ["search", "--searcher", "fairdarts", "--epochs", "2", "--batch-size", "128", "--set", "C=4",
            "--set", "layers=2", "--seed", "3", "--no-mlflow", "--out", str(out)]
    env = env_for(OMP_NUM_THREADS="1")
    proc = subprocess.Popen([console_script(), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=sigint_default)
    try:
        for line in proc.stderr:  # the search's own log says when its first epoch (and checkpoint) ended
            if line.startswith("epoch   1 "):
                proc.send_signal(subprocess.signal.SIGINT)
                break
        proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert json.loads((out / "interrupted.json").read_text())["epochs_finished"] == 1
    bad = subprocess.run([console_script(), "search", "--resume", str(out), "--epochs", "5"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--epochs" in bad.stderr and "Traceback" not in bad.stderr
    resumed = subprocess.run([console_script(), "search", "--resume", str(out)], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(json.loads((out / "history.json").read_text())) == 2 and not (out / "interrupted.json").exists()


@pytest.mark.parametrize("epochs, words", [(1, "1 epoch done"), (2, "2 epochs done")])
def test_an_unfinished_searchs_progress_is_said_in_words(epochs, words, monkeypatch, tmp_path):
    from types import SimpleNamespace

    monkeypatch.setattr(run_module.ckpt, "read", lambda folder: SimpleNamespace(history=[{}] * epochs))
    assert run_module._how_far(tmp_path) == words


def _one_epoch(out) -> SearchRunConfig:
    return _cfg(out).model_copy(update={"options": {**OPTIONS, "epochs": 1}})


def _cut(path) -> None:
    path.write_bytes(path.read_bytes()[:200])  # a write cut short (a full disk)


@pytest.mark.parametrize("damage, file", [
    (lambda out: _cut(out / "checkpoint" / "searcher.pt"), "checkpoint/searcher.pt"),
    (lambda out: (out / "checkpoint" / "loaders.pt").unlink(), "checkpoint/loaders.pt"),
    (lambda out: (out / "checkpoint" / "progress.json").write_text("{"), "checkpoint/progress.json"),
    (lambda out: (out / "run.json").write_text("["), "run.json"),
])
def test_a_damaged_checkpoint_is_refused_naming_its_file_and_the_ways_to_search_anew(damage, file, tmp_path):
    """A checkpoint file cut short, gone or edited: was a traceback (torch's OSError, a JSONDecodeError, a
    FileNotFoundError). Deleting the checkpoint, as the refusal says, lets a new search run in the folder."""
    out = tmp_path / "out"
    run_search_job(_one_epoch(out), progress=False)
    (out / "genotype.json").unlink()  # as a killed search leaves it: a checkpoint, no genotype
    damage(out)
    with pytest.raises(UserInputError) as refused:
        resume_search_job(out, progress=False)
    assert str(refused.value).startswith(f"--resume: '{out / file}' cannot be read (")
    assert str(refused.value).endswith(f"): the checkpoint is damaged and the search cannot continue from it; search "
                                       f"anew with another --out, or delete '{out / 'checkpoint'}' to search anew in "
                                       f"'{out}'")
    if file == "checkpoint/progress.json":  # the same command again is refused: not told to --resume
        with pytest.raises(UserInputError, match=f"--out: '{out}' holds an unfinished search whose checkpoint cannot "
                                                 f"be read; give another --out, or delete '{out / 'checkpoint'}'"):
            run_search_job(_one_epoch(out), progress=False)
    for path in sorted((out / "checkpoint").iterdir()):
        path.unlink()
    (out / "checkpoint").rmdir()
    assert run_search_job(_one_epoch(out), progress=False).history


def test_resume_on_data_whose_classes_changed_is_refused(tmp_path):
    """A class folder added to the image folder since the search started: another classifier (was a size-mismatch
    traceback)."""
    import shutil

    from image_folders import write_image_folder

    write_image_folder(tmp_path / "imgs", ("ants", "bees"), per_class=8)
    out = tmp_path / "out"
    cfg = SearchRunConfig(searcher="darts", dataset="imagefolder", data_root=str(tmp_path / "imgs"), image_size=8,
                          batch_size=4, seed=0, device="cpu", mlflow=False, out=str(out),
                          options={"C": 4, "layers": 3, "epochs": 1})
    run_search_job(cfg, progress=False)
    (out / "genotype.json").unlink()  # as a killed search leaves it
    for split in ("train", "test"):
        shutil.copytree(tmp_path / "imgs" / split / "bees", tmp_path / "imgs" / split / "aphids")
    with pytest.raises(UserInputError, match=rf"--resume: the supernet of '{out / 'checkpoint' / 'searcher.pt'}' "
                                             r"does not fit this search's \(size mismatch for .*classifier.*\); the "
                                             r"data changed since the search started"):
        resume_search_job(out, progress=False)
