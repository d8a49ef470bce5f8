"""Real sweeps on a local Ray cluster. A diverging trial ends as errored with its reason, is not
retried, and the sweep goes on; the plug-in hooks see every finished trial and the best; the study
searches the tabular tiny81 space, so each trial's report carries its derived genotype's looked-up
regret (what the tracker logs to MLflow). ASHA stops a trial that is behind at its first rung: it
ends pruned at that epoch, never as a complete trial with a truncated value."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from dartboard.bench.regret import lookup_metrics
from dartboard.bench.table import load_table
from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.samplers import make_search_alg
from dartboard.spaces import genotype as gt

pytestmark = pytest.mark.ray

DIVERGING_LR = 1e12  # with momentum 0 the first weight step blows the supernet up: NaN loss in epoch 1


def _seed_proposing(base: dict, first: float, second: float) -> int:
    """The first TPE seed whose first two (random start-up) proposals of w_lr are ``first``, ``second``."""
    for seed in range(100):
        alg = make_search_alg(StudyConfig(**base, seed=seed))
        if (alg.suggest("a")["w_lr"], alg.suggest("b")["w_lr"]) == (first, second):
            return seed
    raise AssertionError(f"no seed proposes {first} then {second}")


def test_nan_trial_is_errored_and_the_sweep_goes_on(ray_local, tmp_path):
    from dartboard.platform.sweep import run_sweep

    base = {"name": "nan", "searcher": "darts", "space": "tiny81", "epochs": 1, "batch_size": 64, "num_samples": 2,
            "max_concurrent": 2, "options": {"w_momentum": 0.0},
            "params": {"w_lr": {"type": "choice", "values": [0.025, DIVERGING_LR]}},
            "scheduler": {"type": "fifo"}, "storage": str(tmp_path), "max_failures": 2}
    cfg = StudyConfig(**base, seed=_seed_proposing(base, 0.025, DIVERGING_LR))
    events = []
    result = run_sweep(cfg, mlflow=False, hooks=[events.append])
    by_lr = {t["config"]["w_lr"]: t for t in result.trials}
    assert set(by_lr) == {0.025, DIVERGING_LR}
    bad, good = by_lr[DIVERGING_LR], by_lr[0.025]
    assert bad["status"] == "error" and "train_loss became nan in epoch 1" in bad["error"]
    assert good["status"] == "complete" and good["epoch"] == 1 and 0.0 < good["objective"] <= 1.0
    assert result.best["trial_id"] == good["trial_id"] and result.counts == {"complete": 1, "pruned": 0, "error": 1}
    looked_up = lookup_metrics(load_table(), gt.from_dict(good["genotype"]))
    assert looked_up["tiny81_on_table"] == 1.0
    assert {k: good["metrics"][k] for k in looked_up} == pytest.approx(looked_up)
    assert len(events) == 2  # each finished trial reached the hooks once
    errored = [p for p in events if p["status"] == "error"]
    assert len(errored) == 1 and "nan" in errored[0]["error"]
    # not retried: one Train run per trial, the diverged one ended at its first report
    train_runs = sorted(p.name for p in (tmp_path.glob("nan-*/trials/*")))
    assert len(train_runs) == 2
    # its last report says where it ran: the study frees its placement group (test_a_trial_whose_data_cannot_be_read)
    (last,) = [json.loads(p.read_text().splitlines()[-1]) for p in tmp_path.glob(f"nan-*/run_trial_{bad['trial_id']}/"
                                                                                  "result.json")]
    assert last["nonfinite"] == 1.0 and last["placement_group_id"] and last["node_id"]


def test_asha_stops_the_trial_behind_at_its_first_rung(ray_local, tmp_path):
    """One trial at a time: the first (w_lr 0.05) passes every rung alone; the second learns nothing
    (w_lr 1e-6 and a frozen architecture) and is behind at rung 1: ASHA stops it after epoch 1."""
    from dartboard.platform.sweep import run_sweep

    base = {"name": "asha", "searcher": "darts", "space": "tiny81", "epochs": 3, "batch_size": 64, "num_samples": 2,
            "max_concurrent": 1, "options": {"arch_lr": 1e-12},
            "params": {"w_lr": {"type": "choice", "values": [0.05, 1e-6]}},
            "scheduler": {"type": "asha", "metric": "val_acc", "grace_period": 1, "reduction_factor": 2},
            "storage": str(tmp_path)}
    cfg = StudyConfig(**base, seed=_seed_proposing(base, 0.05, 1e-6))
    events = []
    result = run_sweep(cfg, mlflow=False, hooks=[events.append])
    by_lr = {t["config"]["w_lr"]: t for t in result.trials}
    good, slow = by_lr[0.05], by_lr[1e-6]
    assert good["status"] == "complete" and good["epoch"] == 3
    assert slow["status"] == "pruned" and slow["epoch"] == 1 and slow["objective"] < good["metrics"]["val_acc"]
    assert result.counts == {"complete": 1, "pruned": 1, "error": 0} and result.best["trial_id"] == good["trial_id"]
    assert sorted(p["status"] for p in events) == ["complete", "pruned"]
    # a search's last checkpoint holds its alphas epoch by epoch (an ablation's report plots them; before, only a
    # trial's final training wrote them), a stopped trial's none
    assert len(json.loads((Path(good["checkpoint"]) / "alpha_history.json").read_text())) == 3
    assert not (Path(slow["checkpoint"]) / "alpha_history.json").exists()
    # the driver's span of each trial (the sweep-overhead benchmark's timeline), in the result file too: one
    # trial at a time, so the second starts after the first ended
    spans = sorted(t["span"] for t in result.trials)
    assert all(start < end for start, end in spans) and spans[0][1] <= spans[1][0]
    written = json.loads((Path(result.run_dir) / "study_result.json").read_text())["trials"]
    assert sorted(t["span"] for t in written) == spans
    saved = make_search_alg(cfg)  # the Optuna study Tune saved with the experiment
    saved.restore_from_dir(result.run_dir)
    states = {t.params["w_lr"]: t.state.name for t in saved._ot_study.trials}
    assert states == {0.05: "COMPLETE", 1e-6: "PRUNED"}
    assert saved._ot_study.best_trial.params["w_lr"] == 0.05


@pytest.mark.parametrize("workers", [1, 2])
def test_a_trial_whose_data_cannot_be_read_errors_once_with_the_reason(workers, ray_local, tmp_path, monkeypatch):
    """An image folder and a DARTOpti start genotype's file given relative to the command's folder (the Ray workers
    run in folders of their own: before, every trial said "folder 'imgs' does not exist", and with an absolute folder
    "genotype 'start.json' is neither a file nor a catalog name"), the folder holding a file that is no image (read
    in the first epoch, after the start genotype): the trial ends errored with the data's message after one attempt
    (before: three attempts of Ray Train's start and the same error, about 30 s each), and the study's checks
    refuse a data_root that does not exist before any trial. With two workers, the rank that read the file ended its
    run while the other waited for it in the gradients' all-reduce: the trial hung (Ray Train's collective timeout,
    30 min), and a failing rank was retried as a bug."""
    from PIL import Image

    from dartboard.platform.sweep import run_sweep
    from dartboard.spaces.catalog import resolve

    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = tmp_path / "imgs" / split / name
            folder.mkdir(parents=True)
            for i in range(8):
                Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "imgs" / "train" / "b" / "z.png").write_text("no image")
    gt.save(resolve("resnet18"), tmp_path / "start.json")
    monkeypatch.chdir(tmp_path)
    base = {"name": "unreadable", "searcher": "dartopti", "dataset": "imagefolder", "image_size": 8, "epochs": 1,
            "batch_size": 4, "num_samples": 1, "max_concurrent": 1,
            "options": {"C": 2, "start": "start.json", "warmup_epochs": 0},  # 1 epoch: no warm-up
            "scheduler": {"type": "fifo"}, "storage": str(tmp_path / "runs"), "max_failures": 2,
            "resources": {"workers": workers}}
    with pytest.raises(ValueError, match=r"data_root: 'nowhere' does not exist"):
        run_sweep(StudyConfig(**base, data_root="nowhere"), mlflow=False)
    assert not (tmp_path / "runs").exists()
    result = run_sweep(StudyConfig(**base, data_root="imgs"), mlflow=False)
    stored = yaml.safe_load((Path(result.run_dir) / "study.yaml").read_text())
    assert stored["data_root"] == str(tmp_path / "imgs")  # as the command's folder names it: --resume from anywhere
    (trial,) = result.trials
    assert trial["status"] == "error" and result.counts["error"] == 1
    assert trial["error"].startswith(f"DataError: image folder: cannot read {str(tmp_path / 'imgs/train/b/z.png')!r}")
    (reports,) = [[json.loads(line) for line in p.read_text().splitlines()]
                  for p in Path(result.run_dir).glob("run_trial_*/result.json")]
    assert [r.get("input_error") for r in reports] == [1.0]  # one attempt: not retried
    if workers == 2:  # the run of both ranks ended by the one that read the file; Ray Train tried it once
        assert re.search(r"; remove or replace it \(rank [01]\)$", trial["error"]), trial["error"]
        return
    # where the trial ran, so that the study frees its placement group should Ray Train's own cleaner fail (it does
    # where two Ray instances share the machine: the group held its CPU and a later trial waited for it forever)
    assert reports[0]["placement_group_id"] and reports[0]["node_id"]


def test_under_asha_a_one_epoch_ablation_takes_its_final_trainings_objective_and_registers(ray_local, tmp_path):
    """ASHA (a study's default scheduler) stopped each trial at its last search epoch, so the report of the trial's
    final training never reached Tune: the objective of `objective.kind: final` stayed the supernet's, and the
    champion was chosen by it. With one epoch the final metrics also met the epoch's at step 0 in the trial's MLflow
    run, and registering the champion there failed after every trial had run."""
    from dartboard.platform.ablation import run_ablation

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # one trial at a time, the better second: each is ahead at the last epoch's rung, so both train after the search
    cfg = StudyConfig(name="final-asha", space="tiny81", epochs=1, batch_size=64, seeds=[0], sampler="grid",
                      max_concurrent=1, storage=str(tmp_path / "studies"), register_as="final-asha-champion",
                      variants=[{"name": "a-frozen", "searcher": "darts", "options": {"w_lr": 1e-6}},
                                {"name": "b-darts", "searcher": "darts"}],
                      final_training={"scope": "trial", "channels": 4, "layers": 2, "epochs": 1},
                      objective={"kind": "final"},
                      report={"metrics": ["test_error", "parameters"], "rank_metric": "test_error", "rank_mode": "min"})
    assert cfg.scheduler.type == "asha"
    summary = run_ablation(cfg, tracking_uri=uri)
    trials = summary["result"].trials
    assert [t["status"] for t in trials] == ["complete", "complete"]
    for t in trials:  # the final training's test accuracy, not the supernet's validation accuracy
        assert t["objective"] == t["metrics"]["test_acc"] and t["metrics"]["val_acc"] != t["objective"]
        # and Tune was told of it (its searcher, Optuna in a sweep, learns from that result): not stopped before
        (tune_results,) = Path(summary["run_dir"]).glob(f"run_trial_{t['trial_id']}/result.json")
        assert json.loads(tune_results.read_text().splitlines()[-1]).get("test_acc") == t["metrics"]["test_acc"]
    best = max(trials, key=lambda t: t["metrics"]["test_acc"])
    assert summary["result"].best["key"] == best["key"]
    from mlflow import MlflowClient

    version = MlflowClient(uri).get_model_version_by_alias("final-asha-champion", "champion")
    assert version.tags["trial"] == best["key"] and float(version.tags["metric.objective"]) == best["objective"]
