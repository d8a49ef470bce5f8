"""DARIO's outer hyperparameters swept as a study on a real local Ray instance, through the one study
runner: the bundled `dario-outer` study (threshold, gamma, proxy, granularity) with 2 trials and its
budget scaled down. Each trial's sampled values reach the gate search (its genotype records them), and
its objective is the pruned ViT's accuracy on the val half after fine-tuning its last block and head,
recomputed here from the trial's last checkpoint; the champion registered is the fine-tuned pruned ViT
the best trial scored (its gates genotype, weights and network.json: evaluated as any trained network).
Without Ray: the searcher spreads Algorithm 5's iterations over its search epochs as documented, resumes
its pre-training bit-identically from a checkpoint, and refuses bad options by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dartboard.data.catalog import load_dataset
from dartboard.data.datasets import make_loader
from dartboard.searchers.base import seed_everything, set_rng_state
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces import genotype as gt
from dartboard.training.checkpoint import load_state, save_state

SHAPE = DataShape(1, 8, 10)
TINY = {"model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 3, "num_heads": 2}, "warmup_samples": 2}


def run_epochs(searcher, n: int, seed: int) -> list[dict[str, float]]:
    train = load_dataset("digits").train
    loader = make_loader(torch.utils.data.Subset(train, range(96)), 32, shuffle=True, seed=seed)
    out = []
    for _ in range(n):
        for x, y in loader:
            searcher.step((x, y), (x, y))
        out.append(searcher.end_epoch())
    return out


def test_the_iterations_are_spread_over_the_search_epochs_after_pretraining():
    searcher = build_searcher("dario", {**TINY, "epochs": 4, "pretrain_epochs": 1, "iterations": 7}, SHAPE)
    run_epochs(searcher, 1, 0)
    assert searcher.dario is None and searcher.derive().blocks_kept == (0, 1, 2)  # nothing searched yet
    steps = []
    for _ in range(3):
        run_epochs(searcher, 1, 0)
        steps.append(len(searcher.dario.history))  # one proxy value per Algorithm-5 iteration
    assert steps == [2, 4, 7]  # 7 * (j + 1) // 3 after search epoch j: shares 2, 2, 3
    # the alpha pictures' weights per block: (keep, prune) = (gate, 1 - gate); 0.5 before the search
    assert searcher.history[0]["weights"] == [[[0.5, 0.5]] * 3]
    gates = torch.sigmoid(searcher.dario.alpha["block"]).tolist()
    assert searcher.history[-1]["weights"] == [[[pytest.approx(g), pytest.approx(1 - g)] for g in gates]]


def test_a_resumed_dario_searcher_continues_its_pretraining_bit_identically(tmp_path):
    options = {**TINY, "epochs": 3, "pretrain_epochs": 2, "iterations": 2}
    seed_everything(0)
    a = build_searcher("dario", options, SHAPE)
    run_epochs(a, 1, 0)
    save_state(a.state_dict(), tmp_path / "searcher.pt")
    set_rng_state(load_state(tmp_path / "searcher.pt")["rng"])
    after_a = run_epochs(a, 2, 1)
    seed_everything(123)
    b = build_searcher("dario", options, SHAPE)
    b.load_state_dict(load_state(tmp_path / "searcher.pt"))
    assert run_epochs(b, 2, 1) == after_a
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(),
                                                  strict=True))
    assert a.derive() == b.derive()


def test_the_run_seeds_the_vit_and_the_gates_unless_the_options_name_a_seed():
    # Before: the option's default seed 0 re-seeded torch, so every --seed (and every seed of a study) built the same
    # ViT and drew the same gates.
    def built(run_seed, **options):
        seed_everything(run_seed)
        searcher = build_searcher("dario", {**TINY, **options}, SHAPE)
        return searcher.seed, searcher.config.seed, next(iter(searcher.model.parameters())).detach().clone()

    one, two = built(1), built(2)
    assert (one[0], one[1], two[0], two[1]) == (1, 1, 2, 2) and not torch.equal(one[2], two[2])
    assert torch.equal(built(1)[2], one[2])
    pinned_one, pinned_two = built(1, seed=7), built(2, seed=7)
    assert pinned_one[:2] == pinned_two[:2] == (7, 7) and torch.equal(pinned_one[2], pinned_two[2])


@pytest.mark.parametrize("options, message", [
    ({"epochs": 3, "pretrain_epochs": 3}, "pretrain_epochs: expected 0 <= pretrain_epochs < epochs"),
    ({"temperature": 1.0}, "temperature: not a DARIO option"),
    ({"proxy": "l0_norm"}, "proxy: 'l0_norm' is piecewise constant"),
    ({"threshold": 1.5}, "threshold: expected a value in"),
    ({"iterations": 2.7}, "iterations: expected an integer >= 0, got 2.7"),  # was: 2 iterations
    ({"epochs": 0}, "epochs: expected an integer >= 1, got 0"),  # was: an error naming pretrain_epochs
    ({"search_lr": -1.0}, "search_lr: expected a number > 0, got -1.0"),
    ({"pretrain_lr": float("nan")}, "pretrain_lr: expected a number > 0, got nan"),
    ({"gamma": 0.0}, "gamma: expected a number > 0, got 0.0"),
])
def test_bad_dario_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=f"searcher 'dario': {message}"):
        build_searcher("dario", {**TINY, **options}, SHAPE)


@pytest.mark.ray
def test_the_dario_outer_study_sweeps_two_trials_on_ray(ray_local, tmp_path):
    from dartboard.data.datasets import search_split
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.predict import evaluate_model
    from dartboard.platform.ray.checkpoint import STATE_FILE
    from dartboard.platform.ray.derived import finetuned_accuracy
    from dartboard.platform.ray.runner import load_study
    from dartboard.platform.ray.space import trial_run_config
    from dartboard.platform.sweep import run_sweep
    from dartboard.platform.tracking import runs
    from dartboard.platform.tracking.models import load, pull_model
    from dartboard.spaces.vit import count_parameters
    from dartboard.training.vit_finetune import evaluate

    shipped = load_study("dario-outer")
    cfg = load_study("dario-outer", {"num_samples": 2, "epochs": 4, "storage": str(tmp_path / "studies"),
                                     "options": {**shipped.options, "pretrain_epochs": 2, "iterations": 6,
                                                 "warmup_samples": 4}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep(cfg, tracking_uri=uri)
    assert result.counts == {"complete": 2, "pruned": 0, "error": 0}, result.trials
    halves = search_split(load_dataset("digits").train, cfg.seed, 0.5)
    for trial in result.trials:
        config, genotype = trial["config"], gt.from_dict(trial["genotype"])
        assert set(config) == {"threshold", "gamma", "proxy", "granularity"}
        assert genotype.kind == "gates" and trial["epoch"] == 4
        # the sampled values are the ones the gate search ran with
        assert genotype.meta["threshold"] == config["threshold"] and genotype.meta["proxy"] == config["proxy"]
        assert genotype.meta["granularity"] == config["granularity"]
        assert genotype.meta["config"]["model_lr"] == config["gamma"]
        assert trial["objective"] == trial["metrics"]["derived_acc"]
        run = SearchRunConfig(**trial_run_config(cfg, config))
        searcher = build_searcher("dario", run.searcher_options(), SHAPE)
        searcher.load_state_dict(load_state(Path(trial["checkpoint"]) / STATE_FILE))
        assert searcher.derive() == genotype
        expected = finetuned_accuracy(searcher, genotype, halves, cfg.objective.train_epochs,
                                      cfg.objective.train_batch_size, run.seed)
        assert trial["objective"] == pytest.approx(expected, abs=0.01)  # one Ray worker thread vs. this process
    assert result.best["objective"] == max(t["objective"] for t in result.trials)
    version = runs.client(uri).get_model_version_by_alias("dario-outer", "champion")
    assert version.tags["searcher"] == "dario"
    # the champion is the fine-tuned pruned ViT the best trial scored (before: its gates genotype alone, which
    # `evaluate`, `predict`, `export` and `info` refused as "no trained network")
    assert version.tags["dartboard.kind"] == "network"
    folder, _ = pull_model(uri, "dario-outer@champion", tmp_path / "pulled")
    network = json.loads((folder / "network.json").read_text())
    assert network["kind"] == "pruned-vit" and network["dataset"] == "digits" and network["input_size"] == 8
    vit = load(str(folder))
    assert gt.load(folder / "genotype.json") == gt.from_dict(result.best["genotype"])
    accuracy = evaluate(vit, make_loader(halves[1], 256, shuffle=False, seed=0)) / 100.0
    assert accuracy == pytest.approx(result.best["objective"], abs=0.01)
    evaluated = evaluate_model("dario-outer@champion", uri)
    assert evaluated["test_acc"] == pytest.approx(network["test_acc"], abs=1e-6)
    assert evaluated["recorded_test_acc"] == network["test_acc"]
    # its sizes, as a pruned ViT of `dartboard prune` records them (before: none)
    original = count_parameters(build_searcher("dario", run.searcher_options(), SHAPE).model)
    assert int(version.tags["params_original"]) == original and result.best["metrics"]["params_original"] == original
    assert int(version.tags["params_pruned"]) == count_parameters(vit) == result.best["metrics"]["parameters"]
    assert version.tags["metric.parameters"] == str(float(count_parameters(vit))) and count_parameters(vit) < original
    assert version.tags["blocks_kept"] == ",".join(map(str, gt.load(folder / "genotype.json").blocks_kept))
