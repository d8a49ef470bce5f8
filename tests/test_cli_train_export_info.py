"""Flags of ``train``, ``export`` and ``info`` that the command would not use are refused by name (exit 2, one
line, nothing left behind), not ignored: the cell-network flags of an mlp genotype's training (NASiam heads),
MLflow's flags next to --no-mlflow, --lr-gamma without the step schedule, --cutout-length with cutout off,
--gpus-per-worker without Ray Train, a negative label smoothing, export's --network for a registered model and
--tracking-uri for a genotype (and a genotype that is no cell network), info's cell-network flags for an mlp
genotype or a PMSM flux model. An mlp genotype's training honours --json and logs to MLflow (its pretraining
replaced by a stub: no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_bad_input import refused_here

from dartboard.spaces import genotype as gt


@pytest.fixture
def no_work(monkeypatch):
    """A flag that is not refused would start the work: a training (or a registry pull) fails the test at once
    instead of running."""
    from dartboard.platform.cli import export, ssl, train

    def work(*args, **kwargs):
        raise AssertionError("not refused: the command went on to its work")

    for module, name in ((ssl, "train_heads"), (train, "_train_cells"), (export, "_registered"),
                         (export, "_from_files")):
        monkeypatch.setattr(module, name, work)


def heads(folder: Path) -> str:
    """An mlp genotype file (NASiam heads) in ``folder``; its name, relative to it."""
    gt.save(gt.MlpGenotype({"projector": ("linear_relu",), "predictor": ("linear_relu",)}, {"space": "nasiam-mlp"}),
            folder / "heads.json")
    return "heads.json"


# ------------------------------------------------------------------ train: an mlp genotype
@pytest.mark.parametrize("flags, named", [
    (["--layers", "3"], "--layers"),
    (["--lr-schedule", "step"], "--lr-schedule"),
    (["--lr-gamma", "0.9"], "--lr-gamma"),
    (["--auxiliary"], "--auxiliary"),
    (["--no-auxiliary"], "--no-auxiliary"),
    (["--drop-path", "0"], "--drop-path"),
    (["--cutout"], "--cutout"),
    (["--no-cutout"], "--no-cutout"),
    (["--cutout-length", "4"], "--cutout-length"),
    (["--label-smoothing", "0.1"], "--label-smoothing"),
    (["--precision", "bf16"], "--precision"),
    (["--grad-clip", "5"], "--grad-clip"),
    (["--register", "heads@prod"], "--register"),
    (["--json", "--layers", "3", "--precision", "bf16"], "drop --layers, --precision"),
])
def test_an_mlp_genotype_refuses_the_cell_network_flags_by_name(flags, named, no_work, tmp_path, capsys, monkeypatch):
    name = heads(tmp_path)
    # without --no-mlflow (--register would be refused by it): refused before the MLflow store is opened
    line = refused_here(["train", name, *flags], tmp_path, capsys, monkeypatch)
    assert line.startswith("error: genotype 'heads.json': an mlp genotype (NASiam heads)"), line
    assert line.endswith(named if named.startswith("drop") else f"drop {named}"), line


def fake_pretraining(calls: list):
    """A stand-in for train_heads: records its arguments, writes its two files, returns metrics (no training)."""
    def train_heads(geno, name, **options):
        calls.append(options)
        out = Path(options["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "ssl_weights.pt").write_bytes(b"weights")
        result = {"probe_acc": 0.5, "knn_acc": 0.25, "collapse_std": 0.125, "retrieval_map": 0.75,
                  "framework": "simsiam", "pretrain_loss": [-0.5, -0.75], "weights": str(out / "ssl_weights.pt")}
        (out / "ssl_metrics.json").write_text(json.dumps(result))
        return result

    return train_heads


def test_an_mlp_genotype_prints_json_with_json(tmp_path, capsys, monkeypatch):
    from dartboard.platform.cli import ssl
    from dartboard.platform.cli.main import main

    calls: list = []
    monkeypatch.setattr(ssl, "train_heads", fake_pretraining(calls))
    monkeypatch.chdir(tmp_path)
    name = heads(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["train", name, "--json", "--no-mlflow", "--channels", "4", "--epochs", "2", "--out", "run"])
    out = capsys.readouterr().out
    assert not done.value.code, out
    result = json.loads(out)  # stdout holds the JSON only
    assert (result["genotype"], result["kind"], result["dataset"]) == ("heads.json", "mlp", "digits")
    assert (result["knn_acc"], result["pretrain_loss"], result["weights"]) == (0.25, [-0.5, -0.75],
                                                                               str(Path("run") / "ssl_weights.pt"))
    assert calls == [{"framework": "simsiam", "channels": 4, "epochs": 2, "batch_size": None, "lr": 0.06,
                      "dataset": "digits", "data_root": None, "image_size": 32, "seed": 0,
                      "device": calls[0]["device"], "out": "run"}]


def test_an_mlp_genotype_logs_its_run_to_mlflow(tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    from dartboard.platform.cli import ssl
    from dartboard.platform.cli.main import main

    monkeypatch.setattr(ssl, "train_heads", fake_pretraining([]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = heads(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(SystemExit) as done:
        main(["train", name, "--tracking-uri", uri, "--out", "run"])
    assert not done.value.code, capsys.readouterr()
    assert "logged to MLflow run" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("dartboard").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    data = runs[0].data
    assert (data.metrics["knn_acc"], data.metrics["retrieval_map"]) == (0.25, 0.75)
    assert [m.value for m in client.get_metric_history(runs[0].info.run_id, "pretrain_loss")] == [-0.5, -0.75]
    assert (data.params["genotype"], data.params["framework"], data.params["kind"]) == ("heads.json", "simsiam",
                                                                                      "mlp")
    assert sorted(a.path for a in client.list_artifacts(runs[0].info.run_id)) == ["ssl_metrics.json",
                                                                                  "ssl_weights.pt"]


@pytest.mark.parametrize("flags, message", [
    (["--channels", "0"], "error: --channels: expected a positive integer, got 0"),  # 0 was the default (16)
    (["--dataset", "imagenet"], "error: --dataset: 'imagenet' has no two-view data"),
])
def test_an_mlp_genotype_refuses_before_its_run_is_opened(flags, message, no_work, tmp_path, capsys, monkeypatch):
    # no --no-mlflow: the MLflow store (mlflow.db) would be left behind if it were opened before the refusal
    line = refused_here(["train", heads(tmp_path), *flags], tmp_path, capsys, monkeypatch)
    assert line.startswith(message), line


# ------------------------------------------------------------------ train: a cell network
@pytest.mark.parametrize("args, message", [
    (["--no-mlflow", "--register", "net@prod"], "error: --no-mlflow: nothing is logged to MLflow or registered; "
                                                "drop --register"),
    (["--no-mlflow", "--tracking-uri", "sqlite:///mlflow.db"], "error: --no-mlflow: nothing is logged to MLflow or "
                                                               "registered; drop --tracking-uri"),
    (["--no-mlflow", "--label-smoothing", "-0.1"], "error: --label-smoothing: expected a value in [0, 1) (0 = off), "
                                                   "got -0.1"),
    (["--no-mlflow", "--lr-gamma", "0.5"], "error: --lr-gamma: 0.5 would be ignored by the 'cosine' learning-rate "
                                           "schedule (the cifar protocol's default on 'digits')"),
    (["--no-mlflow", "--protocol", "imagenet", "--lr-schedule", "cosine", "--lr-gamma", "0.5"],
     "error: --lr-gamma: 0.5 would be ignored by the 'cosine' learning-rate schedule (--lr-schedule cosine)"),
    (["--no-mlflow", "--cutout-length", "4"], "error: --cutout-length: 4 would be ignored: cutout is off (the cifar "
                                              "protocol's default on 'digits')"),
    (["--no-mlflow", "--dataset", "cifar10", "--no-cutout", "--cutout-length", "8"],
     "error: --cutout-length: 8 would be ignored: cutout is off (--no-cutout)"),
    (["--no-mlflow", "--gpus-per-worker", "1"], "error: --gpus-per-worker: 1.0 would be ignored; only for a Ray "
                                                "Train job (--workers > 1 or --address)"),
    (["--no-mlflow", "--gpus-per-worker", "0"], "error: --gpus-per-worker: 0.0 would be ignored"),
], ids=["register", "tracking-uri", "label-smoothing", "lr-gamma", "lr-gamma-imagenet-cosine", "cutout-length",
        "cutout-length-no-cutout", "gpus-per-worker", "gpus-per-worker-0"])
def test_train_refuses_the_flags_it_would_not_use(args, message, no_work, tmp_path, capsys, monkeypatch):
    line = refused_here(["train", "darts-v2", *args], tmp_path, capsys, monkeypatch)
    assert line.startswith(message), line


@pytest.mark.parametrize("protocol, dataset, given", [
    ("imagenet", "imagenet", {"lr_gamma": 0.9}),  # the imagenet protocol's step schedule uses it
    ("cifar", "digits", {"lr_schedule": "step", "lr_gamma": 0.9}),
    ("cifar", "cifar10", {"cutout_length": 8}),  # cutout is on by default on CIFAR (DARTS)
    ("cifar", "digits", {"cutout": True, "cutout_length": 4}),
    ("imagenet", "imagenet", {"cutout": True, "cutout_length": 16}),
])
def test_the_flags_the_effective_settings_use_are_not_refused(protocol, dataset, given):
    from dartboard.platform.cli.train_settings import check_used as _check_used
    from dartboard.platform.cli.train_settings import settings_of as _settings

    given = {"lr_schedule": None, "lr_gamma": None, "cutout": None, "cutout_length": None, **given}
    _check_used(_settings(protocol, dataset, given), given, "the defaults")  # raises nothing


def test_a_default_cutout_fits_small_images_and_one_that_blanks_them_is_refused(tmp_path, capsys, monkeypatch):
    """Cutout is on by default on image folders (DARTS' CIFAR protocol: a 16-px square on 32-px images). On 8-px
    images that square blanked every training image wherever it was centred: the network learnt nothing (a
    red-or-blue folder trained to 50 %, tested at 0 %). A default cutout takes half the images' side there; a given
    length that blanks them is refused."""
    from image_folders import write_image_folder
    from test_cli_contract import run_main

    write_image_folder(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    args = ["train", "darts-v2", "--dataset", "imagefolder", "--data-root", "imgs", "--image-size", "8", "--epochs",
            "1", "--channels", "2", "--layers", "2", "--batch-size", "4", "--no-mlflow", "--no-auxiliary"]
    code, out, err = run_main([*args, "--out", "net", "--json"], capsys)
    assert code == 0, err[-3000:]
    config = json.loads(out)["config"]
    assert config["cutout"] is True and config["cutout_length"] == 4
    line = refused_here([*args, "--out", "net2", "--cutout-length", "16"], tmp_path, capsys, monkeypatch)
    assert line == ("error: --cutout-length: a 16-px cutout square blanks the whole of every 8-px training image, "
                    "wherever it is centred; give at most 15 px (DARTS: 16 on CIFAR's 32-px images), or turn cutout "
                    "off")
    assert not (tmp_path / "net2").exists()


def test_a_training_whose_cutout_blanks_every_image_is_refused():
    """The same check where every training starts (a study's final training, Python), not only the command line."""
    from test_final_training import tiny_splits

    from dartboard.errors import UserInputError
    from dartboard.spaces.catalog import resolve
    from dartboard.training.final import TrainConfig, train_genotype

    cfg = TrainConfig(channels=2, layers=2, epochs=1, batch_size=8, cutout=True, cutout_length=16)
    with pytest.raises(UserInputError, match="cutout_length: a 16-px cutout square blanks the whole of every 8-px"):
        train_genotype(resolve("darts-v2"), tiny_splits(), cfg)


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("source, flags, message", [
    ("models:/final-darts-v2-digits/1", ["--network", "network.json"],
     "error: registered model 'models:/final-darts-v2-digits/1': its weights and network.json are exported from "
     "the registry, not from files; drop --network"),
    ("final-darts-v2-digits:3", ["--weights", "w.safetensors", "--network", "network.json"], "drop --weights, "
                                                                                            "--network"),
    ("darts-v2", ["--weights", "w.safetensors", "--tracking-uri", "sqlite:///mlflow.db"],
     "error: --tracking-uri: 'sqlite:///mlflow.db' would be ignored: 'darts-v2' is a genotype"),
], ids=["network-of-a-model", "name-version", "tracking-uri-of-a-genotype"])
def test_export_refuses_the_flags_of_the_other_source(source, flags, message, no_work, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    line = refused_here(["export", source, "--out", "net.onnx", "--format", "onnx", *flags], tmp_path, capsys,
                        monkeypatch)
    assert line.startswith(message) or line.endswith(message), line


@pytest.mark.parametrize("source", ["heads", "pmsm-thesis"])
def test_export_refuses_a_genotype_that_is_no_cell_network(source, no_work, tmp_path, capsys, monkeypatch):
    # before: "--network: 'network.json' does not exist ... (written by dartboard train)", which no training writes
    pytest.importorskip("onnx")
    name = heads(tmp_path) if source == "heads" else source
    (tmp_path / "w.pt").write_bytes(b"")
    line = refused_here(["export", name, "--weights", "w.pt", "--out", "net.onnx", "--format", "onnx"], tmp_path,
                        capsys, monkeypatch)
    if source == "heads":
        assert line == (f"error: genotype {name!r} is of kind 'mlp'; export takes the trained network of a darts, "
                        f"cells or colornas genotype"), line
    else:  # a flux model is exported from its trained model's folder or registered version (tests/test_pmsm_lookup.py)
        assert line == (f"error: genotype {name!r} is a PMSM flux model's; export its trained model: the folder "
                        f"`dartboard pmsm compare` wrote it to (OUT/models/NAME/seedN) or its registered version "
                        f"(pmsm-NAME)"), line


# ------------------------------------------------------------------ info
@pytest.mark.parametrize("genotype, flags, named", [
    ("pmsm-baseline", ["--channels", "0"], "drop --channels"),  # a value that does not apply is not checked
    ("pmsm-thesis", ["--layers", "3", "--dataset", "nope"], "drop --layers, --dataset"),
    ("pmsm-thesis", ["--auxiliary"], "drop --auxiliary"),
    ("pmsm-thesis", ["--no-auxiliary"], "drop --no-auxiliary"),
    ("heads", ["--channels", "16", "--dataset", "nope"], "drop --channels, --dataset"),
    ("heads", ["--layers", "8", "--auxiliary", "--json"], "drop --layers, --auxiliary"),
])
def test_info_refuses_the_cell_network_flags_for_a_network_of_its_own_size(genotype, flags, named, tmp_path, capsys,
                                                                           monkeypatch):
    name = heads(tmp_path) if genotype == "heads" else genotype
    line = refused_here(["info", name, *flags], tmp_path, capsys, monkeypatch)
    kind = "an mlp genotype" if genotype == "heads" else "a PMSM flux model"
    assert line.startswith(f"error: genotype {name!r}: {kind}") and line.endswith(named), line


def test_info_of_a_flux_model_without_flags(tmp_path, capsys, monkeypatch):
    from dartboard.platform.cli.main import main

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["info", "pmsm-thesis", "--json"])
    out = capsys.readouterr().out
    assert not done.value.code, out
    assert json.loads(out)["kind"] == "flux_mlp"
