"""Runs that would do nothing, silently. A user's own data can be small: wherever a loader drops its last partial
batch (a search's two halves, a Ray search's and a Ray training's shards, NASiam's pretraining, a PMSM flux model's
training), data smaller than one batch would give no step at all, and a network would come out untrained: refused as
the user's input, naming the part that is too small. A search whose warm-up takes every epoch takes no alpha step: its
genotype would be the initial alphas' (refused by `dartboard search` and a study's checks). And `dartboard train` of a
search's folder trains on the data the search ran on."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from dartboard.data.datasets import DatasetInfo, Splits
from dartboard.errors import UserInputError, is_user_error


def tensors(n: int, channels: int = 1, size: int = 8) -> TensorDataset:
    return TensorDataset(torch.randn(n, channels, size, size), torch.arange(n) % 2)


def local_search_halves():
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.run import search_loaders

    cfg = SearchRunConfig(batch_size=10, train_fraction=0.8, mlflow=False)
    search_loaders(cfg, Splits(tensors(40), tensors(4), DatasetInfo("t", 1, 8, 2)))  # halves of 32 and 8


def ray_search_shards():
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.ray.worker import sharded_loaders

    cfg = SearchRunConfig(batch_size=10, mlflow=False)  # 5 per rank; the parts of 10 and 8 give shards of 5 and 4
    sharded_loaders(cfg, Splits(tensors(18), tensors(4), DatasetInfo("t", 1, 8, 2)), 0, 2, 0.6)


def ray_training_shard():
    from dartboard.platform.ray.final_job import sharded_train_loader

    sharded_train_loader(tensors(14), 16, 0, 1, 2)  # 8 per rank, shards of 7


def ssl_pretraining():
    from dartboard.spaces.genotype import MlpGenotype
    from dartboard.training.ssl_eval import SslConfig, pretrain

    heads = MlpGenotype({"projector": ["linear_relu"], "predictor": ["linear_relu"]}, {})
    views = TensorDataset(torch.randn(5, 2, 1, 8, 8), torch.zeros(5))
    pretrain(heads, views, (1, 8), SslConfig(C=4, epochs=1, batch_size=8))


def flux_training():
    from dartboard.data.pmsm import PmsmSplits
    from dartboard.spaces.catalog import resolve
    from dartboard.training.pmsm import FluxTrainConfig, train_flux_model

    rows = TensorDataset(torch.randn(6, 6), torch.randn(6, 2))
    train_flux_model(resolve("pmsm-baseline"), PmsmSplits(rows, rows, DatasetInfo("pmsm", 6, 1, 2), val=rows),
                     FluxTrainConfig(epochs=1, batch_size=8))


def nasiam_derived_objective():
    from torch.utils.data import Subset

    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.ray.derived import _derived_knn
    from dartboard.spaces.genotype import MlpGenotype

    heads = MlpGenotype({"projector": ["linear_relu"], "predictor": ["linear_relu"]}, {})
    views = TensorDataset(torch.randn(20, 2, 1, 8, 8), torch.zeros(20))
    halves = (Subset(views, list(range(12))), Subset(views, list(range(12, 20))))
    cfg = SearchRunConfig(dataset="digits-views", mlflow=False)
    objective = {"train_channels": 4, "train_epochs": 1, "train_batch_size": 16}
    _derived_knn(heads, Splits(views, views, DatasetInfo("t", 1, 8, 10)), halves, objective, cfg,
                 torch.device("cpu"), "simsiam")


@pytest.mark.parametrize("run, message", [
    (local_search_halves, r"batch_size: 10 is larger than the search validation split \(8 samples\)"),
    (ray_search_shards, r"batch_size: 5 is larger than the search validation split's shard of one rank \(4 samples\)"),
    (ray_training_shard, r"batch_size: 8 is larger than the training split's shard of one rank \(7 samples\)"),
    (ssl_pretraining, r"batch_size: 8 is larger than the pretraining samples \(5 samples\)"),
    (flux_training, r"batch_size: 8 is larger than the training split \(6 samples\)"),
    (nasiam_derived_objective, r"objective.train_batch_size: 16 is larger than the pretraining samples \(the "
                               r"search-train half\) \(12 samples\)"),  # a study's key: the user's name for it
])
def test_data_smaller_than_a_batch_is_refused_where_the_last_batch_is_dropped(run, message):
    with pytest.raises(UserInputError, match=message) as refused:
        run()
    assert is_user_error(refused.value)  # a study's trial ends on it at once, with the message; a command: one line


def test_the_data_a_search_ran_on_is_the_data_its_network_trains_on():
    from dartboard.data.catalog import DATASETS, trained_on

    assert [trained_on(n) for n in ("digits-views", "digits-views-noaug", "imagefolder-views", "cifar10-views",
                                    "cifar10", "colour-digits", "imagefolder")] == \
        ["digits", "digits", "imagefolder", "cifar10", "cifar10", "colour-digits", "imagefolder"]
    assert all(trained_on(n) in DATASETS for n in DATASETS)


def test_train_of_a_search_folder_trains_on_the_searchs_own_data(tmp_path, capsys, monkeypatch, caplog):
    """`dartboard search --dataset imagefolder --data-root imgs` then `dartboard train runs/S` trained on digits."""
    import logging

    from image_folders import write_image_folder

    from dartboard.platform.cli.main import main
    from dartboard.spaces import genotype as gt
    from dartboard.spaces.published import darts_v2

    write_image_folder(tmp_path / "imgs", ("ants", "bees", "wasps"))
    search = tmp_path / "search"
    search.mkdir()
    gt.save(darts_v2(), search / "genotype.json")
    (search / "run.json").write_text(json.dumps({"searcher": "darts", "dataset": "imagefolder-views",
                                                 "data_root": str(tmp_path / "imgs"), "image_size": 8}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def train(*extra: str) -> dict:
        capsys.readouterr()
        with caplog.at_level(logging.INFO, logger="dartboard"), pytest.raises(SystemExit) as done:
            main(["train", str(search), "--epochs", "1", "--channels", "2", "--layers", "2", "--batch-size", "4",
                  "--no-mlflow", "--json", "--out", "net", *extra])
        said = capsys.readouterr()
        assert done.value.code == 0, said.err[-3000:]
        return json.loads(said.out)

    result = train()
    assert result["dataset"] == "imagefolder", result
    spec = json.loads((tmp_path / "elsewhere" / "net" / "network.json").read_text())
    assert spec["classes"] == ["ants", "bees", "wasps"] and spec["input_size"] == 8  # resized as it was searched
    assert any("the data the search ran on" in r.getMessage() and str(tmp_path / "imgs") in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    assert train("--dataset", "digits")["dataset"] == "digits"  # the flag decides
    assert not any("the data the search ran on" in r.getMessage() for r in caplog.records)


def test_a_search_on_an_image_folder_takes_its_image_size_as_a_flag(tmp_path, capsys, monkeypatch):
    """The size was a config file's key only (`--set image_size=8`: "unknown option"); a searcher's own option of a
    run setting's name (D-DARTS' seed of its ablation loss) stays the searcher's."""
    from image_folders import write_image_folder
    from test_cli_contract import run_main

    write_image_folder(tmp_path / "imgs", ("ants", "bees"), per_class=8, size=20)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["search", "--searcher", "ddarts", "--dataset", "imagefolder", "--data-root", "imgs",
                               "--image-size", "8", "--batch-size", "4", "--set", "epochs=1", "--set", "C=2",
                               "--set", "layers=3", "--set", "seed=3", "--no-mlflow", "--out", "s"], capsys)
    assert code == 0, err[-3000:]
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    assert run["image_size"] == 8 and run["batch_size"] == 4, run
    assert run["options"]["seed"] == 3, run


def test_ssl_pretraining_of_a_nasiam_search_folder_reads_its_images_at_the_searchs_size(tmp_path, capsys, monkeypatch):
    """A NASiam search on an image folder at 8 px, then `dartboard train` of its folder: the heads were pretrained
    on the images at 32 px (the size was fixed for mlp genotypes, and --image-size refused)."""
    import torch
    from image_folders import write_image_folder
    from test_cli_contract import run_main

    from dartboard.spaces import genotype as gt

    write_image_folder(tmp_path / "imgs", ("ants", "bees", "wasps"), per_class=6, size=20)
    search = tmp_path / "search"
    search.mkdir()
    gt.save(gt.MlpGenotype({"projector": ("linear_relu",), "predictor": ("linear_relu",)}, {"space": "nasiam-mlp"}),
            search / "genotype.json")
    (search / "run.json").write_text(json.dumps({"searcher": "nasiam", "dataset": "imagefolder-views",
                                                 "data_root": str(tmp_path / "imgs"), "image_size": 8}))
    monkeypatch.chdir(tmp_path)
    for extra, size in (((), 8), (("--image-size", "12"), 12)):
        code, out, err = run_main(["train", str(search), "--epochs", "1", "--channels", "2", "--batch-size", "4",
                                   "--no-mlflow", "--json", "--out", f"ssl{size}", *extra], capsys)
        assert code == 0, err[-3000:]
        saved = torch.load(tmp_path / f"ssl{size}" / "ssl_weights.pt", weights_only=True)
        assert (saved["dataset"], saved["input_size"], saved["in_channels"]) == ("imagefolder", size, 3)


def test_a_search_whose_warm_up_takes_every_epoch_is_refused(tmp_path, capsys, monkeypatch):
    """`dartboard search --searcher pmsm-depth --set epochs=3` (warm-up 5) derived its genotype from the initial
    alphas."""
    from test_cli_bad_input import refused_here

    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.space import dry_build
    from dartboard.searchers.registry import DataShape, build_searcher

    line = refused_here(["search", "--searcher", "pmsm-depth", "--set", "epochs=5", "--no-mlflow", "--out", "s"],
                        tmp_path, capsys, monkeypatch)
    assert "warmup_epochs: 5 warm-up epoch(s) (weights only) leave no search epoch of the 5 (epochs)" in line, line
    with pytest.raises(ValueError, match=r"variants.dartopti: .*warmup_epochs: 5 warm-up epoch\(s\) .* of the 3 "):
        dry_build(StudyConfig(name="s", searcher="dartopti", epochs=3, options={"C": 2}))
    dry_build(StudyConfig(name="s", searcher="dartopti", epochs=6, options={"C": 2}))
    # a searcher stepped by hand (tests, benchmarks) is no such search: it builds
    assert build_searcher("pc-darts", {"C": 4, "layers": 3, "epochs": 2}, DataShape(1, 8, 10)).epochs == 2


def test_a_search_whose_schedule_took_no_alpha_step_says_so(tmp_path, capsys, monkeypatch, caplog):
    """FIMT's schedule lets alpha steps run once the Fisher trace falls under its threshold: in a 1-epoch digits
    search it never did, and the genotype written was the initial alphas' parse, said nowhere."""
    import logging

    from test_cli_contract import run_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    words = "no alpha step in 1 epoch (arch_steps 0: the update schedule never let one run)"
    # a tiny supernet whose Fisher trace stays over a threshold of 1e-9 for the 20 steps of one epoch (the preset's
    # own supernet, C=16 and 8 cells, stays over the default threshold: the same case, in more time)
    tiny = ["--set", "C=2", "--set", "layers=3"]
    for searcher, size, said in (("darts+fimt", [*tiny, "--set", "schedule.threshold=1e-9"], True),
                                 ("darts", tiny, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dartboard"):
            code, _, err = run_main(["search", "--searcher", searcher, "--epochs", "1", *size, "--no-mlflow",
                                     "--out", searcher], capsys)
        assert code == 0, err[-3000:]
        assert (words in caplog.text) is said, caplog.text
        assert (tmp_path / searcher / "genotype.json").is_file()


def test_a_search_without_a_reduction_cell_warns_that_its_reduce_cell_is_not_searched(caplog):
    """Under 3 cells a DARTS supernet has no reduction cell: the reduce alphas get no gradient, and the genotype's
    reduction cell (which a final network of more cells uses) is their initial values'. Said, not refused: a tiny
    supernet is a legitimate quick test."""
    import logging

    from dartboard.data.catalog import load_dataset
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.run import make_searcher
    from dartboard.searchers.loop import unsearched_reduce_cell
    from dartboard.searchers.registry import DataShape, build_searcher

    def built(**options):
        return build_searcher("darts", {"C": 2, **options}, DataShape(1, 8, 10))

    assert unsearched_reduce_cell(built(layers=2)) and unsearched_reduce_cell(built(layers=1))
    assert not unsearched_reduce_cell(built(layers=3))
    assert not unsearched_reduce_cell(built(layers=2, reductions=[1]))
    assert not unsearched_reduce_cell(built(layers=2, grouping="per_cell"))  # no group named reduce
    splits = load_dataset("digits")
    with caplog.at_level(logging.WARNING, logger="dartboard"):
        make_searcher(SearchRunConfig(options={"C": 2, "layers": 3}, mlflow=False), splits)
        assert not caplog.records
        make_searcher(SearchRunConfig(options={"C": 2, "layers": 2}, mlflow=False), splits)
    assert "the supernet of 2 cell(s) has no reduction cell, so the reduce cell's alphas get no gradient" in caplog.text


def test_a_study_whose_supernet_has_no_reduction_cell_warns_once_per_variant(caplog):
    import logging

    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.runner import load_study
    from dartboard.platform.ray.space import dry_build

    with caplog.at_level(logging.WARNING, logger="dartboard"):
        dry_build(StudyConfig(name="s", searcher="darts", options={"C": 2, "layers": 3}))
        dry_build(load_study("digits"))  # the quickstart's study: 3 or 4 cells drawn
        assert not caplog.records
        dry_build(StudyConfig(name="s", variants=[{"name": "tiny", "searcher": "darts", "options": {"layers": 2}},
                                                  {"name": "ok", "searcher": "darts"}], options={"C": 2},
                              params={"arch_lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}))
    (record,) = caplog.records
    assert record.getMessage().startswith("study: the supernet of variant(s) tiny has no reduction cell")


def test_a_study_whose_trials_would_train_a_genotype_no_study_trains_is_refused_before_them():
    """A PMSM study with the objective 'derived' and a DARIO study with a final training ran every trial's whole
    search, then failed each one ("kind: a 'flux_mlp' genotype is not a cell network") or the champion's training."""
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.space import dry_build

    dario = {"searcher": "dario", "epochs": 3, "options": {"pretrain_epochs": 1, "model_kwargs": {
        "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2}}}
    with pytest.raises(ValueError, match=r"variants.pmsm-depth: objective 'derived' trains the derived network "
                                         r"briefly, and its genotype is a 'flux_mlp' genotype"):
        dry_build(StudyConfig(name="s", searcher="pmsm-depth", dataset="pmsm", epochs=7, objective={"kind": "derived"}))
    with pytest.raises(ValueError, match=r"variants.dario: final_training trains a cell network from scratch, and "
                                         r"its genotype is a 'gates' genotype"):
        dry_build(StudyConfig(name="s", **dario, final_training={"scope": "champion"}))
    with pytest.raises(ValueError, match=r"variants.nasiam-simsiam: final_training .* a 'mlp' genotype"):
        dry_build(StudyConfig(name="s", searcher="nasiam-simsiam", epochs=2, options={"C": 4},
                              final_training={"scope": "trial"}, objective={"kind": "final"}))
    # what the trials can train passes: the supernet objective of PMSM, the derived one of DARIO and NASiam
    dry_build(StudyConfig(name="s", searcher="pmsm-depth", dataset="pmsm", epochs=7))
    dry_build(StudyConfig(name="s", **dario, objective={"kind": "derived"}))
    dry_build(StudyConfig(name="s", searcher="nasiam-simsiam", epochs=2, options={"C": 4},
                          objective={"kind": "derived"}))
