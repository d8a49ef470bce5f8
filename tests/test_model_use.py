"""Models users can use: the preprocessing recorded with a network, `dartboard predict` / `evaluate`
through the installed console script, and the SHA-256 check of MLflow's own pyfunc loader, against a
real `mlflow server` on loopback (the fixture of test_registry.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_contract import env_for, run
from test_registry import server  # noqa: F401 - the module-scoped mlflow server fixture

from dartboard.data.catalog import load_dataset
from dartboard.data.preprocess import Preprocessing, preprocessing_of, read_image
from dartboard.errors import UserInputError
from dartboard.platform.tracking import models, runs
from dartboard.spaces.catalog import resolve

pytest.importorskip("mlflow")
NAME = "digits-usable"


@pytest.fixture(scope="module")
def usable(server, tmp_path_factory):  # noqa: F811
    """darts-v2 trained 3 epochs on digits (C=4, 2 cells: a few seconds), registered as NAME@champion."""
    from dartboard.training.final import TrainConfig, train_genotype

    out = tmp_path_factory.mktemp("usable") / "model"
    splits = load_dataset("digits")
    tcfg = TrainConfig(channels=4, layers=2, epochs=3, batch_size=64, lr=0.05, seed=0)
    trained = train_genotype(resolve("darts-v2"), splits, tcfg, out)
    (out / models.NETWORK_FILE).write_text(json.dumps(models.network_spec(tcfg, splits.info, "digits")))
    parent = runs.start_parent_run(server["uri"], "test-model-use", "usable", {}, {})
    runs.end_run(server["uri"], parent)
    version = models.register_champion(server["uri"], NAME, parent, out, {"metric.test_acc": trained.test_acc})
    net = models.build_from_files({"genotype": out / "genotype.json", "network": out / "network.json",
                                   "weights": out / "weights.safetensors"})
    return {"version": version, "test_acc": trained.test_acc, "net": net, "splits": splits}


def _stored(server, version) -> Path:  # noqa: F811
    """The artifact store's copy of the version's files (what someone with store access could edit)."""
    from dartboard.training.final import sha256_file

    digest = version.tags["sha256." + models.WEIGHTS_FILE]
    hits = [p.parent for p in (server["root"] / "artifacts").rglob(models.WEIGHTS_FILE) if sha256_file(p) == digest]
    assert hits, "the version's weights are not in the artifact store"
    return hits[-1]


def test_network_json_records_the_loaders_preprocessing(usable):
    info = usable["splits"].info
    pre = preprocessing_of(info)
    assert pre is not None and pre.input_size == 8 and pre.channels == 1
    recorded = models.network_spec(type("C", (), {"channels": 4, "layers": 2, "auxiliary": False})(), info, "digits")
    assert Preprocessing.from_dict(recorded["preprocessing"]) == pre
    # the record turns a digits image scaled to [0, 1] into exactly what the loader feeds the network
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    train_x = usable["splits"].train.tensors[0]
    matches = [i for i in range(len(images)) if torch.equal(pre.apply(images[i][None]), train_x[0])]
    assert matches, "the first training image, preprocessed from its pixels, equals the loader's tensor"


def test_read_image_scales_shapes_and_channels(tmp_path):
    from PIL import Image

    gray = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_allclose(read_image(tmp_path / "g.png"), (gray / 255.0)[None], atol=1e-7)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    pre = Preprocessing(2, 1, (0.0,), (1.0,))
    assert float(pre.apply(read_image(tmp_path / "c.png"))[0, 0, 0]) == pytest.approx(0.299, abs=1e-6)  # BT.601
    np.save(tmp_path / "hwc.npy", np.full((4, 4, 3), 0.5, dtype=np.float32))
    assert read_image(tmp_path / "hwc.npy").shape == (3, 4, 4)
    resized = Preprocessing(2, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).apply(read_image(tmp_path / "hwc.npy"))
    assert resized.shape == (3, 2, 2) and torch.allclose(resized, torch.zeros(3, 2, 2))
    np.save(tmp_path / "big.npy", np.full((4, 4), 3.0))
    with pytest.raises(UserInputError, match=r"must lie in \[0, 1\]"):
        read_image(tmp_path / "big.npy")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(UserInputError, match="unknown image type '.gif'"):
        read_image(tmp_path / "x.gif")


def _text(path):
    path.write_text("not an array")


def _npz(path):
    with open(path, "wb") as f:
        np.savez(f, a=np.zeros((4, 4)))


def _truncated(path):
    np.save(path, np.zeros((4, 4), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("write, message", [
    (_text, "not a NumPy .npy file"),
    (_npz, r"an archive of arrays \(.npz\)"),
    (_truncated, "not a NumPy array of pixels"),
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a NumPy array of pixels"),
    (lambda p: np.save(p, np.full((4, 4), np.nan, dtype=np.float32)), "16 pixel value.s. are NaN or infinite"),
    (lambda p: np.save(p, np.array([[0.5, np.inf]])), "1 pixel value.s. are NaN or infinite"),
    (lambda p: np.save(p, np.zeros((0, 4), dtype=np.float32)), r"expected an array .* got shape \(1, 0, 4\)"),
])
def test_an_npy_file_that_is_no_image_is_refused_by_name(write, message, tmp_path):
    """A file that is not an array of pixels (text, an .npz archive, a cut file, Python objects, NaN pixels, no
    pixels) is refused naming the file, not a NumPy error or a NaN prediction."""
    write(tmp_path / "x.npy")
    with pytest.raises(UserInputError, match=rf"x\.npy: {message}"):
        read_image(tmp_path / "x.npy")


def test_a_folder_given_as_an_image_file_is_named_a_folder(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(UserInputError, match=r"cats: a folder, not an image file; give its files \(.*cats/\*.png"):
        read_image(tmp_path / "cats")  # was "no such file"


def test_predict_on_digits_images_gives_the_networks_classes(server, usable, tmp_path):  # noqa: F811
    """PNG (8-bit) and NPY files of digits test images through `dartboard predict` give the classes of
    the network applied in Python to the loader's test tensors."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from dartboard.data.datasets import DIGITS_TEST_SEED

    digits = load_digits()
    _, x_test, _, _ = train_test_split(digits.images, digits.target, test_size=0.2, random_state=DIGITS_TEST_SEED,
                                       stratify=digits.target)
    n = 40
    files = []
    for i in range(n):
        unit = (x_test[i] / 16.0).astype(np.float32)
        if i % 2:
            path = tmp_path / f"digit{i}.npy"
            np.save(path, unit)
        else:
            path = tmp_path / f"digit{i}.png"
            Image.fromarray(np.round(unit * 255).astype(np.uint8)).save(path)
        files.append(str(path))
    with torch.no_grad():
        expected = usable["net"](usable["splits"].test.tensors[0][:n]).argmax(1).tolist()
    assert len(set(expected)) >= 5, "a network that predicts few classes would make this test weak"
    result = run(["predict", f"{NAME}@champion", *files, "--json", "--tracking-uri", server["uri"]], env_for())
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert [r["file"] for r in rows] == files
    assert [r["class"] for r in rows] == expected
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-4 for r in rows)


def test_evaluate_reports_the_logged_test_accuracy(server, usable):  # noqa: F811
    result = run(["evaluate", f"{NAME}@champion", "--json", "--tracking-uri", server["uri"]], env_for())
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["dataset"] == "digits" and report["test_samples"] == 360
    assert report["test_acc"] == pytest.approx(usable["test_acc"], abs=1e-9)
    assert report["registered_test_acc"] == pytest.approx(usable["test_acc"])



def test_evaluate_refuses_a_folder_for_data_made_in_memory(server, usable, tmp_path):  # noqa: F811
    # before: "... leave it out, or name the dataset that folder holds (--dataset ...)", a flag evaluate does not have
    result = run(["evaluate", f"{NAME}@champion", "--data-root", str(tmp_path), "--tracking-uri", server["uri"]],
                 env_for())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data_root (--data-root): dataset 'digits' is made in memory and reads no folder, so {str(tmp_path)!r} "
        f"would be ignored; leave it out (model '{NAME}@champion' is evaluated on the data set it was trained on)")

def test_tampered_weights_are_refused_by_mlflow_pyfunc_load_model(server, usable):  # noqa: F811
    import mlflow
    from safetensors.torch import load_file, save_file

    mlflow.set_tracking_uri(server["uri"])
    uri = f"models:/{NAME}/{usable['version'].version}"
    x = usable["splits"].test.tensors[0][:4].numpy()
    expected = usable["net"](torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(mlflow.pyfunc.load_model(uri).predict(x), expected, rtol=1e-5, atol=1e-6)
    weights = _stored(server, usable["version"]) / models.WEIGHTS_FILE
    original = weights.read_bytes()
    try:
        state = load_file(str(weights))
        key = next(iter(state))
        state[key] = state[key] + 1.0
        save_file(state, str(weights))
        with pytest.raises(Exception, match="weights.safetensors: sha256 .* does not match the registered"):
            mlflow.pyfunc.load_model(uri)
    finally:
        weights.write_bytes(original)
    mlflow.pyfunc.load_model(uri)  # restored: accepted again


def test_pull_copies_only_the_recorded_files_and_reports_extras(server, usable, tmp_path, caplog):  # noqa: F811
    extra = _stored(server, usable["version"]) / "extra.py"
    extra.write_text("print('not registered')\n")
    try:
        with caplog.at_level("WARNING", logger="dartboard"):
            folder, _ = models.pull_model(server["uri"], f"{NAME}@champion", tmp_path / "pulled")
    finally:
        extra.unlink()
    names = {p.name for p in folder.iterdir()}
    assert names == {"genotype.json", "network.json", "weights.safetensors", "model.json"}
    assert "extra.py is in the stored model" in caplog.text and "not copied" in caplog.text
    assert json.loads((folder / "model.json").read_text())["not_copied"] == ["extra.py"]


def test_pull_never_overwrites_other_files_and_pulls_the_same_version_again(server, usable, tmp_path):  # noqa: F811
    # before: a pull into a folder holding the user's genotype.json replaced it silently
    ref, mine = f"{NAME}@champion", tmp_path / "mine"
    mine.mkdir()
    (mine / "genotype.json").write_text('{"my": "file"}')
    with pytest.raises(UserInputError, match=r"--to: '.*mine' already holds genotype.json, other than .* version "
                                             r"\d+'s; pull into an empty folder"):
        models.pull_model(server["uri"], ref, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["genotype.json"]
    assert (mine / "genotype.json").read_text() == '{"my": "file"}'
    folder, version = models.pull_model(server["uri"], ref, tmp_path / "pulled")
    assert models.pull_model(server["uri"], ref, folder)[1].version == version.version  # the same files: no change
    record = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**record, "version": "999"}))  # another version's folder
    with pytest.raises(UserInputError, match="already holds model.json, other than"):
        models.pull_model(server["uri"], ref, folder)


def test_a_palette_image_with_a_transparent_colour_is_read_without_a_warning(tmp_path):
    """PIL warns on every palette PNG with a transparent colour converted straight to RGB (the form many image
    editors save small pictures in): both readers go through RGBA and give the palette's colours."""
    import warnings

    from PIL import Image

    from dartboard.data.datasets import read_image as folder_image

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, 1 blue
    palette.save(tmp_path / "p.png", transparency=b"\x33\x00")  # alpha per index (bytes): 0.2 and 0
    assert isinstance(Image.open(tmp_path / "p.png").info["transparency"], bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folder = np.asarray(folder_image(str(tmp_path / "p.png")))
        picture = read_image(tmp_path / "p.png")
    assert folder.shape == (2, 2, 3) and tuple(folder[0, 0]) == (255, 0, 0) and tuple(folder[0, 1]) == (0, 0, 255)
    assert picture.shape == (4, 2, 2)  # RGBA: the palette's colours and its alphas
    assert tuple(picture[:, 0, 0]) == (1, 0, 0, 0.2) and tuple(picture[:, 0, 1]) == (0, 0, 1, 0)


def test_a_16_bit_image_folder_trains_on_the_pixels_predict_reads(tmp_path):
    """A 16-bit grayscale PNG (scientific and medical pictures) is scaled to [0, 1] by both readers: PIL's own RGB
    conversion clips every value from 255 up, so the folder loader gave the network a nearly white picture while
    `dartboard predict` read the same file right."""
    from PIL import Image

    from dartboard.data.datasets import image_folder

    pixels = (np.arange(16).reshape(4, 4) * 4000).astype(np.uint16)
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / split / "a" / "x.png")
    assert Image.open(tmp_path / "train" / "a" / "x.png").mode.startswith("I")
    splits = image_folder(str(tmp_path), 4)
    folder = splits.train[0][0]
    pre = Preprocessing(4, 3, splits.info.mean, splits.info.std)
    predicted = pre.apply(read_image(tmp_path / "train" / "a" / "x.png"))
    assert folder.shape == predicted.shape == (3, 4, 4)
    assert torch.allclose(folder, predicted, atol=2 * 0.5 / 255 / 0.5)  # 8-bit rounding, normalised by std 0.5
    assert float(folder.max()) < 0.9  # 60,000 / 65,535 -> 0.83 after normalisation, not 1 (white)
