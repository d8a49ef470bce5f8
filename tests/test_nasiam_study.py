"""NASiam on the study runner: the derived objective of ``mlp`` heads (kNN after a short SSL
pretraining, on the search's own halves), the preset's data as the study's default, the shipped
study, and a real Ray sweep whose champion ``mlp`` genotype is registered and pulled back."""

from __future__ import annotations

import pytest
import torch

from dartboard.data.catalog import load_dataset
from dartboard.data.datasets import search_split
from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.runner import load_study
from dartboard.platform.ray.space import validate_study
from dartboard.spaces import genotype as gt
from dartboard.training import ssl_eval as E

HEADS = gt.MlpGenotype({"projector": ("linear_relu", "identity"), "predictor": ("linear_relu",)})
OBJECTIVE = {"kind": "derived", "train_epochs": 1, "train_channels": 4, "train_layers": 1, "train_batch_size": 64}


class _Run:
    dataset, data_root, image_size, seed = "digits-views", None, 32, 3


class _Searcher:
    class objective:  # noqa: N801  (the engine's part, by its name)
        name = "simsiam"


def test_a_nasiam_study_trains_on_the_presets_two_view_data_by_default():
    assert StudyConfig(searcher="nasiam-simsiam").dataset == "digits-views"
    assert StudyConfig(searcher="darts").dataset == "digits"
    with pytest.raises(ValueError, match="different data .*nasiam-moco: digits-views, darts: digits"):
        StudyConfig(searcher=["nasiam-moco", "darts"])


def test_the_derived_objective_of_heads_is_knn_on_the_search_halves_never_the_test_split(monkeypatch):
    from dartboard.platform.ray import derived

    views = load_dataset("digits-views")
    halves = search_split(views.train, _Run.seed, 0.5)
    score = derived.derived_accuracy(HEADS, views, halves, OBJECTIVE, _Run, torch.device("cpu"), 0, _Searcher)

    # the same pretraining and kNN by hand, on the halves' samples: fit on the first, score on the second
    cfg = E.SslConfig(framework="simsiam", C=4, epochs=1, batch_size=64, seed=_Run.seed)
    plain = load_dataset("digits")
    net, _ = E.pretrain(HEADS, torch.utils.data.Subset(views.train, halves[0].indices), (1, 8), cfg)
    fit_f, fit_y = E.embed(net.backbone, torch.utils.data.Subset(plain.train, halves[0].indices))
    held_f, held_y = E.embed(net.backbone, torch.utils.data.Subset(plain.train, halves[1].indices))
    assert score == pytest.approx(E.knn_accuracy(fit_f, fit_y, held_f, held_y), abs=1e-12)
    assert 0.1 < score <= 1.0  # a 1-epoch SimSiam backbone is far above chance on digits

    # the test split is never read: a test set that fails on access does not change the score
    class Poisoned(torch.utils.data.Dataset):
        def __len__(self):
            return len(plain.test)

        def __getitem__(self, i):
            raise AssertionError("the derived objective read the test split")

    real = load_dataset

    def poisoned(name, *args, **kwargs):
        splits = real(name, *args, **kwargs)
        return type(splits)(splits.train, Poisoned(), splits.info)

    monkeypatch.setattr("dartboard.data.catalog.load_dataset", poisoned)
    views_poisoned = poisoned("digits-views")
    again = derived.derived_accuracy(HEADS, views_poisoned, halves, OBJECTIVE, _Run, torch.device("cpu"), 0,
                                     _Searcher)
    assert again == score


def test_views_and_plain_data_must_be_the_same_samples():
    views, plain = load_dataset("digits-views"), load_dataset("digits")
    with pytest.raises(ValueError, match="views and plain data differ in size"):
        E.pretrain_and_evaluate(HEADS, views.train, plain.test, [0], [1], (1, 8), E.SslConfig(epochs=1))


def test_the_shipped_nasiam_study_is_valid():
    cfg = load_study("nasiam-simsiam")
    validate_study(cfg)
    assert cfg.dataset == "digits-views" and cfg.objective.kind == "derived" and cfg.scheduler.type == "fifo"
    assert set(cfg.params) == {"arch_lr", "w_lr"}


@pytest.mark.ray
def test_a_nasiam_sweep_on_ray_registers_its_champion_heads(ray_local, tmp_path, monkeypatch):
    """Two SimSiam trials (Ray Tune + Train), each scored by the kNN objective; the best trial's mlp
    genotype is registered (sqlite MLflow) and `dartboard pull` gives it back."""
    from dartboard.platform.cli import main as cli_main
    from dartboard.platform.sweep import run_sweep
    from dartboard.platform.tracking import runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = StudyConfig(name="nasiam-tiny", searcher="nasiam-simsiam", epochs=1, num_samples=2, max_concurrent=2,
                      batch_size=64, options={"C": 4, "projector_layers": 2, "predictor_layers": 1},
                      params={"arch_lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2}},
                      objective=OBJECTIVE, scheduler={"type": "fifo"}, storage=str(tmp_path / "studies"))
    validate_study(cfg)
    result = run_sweep(cfg, tracking_uri=uri)
    assert result.counts["complete"] == 2, result.trials
    for trial in result.trials:
        assert trial["objective"] == trial["metrics"]["derived_acc"] and 0.1 < trial["objective"] <= 1.0
        assert trial["metrics"]["replicas_identical"] == 1.0
        assert gt.from_dict(trial["genotype"]).kind == "mlp"
    assert result.best["objective"] == max(t["objective"] for t in result.trials)

    version = runs.client(uri).get_model_version_by_alias("nasiam-tiny", "champion")
    assert version.tags["dataset"] == "digits-views" and version.tags["searcher"] == "nasiam-simsiam"
    monkeypatch.chdir(tmp_path)
    try:
        cli_main(["pull", "nasiam-tiny@champion", "--to", "pulled", "--tracking-uri", uri])
    except SystemExit as exit_:
        assert not exit_.code
    pulled = gt.load(tmp_path / "pulled" / "genotype.json")
    assert pulled == gt.from_dict(result.best["genotype"]) and pulled.kind == "mlp"
