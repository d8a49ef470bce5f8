"""Quiet by default, clear when it matters: --version, --json results, the epoch's mean loss, progress
of long phases, and Ray's output only with --verbose (no Ray cluster is started here)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from test_cli_contract import HEAVY, env_for, imported_modules, run

from dartboard import __version__
from dartboard.training import progress


def test_version_is_instant_and_plain():
    result = run(["--version"], env_for(PYTHONPROFILEIMPORTTIME="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"dartboard {__version__}"
    assert not imported_modules(result.stderr) & set(HEAVY)


def test_train_json_reports_the_epochs_mean_loss(tmp_path):
    result = run(["train", "darts-v2", "--epochs", "1", "--channels", "4", "--layers", "2", "--no-mlflow",
                  "--out", str(tmp_path), "--json"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # stdout is the JSON alone
    assert set(report) >= {"test_acc", "test_loss", "parameters", "weights_sha256", "history"}
    assert [h["epoch"] for h in report["history"]] == [0]
    assert "train_loss" in result.stderr and "means over the epoch" in result.stderr


def test_epoch_loss_is_the_mean_over_samples_not_the_last_batch():
    """With lr 0 the weights never move, so the epoch's losses can be recomputed batch by batch; the
    reported value is their sample-weighted mean (the last batch of digits has 29 of 64 samples)."""
    from dartboard.data.catalog import load_dataset
    from dartboard.data.datasets import make_loader
    from dartboard.spaces.catalog import resolve
    from dartboard.training.final import TrainConfig, build_network, train_genotype

    splits = load_dataset("digits")
    cfg = TrainConfig(channels=4, layers=2, epochs=1, batch_size=64, lr=0.0, momentum=0.0, weight_decay=0.0, seed=3)
    seen = []
    result = train_genotype(resolve("darts-v2"), splits, cfg, on_epoch=lambda e, m: seen.append(m))
    from dartboard.searchers.base import seed_everything

    seed_everything(cfg.seed)
    net = build_network(resolve("darts-v2"), cfg, splits).train()
    losses, sizes = [], []
    with torch.no_grad():
        for x, y in make_loader(splits.train, 64, shuffle=True, seed=cfg.seed):
            losses.append(float(torch.nn.functional.cross_entropy(net(x), y)))
            sizes.append(len(y))
    mean = sum(v * n for v, n in zip(losses, sizes, strict=True)) / sum(sizes)
    assert sizes[-1] != sizes[0] and abs(losses[-1] - mean) > 1e-4  # the last batch alone would differ
    assert seen[0]["train_loss"] == pytest.approx(mean, rel=1e-5)
    assert result.history[0]["train_loss"] == seen[0]["train_loss"]


def test_training_phase_advances_a_display_once_per_step():
    from dartboard.data.catalog import load_dataset
    from dartboard.spaces.catalog import resolve
    from dartboard.training.final import TrainConfig, train_genotype

    shown = []

    @contextmanager
    def display(description, total):
        shown.append([description, total, 0])
        yield lambda: shown[-1].__setitem__(2, shown[-1][2] + 1)

    splits = load_dataset("digits")
    cfg = TrainConfig(channels=4, layers=1, epochs=2, batch_size=256, seed=0)
    train_genotype(resolve("darts-v2"), splits, cfg)  # no display installed: nothing to show, nothing breaks
    assert shown == []
    with progress.showing(display):
        train_genotype(resolve("darts-v2"), splits, cfg)
    steps = 2 * -(-len(splits.train) // 256)
    assert shown == [["training", steps, steps]]


def test_search_json_is_one_object_with_the_genotype(tmp_path):
    from dartboard.spaces import genotype as gt

    result = run(["search", "--no-mlflow", "--epochs", "1", "--batch-size", "256", "--set", "C=4", "--set", "layers=2",
                  "--out", str(tmp_path / "s"), "--json"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert gt.from_dict(report["genotype"]) == gt.load(tmp_path / "s" / "genotype.json")
    assert report["epochs"] == 1 and "val_acc" in report["last_epoch"]


def test_sweep_json_summary_names_the_best_and_every_trial():
    from dartboard.platform.cli.sweep import json_summary

    best = {"trial_id": "b", "variant": "darts", "status": "complete", "objective": 0.9, "epoch": 2,
            "config": {"arch_lr": 0.001}, "genotype": {"kind": "darts"}}
    other = {"trial_id": "a", "variant": "darts", "status": "error", "objective": None, "epoch": 0, "config": {},
             "error": "boom"}
    tracker = SimpleNamespace(champion=SimpleNamespace(name="s", version="3"),
                              decision=SimpleNamespace(move=True, reason="first champion"))
    result = SimpleNamespace(config=SimpleNamespace(name="s", register_as=None), run_dir="/r", seconds=1.23456,
                             counts={"complete": 1, "error": 1}, best=best, trials=[other, best], tracker=tracker)
    summary = json.loads(json.dumps(json_summary(result, registered=True)))
    assert summary["registered"] == {"name": "s", "version": "3", "alias": True, "reason": "first champion"}
    assert summary["best"]["trial_id"] == "b"
    assert [t["status"] for t in summary["trials"]] == ["error", "complete"] and summary["trials"][0]["error"] == "boom"
    assert json_summary(result, registered=False)["registered"] is None


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_is_quiet_unless_verbose(monkeypatch, verbose):
    ray = pytest.importorskip("ray")
    from dartboard.platform.ray import session

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv(session.VERBOSE_ENV, "1" if verbose else "0")
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    monkeypatch.setattr(session.os, "environ", dict(session.os.environ))  # quiet_ray's setdefault stays here
    session.init_ray(num_cpus=1)
    assert calls[0]["log_to_driver"] is verbose
    assert session.os.environ.get("RAY_AIR_NEW_OUTPUT") == (None if verbose else "0")
    assert session.tune_verbosity() == (1 if verbose else 0)


def test_verbose_flag_sets_what_ray_reads(monkeypatch):
    import importlib

    from dartboard.platform.ray.session import VERBOSE_ENV, verbose

    cli_main = importlib.import_module("dartboard.platform.cli.main")
    monkeypatch.setenv(VERBOSE_ENV, "0")  # restored (unset) after the test
    assert cli_main.VERBOSE_ENV == VERBOSE_ENV and not verbose()
    with pytest.raises(SystemExit) as done:
        cli_main.main(["--verbose", "searchers"])
    assert done.value.code == 0 and verbose()


def test_a_search_epochs_line_shows_the_metrics_its_objective_has():
    """A regression (PMSM flux models) has no accuracy: its line printed "train_acc nan  val_acc nan" before."""
    from dartboard.platform.run import epoch_line

    assert epoch_line({"epoch": 3, "train_loss": 3.0718, "val_loss": 3.1095, "val_mse_d": 4.6423, "lr": 2.58e-4}) \
        == "train_loss 3.0718  val_loss 3.1095  val_mse_d 4.642  lr 0.000258"
    nan = float("nan")
    assert epoch_line({"val_acc": 0.5, "train_loss": nan, "train_acc": 0.25, "val_loss": 1.0, "arch_lr": 3e-4}) \
        == "train_loss nan  train_acc 0.2500  val_loss 1.0000  val_acc 0.5000  arch_lr 0.0003"  # a NaN loss shows
