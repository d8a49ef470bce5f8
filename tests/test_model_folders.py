"""`dartboard predict`, `evaluate` and `export` of a folder holding a trained network (what `dartboard train` and
`dartboard pull --to` write), read as it is, without a registry: the same classes, accuracy and exported outputs as
the network rebuilt in Python; a folder that is not one is refused by name. The registry side is in
test_model_use.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from image_folders import write_image_folder
from test_cli_bad_input import refused_here
from test_cli_contract import run_main

from dartboard.data.catalog import load_dataset
from dartboard.platform.tracking import models
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """darts-v2 trained 3 epochs on digits (C=4, 2 cells), its files as `dartboard train` writes them."""
    from dartboard.training.final import TrainConfig, train_genotype

    out = tmp_path_factory.mktemp("folder") / "model"
    splits = load_dataset("digits")
    tcfg = TrainConfig(channels=4, layers=2, epochs=3, batch_size=64, lr=0.05, seed=0)
    result = train_genotype(resolve("darts-v2"), splits, tcfg, out)
    (out / models.NETWORK_FILE).write_text(json.dumps(models.network_spec(tcfg, splits.info, "digits")))
    net = models.build_from_files({"genotype": out / "genotype.json", "network": out / "network.json",
                                   "weights": out / "weights.safetensors"})
    return {"out": out, "test_acc": result.test_acc, "test_loss": result.test_loss, "net": net, "splits": splits}


def _test_files(trained, folder, n):
    """The first ``n`` test images as NPY files, and those images as the network's inputs."""
    images = trained["splits"].test.tensors[0][:n]
    files = []
    for i in range(n):  # the test tensors, undone to [0, 1] pixels: the model's own preprocessing must redo it
        pre = json.loads((trained["out"] / "network.json").read_text())["preprocessing"]
        unit = images[i, 0].numpy() * pre["std"][0] + pre["mean"][0]
        np.save(folder / f"d{i}.npy", np.clip(unit, 0.0, 1.0).astype(np.float32))
        files.append(str(folder / f"d{i}.npy"))
    return files, images


def test_predict_of_a_folder_gives_the_networks_classes(trained, tmp_path, capsys):
    files, images = _test_files(trained, tmp_path, 30)
    with torch.no_grad():
        expected = trained["net"](images).argmax(1).tolist()
    assert len(set(expected)) >= 5, "a network that predicts few classes would make this test weak"
    code, out, err = run_main(["predict", str(trained["out"]), *files, "--json"], capsys)
    assert code == 0, err[-3000:]
    assert [r["class"] for r in json.loads(out)] == expected


def test_predict_reads_and_classifies_many_files_a_batch_at_a_time(trained, tmp_path, capsys, monkeypatch):
    """A shell glob of thousands of files is not one forward: at most PREDICT_BATCH images are read and classified
    at once, with the probabilities of one batch (eval mode)."""
    from dartboard.data import preprocess
    from dartboard.platform import predict

    files, images = _test_files(trained, tmp_path, 30)
    with torch.no_grad():
        expected = torch.softmax(trained["net"](images), dim=1)
    read, load_inputs = [], preprocess.load_inputs
    monkeypatch.setattr(preprocess, "load_inputs", lambda paths, p: read.append(len(paths)) or load_inputs(paths, p))
    monkeypatch.setattr(predict, "PREDICT_BATCH", 8)
    code, out, err = run_main(["predict", str(trained["out"]), *files, "--json"], capsys)
    assert code == 0, err[-3000:]
    assert read == [8, 8, 8, 6]
    rows = json.loads(out)
    assert [r["file"] for r in rows] == files
    assert torch.tensor([r["probabilities"] for r in rows]) == pytest.approx(expected, abs=2e-6)


def test_evaluate_of_a_folder_reports_its_accuracy_and_the_recorded_one(trained, capsys):
    code, out, err = run_main(["evaluate", str(trained["out"]), "--json"], capsys)
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["model"] == str(trained["out"]) and report["version"] is None
    assert report["dataset"] == "digits" and report["test_samples"] == 360
    assert report["test_acc"] == pytest.approx(trained["test_acc"], abs=1e-9)
    assert report["recorded_test_acc"] == pytest.approx(trained["test_acc"])  # from train.json
    assert report["registered_test_acc"] is None
    code, text, err = run_main(["evaluate", str(trained["out"])], capsys)
    assert code == 0, err[-3000:]
    assert text.splitlines()[0] == f"{trained['out']} on the digits test split (360 images)"
    assert f"recorded test_acc {trained['test_acc']:.4f}" in text


def test_a_pulled_folder_reports_the_registered_accuracy(trained, tmp_path):
    from dartboard.platform.predict import local_network

    folder = tmp_path / "pulled"
    folder.mkdir()
    for name in ("genotype.json", "network.json", "weights.safetensors"):
        (folder / name).write_bytes((trained["out"] / name).read_bytes())
    assert local_network(str(folder)).recorded_test_acc is None  # nothing records one
    (folder / "model.json").write_text(json.dumps({"name": "m", "version": "3", "tags": {"metric.test_acc": "0.5"}}))
    (folder / "train.json").write_text(json.dumps({"test_acc": 0.25}))
    assert local_network(str(folder)).recorded_test_acc == 0.5  # the version's tag first
    # the pulled network trained again in place: the version's record no longer describes these weights
    from dartboard.training.final import sha256_file

    digest = sha256_file(folder / "weights.safetensors")
    (folder / "model.json").write_text(json.dumps({"name": "m", "version": "3", "tags": {
        "metric.test_acc": "0.5", "sha256.weights.safetensors": "0" * 64}}))
    (folder / "train.json").write_text(json.dumps({"test_acc": 0.25, "weights_sha256": digest}))
    assert local_network(str(folder)).recorded_test_acc == 0.25
    (folder / "train.json").write_text(json.dumps({"test_acc": 0.25, "weights_sha256": "1" * 64}))
    assert local_network(str(folder)).recorded_test_acc is None  # neither record is of these weights


def test_export_of_a_folder(trained, tmp_path, capsys):
    code, out, err = run_main(["export", str(trained["out"]), "--format", "torchscript", "--out",
                               str(tmp_path / "m.pt")], capsys)
    assert code == 0, err[-3000:]
    # the file holds the network only: what its input must be is said (the normalisation network.json records)
    pre = json.loads((trained["out"] / "network.json").read_text())["preprocessing"]
    assert out.splitlines()[-1] == (f"input: images [N, 1, 8, 8], pixels in [0, 1] normalised per channel, "
                                    f"(x - mean) / std with mean {pre['mean']} and std {pre['std']} (network.json's "
                                    f"preprocessing, which dartboard predict applies); output: logits [N, 10]")
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = trained["splits"].test.tensors[0][:4]
    with torch.no_grad():
        assert torch.allclose(loaded(x), trained["net"](x), atol=1e-5)


def test_export_takes_the_format_its_out_names(trained, tmp_path, capsys, monkeypatch):
    # Before: `dartboard export DIR --out model.ts` was "Missing option '--format'" whatever the extension said.
    code, out, err = run_main(["export", str(trained["out"]), "--out", str(tmp_path / "m.ts")], capsys)
    assert code == 0 and out.startswith("torchscript written to"), err[-3000:]
    x = trained["splits"].test.tensors[0][:4]
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "m.ts"))(x), trained["net"](x), atol=1e-5)
    from dartboard.platform.export import format_of

    assert [format_of(f"m{s}", None) for s in (".onnx", ".ONNX", ".pt", ".torchscript", ".pt2")] == \
        ["onnx", "onnx", "torchscript", "torchscript", "pt2"]
    assert format_of("m.onnx", "pt2") == "pt2"  # --format wins
    (tmp_path / "model").mkdir()
    for name in ("genotype.json", "network.json", "weights.safetensors"):
        (tmp_path / "model" / name).write_bytes((trained["out"] / name).read_bytes())
    line = refused_here(["export", "model", "--out", "m.bin"], tmp_path, capsys, monkeypatch)
    assert line == ("error: --format: not given, and the extension of --out 'm.bin' names no format; give --format "
                    "(onnx, torchscript, pt2) or an --out ending in .onnx, .pt, .ts, .torchscript, .pt2")
    assert not (tmp_path / "m.bin").exists()


@pytest.mark.parametrize("args, message", [
    (["evaluate", "{folder}"], "model '{folder}': the folder holds no trained network (network.json, "
                               "weights.safetensors missing); `dartboard train` and `dartboard pull --to` write one"),
    (["predict", "{folder}", "x.npy"], "model '{folder}': the folder holds no trained network"),
    (["evaluate", "runs/absent"], "model 'runs/absent': no such folder (a trained network's folder, or NAME@ALIAS / "
                                  "NAME:VERSION of a registered one)"),
    (["evaluate", "{folder}", "--tracking-uri", "sqlite:///m.db"], "--tracking-uri: 'sqlite:///m.db' would be "
                                                                   "ignored: '{folder}' is a folder of model files"),
    (["export", "{folder}", "--format", "torchscript", "--out", "m.pt", "--weights", "w.safetensors"],
     "model folder '{folder}': its weights and network.json are the folder's own; drop --weights"),
], ids=["evaluate-search-folder", "predict-search-folder", "no-folder", "tracking-uri", "export-weights"])
def test_a_folder_that_is_no_trained_network_is_refused_by_name(args, message, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "search"
    folder.mkdir()
    (folder / "genotype.json").write_text(json.dumps({"schema": "dartboard.genotype", "version": 1, "kind": "darts",
                                                      **{c: {"edges": [["skip_connect", 0, 2],
                                                                       ["max_pool_3x3", 1, 2]], "concat": [2]}
                                                         for c in ("normal", "reduce")}}))
    line = refused_here([a.format(folder="search") for a in args], tmp_path, capsys, monkeypatch)
    assert message.format(folder="search") in line


@pytest.mark.parametrize("command", [["predict", "ssl", "x.npy"], ["evaluate", "ssl"], ["export", "ssl", "--out",
                                                                                         "m.onnx"]])
def test_a_nasiam_pretraining_folder_is_named_for_what_it_holds(command, tmp_path, capsys, monkeypatch):
    """`dartboard train` of NASiam heads writes a pretrained backbone (ssl_weights.pt), which the refusal called "no
    trained network, `dartboard train` ... write one"."""
    folder = tmp_path / "ssl"
    folder.mkdir()
    gt.save(gt.MlpGenotype({"projector": ("linear_relu",)}, {"space": "nasiam-mlp"}), folder / "genotype.json")
    (folder / "ssl_weights.pt").write_bytes(b"weights")
    (folder / "ssl_metrics.json").write_text("{}")
    line = refused_here(command, tmp_path, capsys, monkeypatch)
    assert "model 'ssl': the folder holds a backbone pretrained with NASiam heads (ssl_weights.pt, its held-out " \
           "probe and kNN metrics in ssl_metrics.json), not a trained classifier" in line, line


def test_dartboard_load_of_a_folder(trained, tmp_path):
    import dartboard
    from dartboard.errors import UserInputError
    from dartboard.spaces.genotype import DartsGenotype

    net = dartboard.load(str(trained["out"]))
    x = trained["splits"].test.tensors[0][:8]
    assert not net.training
    with torch.no_grad():
        assert torch.equal(net(x), trained["net"](x))
    only = tmp_path / "genotype-only"
    only.mkdir()
    (only / "genotype.json").write_bytes((trained["out"] / "genotype.json").read_bytes())
    assert isinstance(dartboard.load(str(only)), DartsGenotype)  # as a genotype-only registered version
    with pytest.raises(UserInputError, match="is a folder of model files, read without a registry or a cache"):
        dartboard.load(str(trained["out"]), tracking_uri="sqlite:///m.db")
    with pytest.raises(UserInputError, match=r"the folder holds no model \(genotype.json missing\)"):
        dartboard.load(str(tmp_path))
    # a registry reference with a file store: one line naming MLflow's switch, not MLflow's own exception
    with pytest.raises(UserInputError, match=r"load: tracking_uri: '\./mlruns' is a file store .* "
                                             r"MLFLOW_ALLOW_FILE_STORE=true"):
        dartboard.load("models:/m@champion", tracking_uri="./mlruns")


def test_info_of_a_folder_is_the_trained_networks_size(trained, capsys, monkeypatch):
    def info(*args: str) -> dict:
        code, out, err = run_main(["info", *args, "--json"], capsys)
        assert code == 0, err
        return json.loads(out)

    folder = info(str(trained["out"]))
    recorded = json.loads((trained["out"] / "train.json").read_text())
    assert folder["parameters"] == recorded["parameters"] == sum(p.numel() for p in trained["net"].parameters())
    assert (folder["channels"], folder["layers"], folder["dataset"], folder["input"]) == (4, 2, "digits", [1, 8, 8])
    same = info(str(trained["out"] / "genotype.json"), "--channels", "4", "--layers", "2", "--dataset", "digits")
    assert same["multiply_adds"] == folder["multiply_adds"] and same["parameters"] == folder["parameters"]
    line = refused_here(["info", str(trained["out"]), "--channels", "8"], trained["out"].parent, capsys, monkeypatch)
    assert line.endswith("the trained network's channels, cells, input and auxiliary head are in its network.json; "
                         "drop --channels")


def test_a_folder_without_a_recorded_preprocessing(trained, tmp_path, capsys, monkeypatch, caplog):
    folder = tmp_path / "old"
    folder.mkdir()
    for name in ("genotype.json", "weights.safetensors"):
        (folder / name).write_bytes((trained["out"] / name).read_bytes())
    spec = {k: v for k, v in json.loads((trained["out"] / "network.json").read_text()).items() if k != "preprocessing"}
    (folder / "network.json").write_text(json.dumps({**spec, "dataset": "imagefolder"}))
    np.save(tmp_path / "x.npy", np.zeros((8, 8), dtype=np.float32))
    line = refused_here(["predict", "old", "x.npy"], tmp_path, capsys, monkeypatch)
    assert line == ("error: model 'old': network.json records no preprocessing (written before dartboard recorded it) "
                    "and data set 'imagefolder' does not say how it normalises its images")
    (folder / "network.json").write_text(json.dumps(spec))  # digits: its current normalisation, with a warning
    code, out, err = run_main(["predict", str(folder), str(tmp_path / "x.npy")], capsys)
    assert code == 0 and out.startswith(f"{tmp_path / 'x.npy'}  class "), err
    assert f"model {folder} records no preprocessing; using the current normalisation of digits" in caplog.text


def test_predict_names_the_classes_network_json_records(trained, tmp_path, capsys, monkeypatch):
    # Before: `predict` of a network trained on an image folder printed "class 2" only; which folder that is, the user
    # had to work out from the sorted folder names. The data set's class names are recorded in network.json now.
    from PIL import Image

    from dartboard.training.final import TrainConfig

    for split in ("train", "test"):
        for name in ("dogs", "birds", "cats"):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((6, 5, 3), dtype=np.uint8)).save(tmp_path / "imgs" / split / name / "a.png")
    info = load_dataset("imagefolder", str(tmp_path / "imgs"), 8).info
    assert info.classes == ("birds", "cats", "dogs") and info.num_classes == 3  # in label order: ImageFolder's
    spec = models.network_spec(TrainConfig(channels=4, layers=2), info, "imagefolder")
    assert spec["classes"] == ["birds", "cats", "dogs"]
    assert "classes" not in models.network_spec(TrainConfig(channels=4, layers=2), trained["splits"].info, "digits")

    folder = tmp_path / "named"
    folder.mkdir()
    for name in ("genotype.json", "weights.safetensors"):
        (folder / name).write_bytes((trained["out"] / name).read_bytes())
    digits_spec = json.loads((trained["out"] / "network.json").read_text())
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (folder / "network.json").write_text(json.dumps({**digits_spec, "classes": names}))
    np.save(tmp_path / "x.npy", trained["splits"].test.tensors[0][0, 0].numpy().clip(0, 1))
    code, out, err = run_main(["predict", str(folder), str(tmp_path / "x.npy"), "--json"], capsys)
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["label"] == names[row["class"]]
    code, out, err = run_main(["predict", str(folder), str(tmp_path / "x.npy")], capsys)
    assert code == 0 and f"class {row['class']} ({names[row['class']]})  confidence" in out, err
    code, out, err = run_main(["predict", str(trained["out"]), str(tmp_path / "x.npy"), "--json"], capsys)
    assert code == 0 and "label" not in json.loads(out)[0]  # digits: a label is its own name

    (folder / "network.json").write_text(json.dumps({**digits_spec, "classes": names[:3]}))
    line = refused_here(["predict", "named", "x.npy"], tmp_path, capsys, monkeypatch)
    assert line == "error: model 'named': network.json classes: expected 10 class names, got ['zero', 'one', 'two']"


def _train_on_a_folder(tmp_path, capsys, monkeypatch) -> None:
    """darts-v2 trained one epoch on the image folder ``tmp_path/imgs`` into ``tmp_path/net``, from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["train", "darts-v2", "--dataset", "imagefolder", "--data-root", "imgs", "--image-size",
                               "8", "--epochs", "1", "--channels", "2", "--layers", "2", "--batch-size", "4",
                               "--no-auxiliary", "--no-cutout", "--no-mlflow", "--out", "net"], capsys)
    assert code == 0, err[-3000:]


def test_evaluate_reads_the_test_split_of_the_folder_the_network_was_trained_on(tmp_path, capsys, monkeypatch):
    # Before: `dartboard evaluate NET` of a network trained on an image folder said "imagefolder: no --data-root
    # given", the folder being the one thing network.json did not record.
    write_image_folder(tmp_path / "imgs", ("ants", "bees"))
    _train_on_a_folder(tmp_path, capsys, monkeypatch)
    assert json.loads((tmp_path / "net" / "network.json").read_text())["data_root"] == str(tmp_path / "imgs")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, err = run_main(["evaluate", str(tmp_path / "net"), "--json"], capsys)
    assert code == 0, err[-3000:]
    recorded = json.loads(out)
    assert recorded["data_root"] == str(tmp_path / "imgs") and recorded["test_samples"] == 8
    code, out, err = run_main(["evaluate", str(tmp_path / "net")], capsys)
    assert code == 0 and f"on the imagefolder test split in {tmp_path / 'imgs'} (8 images)" in out, err
    (tmp_path / "imgs").rename(tmp_path / "moved")
    code, out, err = run_main(["evaluate", str(tmp_path / "net"), "--data-root", str(tmp_path / "moved"), "--json"],
                              capsys)
    assert code == 0 and json.loads(out)["test_acc"] == recorded["test_acc"], err[-3000:]
    line = refused_here(["evaluate", str(tmp_path / "net")], tmp_path / "elsewhere", capsys, monkeypatch)
    assert line == (f"error: model {str(tmp_path / 'net')!r} was trained on imagefolder from "
                    f"{str(tmp_path / 'imgs')!r} (its network.json), which is not on this machine; give the data's "
                    f"folder with --data-root")


def test_evaluate_labels_a_folder_by_the_class_names_the_network_was_trained_on(tmp_path, capsys, monkeypatch):
    """A folder's labels are its class folders' order. A class added to the folder since the training (sorted before
    the others) gave an IndexError; one renamed was evaluated as another class. The test images are labelled by
    their class's name now: a class only in train/ moves no label, a class the network does not know is refused."""
    import shutil

    write_image_folder(tmp_path / "imgs", ("bees", "wasps"))
    _train_on_a_folder(tmp_path, capsys, monkeypatch)
    code, out, err = run_main(["evaluate", "net", "--json"], capsys)
    assert code == 0, err[-3000:]
    before = json.loads(out)
    shutil.copytree(tmp_path / "imgs" / "train" / "bees", tmp_path / "imgs" / "train" / "ants")  # label 0 in train/
    code, out, err = run_main(["evaluate", "net", "--json"], capsys)
    assert code == 0, err[-3000:]
    assert {k: json.loads(out)[k] for k in ("test_acc", "test_loss", "test_samples")} == \
        {k: before[k] for k in ("test_acc", "test_loss", "test_samples")}
    shutil.copytree(tmp_path / "imgs" / "test" / "bees", tmp_path / "imgs" / "test" / "ants")
    line = refused_here(["evaluate", "net"], tmp_path, capsys, monkeypatch)
    assert line == ("error: model 'net': the test split's class folder(s) 'ants' are not classes of the network (it "
                    "was trained on bees, wasps)")


def test_evaluate_without_recorded_class_names_refuses_another_class_count():
    from types import SimpleNamespace

    from dartboard.errors import UserInputError
    from dartboard.platform.predict import _labelled_as_trained

    splits = SimpleNamespace(info=SimpleNamespace(classes=(), num_classes=3, name="imagefolder"), test=[(0, 2)])
    assert _labelled_as_trained(splits, {"num_classes": 3}, "net") is splits.test
    with pytest.raises(UserInputError, match="model 'net' was trained on 10 classes; the imagefolder data has 3 now"):
        _labelled_as_trained(splits, {"num_classes": 10}, "net")
