"""The PMSM depth search is sweepable like every other search: the bundled study `pmsm-depth`
runs through the platform's study runner on one Ray worker; the trial's objective is minus the
supernet's validation criterion C and its genotype a flux_mlp."""

from __future__ import annotations

import math

import pytest

from dartboard.spaces import genotype as gt
from dartboard.spaces.pmsm_genotype import FluxMlpGenotype

pytestmark = pytest.mark.ray


def test_pmsm_depth_study_runs_on_one_worker(ray_local, tmp_path):
    from dartboard.platform.ray.runner import load_study
    from dartboard.platform.sweep import run_sweep

    cfg = load_study("pmsm-depth", {"num_samples": 1, "epochs": 2, "max_concurrent": 1, "storage": str(tmp_path),
                                     "options": {"warmup_epochs": 1, "layers": 2}})
    result = run_sweep(cfg, mlflow=False)
    assert result.counts == {"complete": 1, "pruned": 0, "error": 0}
    trial = result.best
    assert trial["epoch"] == 2 and math.isfinite(trial["objective"]) and trial["objective"] < 0
    assert trial["objective"] == pytest.approx(-trial["metrics"]["val_loss"])
    genotype = gt.from_dict(trial["genotype"])
    assert isinstance(genotype, FluxMlpGenotype) and 1 <= genotype.hidden_layers <= 3
