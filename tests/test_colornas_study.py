"""A ColorNAS preset through the study runner (Ray Train trial, final training, ablation table): the
shipped comparison study, scaled down to one trial of one epoch; the space option ``cell_space`` is
a study parameter (an option path into the preset's ``space_options``), the variant's ``yellow`` an
alias on top of it."""

from __future__ import annotations

import pytest

from dartboard.platform.ablation import load_study, run_ablation
from dartboard.spaces import genotype as gt
from dartboard.spaces.colour_genotype import ColourGenotype

pytestmark = pytest.mark.ray


def test_a_colornas_preset_runs_through_the_study_runner(ray_local, tmp_path):
    cfg = load_study("colornas-comparison", {
        "seeds": [0], "epochs": 1, "storage": str(tmp_path), "max_concurrent": 1,
        "variants": [{"name": "RGBY-min", "searcher": "colornas-rgby", "options": {"yellow": "min"}}],
        "options": {"C": 2, "layers": 3, "steps": 1, "multiplier": 1},
        "params": {"space_options.cell_space": {"type": "choice", "values": ["tiny81"]}},
        "final_training": {"scope": "trial", "channels": 2, "layers": 3, "epochs": 1}})
    summary = run_ablation(cfg, mlflow=False)
    (trial,) = summary["result"].trials
    assert trial["status"] == "complete" and trial["variant"] == "RGBY-min"
    geno = gt.from_dict(trial["genotype"])
    assert isinstance(geno, ColourGenotype) and geno.colour_model == "rgby" and geno.yellow == "min"
    assert all(ch.normal.n_nodes == 1 for ch in geno.channels)  # the swept cell space: tiny81 (one node)
    m = trial["metrics"]
    assert 0.0 <= m["test_acc"] <= 1.0 and m["parameters"] > 0 and m["search_seconds"] > 0
    assert "RGBY-min" in summary["table_md"].read_text()
