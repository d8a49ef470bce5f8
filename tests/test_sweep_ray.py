"""A real sweep on a local Ray cluster: a diverging trial ends as errored with its reason, is not
retried, and the sweep goes on; the plug-in hooks see every finished trial and the best. The study
searches the tabular tiny81 space, so each trial's report carries its derived genotype's looked-up
regret (what the tracker logs to MLflow)."""

from __future__ import annotations

import pytest

from dartboard.bench.regret import lookup_metrics
from dartboard.bench.table import load_table
from dartboard.platform.config import SweepConfig
from dartboard.platform.sweep import make_search_alg
from dartboard.spaces import genotype as gt

pytestmark = pytest.mark.ray

DIVERGING_LR = 1e12  # with momentum 0 the first weight step blows the supernet up: NaN loss in epoch 1


def _seed_proposing_both(base: dict) -> int:
    """The first TPE seed whose first two (random start-up) proposals differ in w_lr."""
    for seed in range(50):
        alg = make_search_alg(SweepConfig(**base, seed=seed))
        if alg.suggest("a")["w_lr"] != alg.suggest("b")["w_lr"]:
            return seed
    raise AssertionError("no seed proposes both learning rates")


def test_nan_trial_is_errored_and_the_sweep_goes_on(ray_local, tmp_path):
    from dartboard.platform.sweep import run_sweep

    base = {"name": "nan", "searcher": "darts", "space": "tiny81", "epochs": 1, "batch_size": 64, "num_samples": 2,
            "max_concurrent": 2, "options": {"w_momentum": 0.0},
            "params": {"w_lr": {"type": "choice", "values": [0.025, DIVERGING_LR]}},
            "scheduler": {"type": "fifo"}, "storage": str(tmp_path), "max_failures": 2}
    cfg = SweepConfig(**base, seed=_seed_proposing_both(base))
    events = []
    result = run_sweep(cfg, callbacks=[lambda kind, payload: events.append((kind, payload))])
    by_lr = {t["config"]["w_lr"]: t for t in result.trials}
    assert set(by_lr) == {0.025, DIVERGING_LR}
    bad, good = by_lr[DIVERGING_LR], by_lr[0.025]
    assert bad["status"] == "error" and "train_loss became nan in epoch 1" in bad["error"]
    assert good["status"] == "complete" and good["epoch"] == 1 and 0.0 < good["objective"] <= 1.0
    assert result.best["trial_id"] == good["trial_id"] and result.counts == {"complete": 1, "pruned": 0, "error": 1}
    looked_up = lookup_metrics(load_table(), gt.from_dict(good["genotype"]))
    assert looked_up["tiny81_on_table"] == 1.0
    assert {k: good["metrics"][k] for k in looked_up} == pytest.approx(looked_up)
    kinds = [k for k, _ in events]
    assert kinds.count("trial") == 2 and kinds[-1] == "study"
    errored = [p for k, p in events if k == "trial" and p["status"] == "error"]
    assert len(errored) == 1 and "nan" in errored[0]["error"]
    assert events[-1][1]["best"]["trial_id"] == good["trial_id"]
    # not retried: one Train run per trial, the diverged one ended at its first report
    runs = sorted(p.name for p in (tmp_path.glob("nan-*/trials/*")))
    assert len(runs) == 2
