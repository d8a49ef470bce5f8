"""A trained ColorNAS network put to use like any other: exported to ONNX and pt2 (the meta-learner's module
was named ``meta``, which torch.export's graph modules reserve: both exports failed with a traceback), its
weights of before the rename still load, and `dartboard predict` feeds it the raw colour-digits pixels it was
trained on (colour-digits records its identity normalisation; before, predict refused every ColorNAS model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli_contract import run_main

from dartboard.data.catalog import load_dataset
from dartboard.data.preprocess import preprocessing_of
from dartboard.platform.tracking import models
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.training.final import TrainConfig, network_of

FAST = {"C": 4, "layers": 2, "space_options.cell_space": "tiny81", "steps": 1, "multiplier": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A colornas-rgb genotype's network, its files as `dartboard train` writes them (weights as trained: random
    initialisation is enough for equalities)."""
    from safetensors.torch import save_file

    from dartboard.spaces import genotype as gt

    out = tmp_path_factory.mktemp("colornas") / "model"
    out.mkdir()
    geno = build_searcher("colornas-rgb", FAST, DataShape(3, 8, 10)).derive()
    splits = load_dataset("colour-digits")
    cfg = TrainConfig(channels=4, layers=2)
    torch.manual_seed(0)
    net = network_of(geno, cfg, splits.info).eval()
    gt.save(geno, out / "genotype.json")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "weights.safetensors"))
    (out / "network.json").write_text(json.dumps(models.network_spec(cfg, splits.info, "colour-digits")))
    return {"out": out, "net": net, "splits": splits, "geno": geno, "cfg": cfg}


def test_colour_digits_records_its_identity_normalisation():
    pre = preprocessing_of(load_dataset("colour-digits").info)
    assert pre is not None and pre.channels == 3 and pre.input_size == 8
    assert pre.mean == (0.0, 0.0, 0.0) and pre.std == (1.0, 1.0, 1.0)
    pixels = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    assert torch.equal(pre.apply(pixels), torch.from_numpy(pixels))


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_a_colornas_network_exports(trained, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    from dartboard.platform.export import export_network

    out = trained["out"].parent / f"net.{fmt}"
    report = export_network(trained["net"], (3, 8, 8), fmt, out)  # verified against the network by its runtime
    assert out.is_file() and report.max_abs_difference < 1e-4


def test_weights_saved_under_the_old_name_load(trained):
    old = {("meta." + k[len("meta_learner."):] if k.startswith("meta_learner.") else k): v
           for k, v in trained["net"].state_dict().items()}
    assert any(k.startswith("meta.") for k in old) and not any(k.startswith("meta_learner.") for k in old)
    net = network_of(trained["geno"], trained["cfg"], trained["splits"].info).eval()
    net.load_state_dict(old)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), trained["net"](x))
    assert net.meta is net.meta_learner


def test_predict_of_a_colornas_model_feeds_raw_pixels(trained, tmp_path, capsys):
    n = 12
    images = trained["splits"].test.tensors[0][:n]  # raw pixels in [0, 1]
    files = []
    for i in range(n):
        np.save(tmp_path / f"c{i}.npy", images[i].numpy().transpose(1, 2, 0))  # H, W, C as a picture would be
        files.append(str(tmp_path / f"c{i}.npy"))
    with torch.no_grad():
        expected = torch.softmax(trained["net"](images), dim=1)
    code, out, err = run_main(["predict", str(trained["out"]), *files, "--json"], capsys)
    assert code == 0, err[-3000:]
    rows = json.loads(out)
    assert [r["class"] for r in rows] == expected.argmax(1).tolist()
    np.testing.assert_allclose([r["probabilities"] for r in rows], expected.numpy(), atol=1e-5)


def test_a_colornas_genotype_trains_on_an_image_folder_without_the_published_auxiliary_head(trained, tmp_path, capsys,
                                                                                           monkeypatch):
    """On data other than the bundled digits the published protocol's defaults apply, auxiliary head included, which a
    ColorNAS network does not have: `dartboard train G --dataset imagefolder` was refused unless --no-auxiliary."""
    from image_folders import write_image_folder

    write_image_folder(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    args = ["train", str(trained["out"] / "genotype.json"), "--dataset", "imagefolder", "--data-root", "imgs",
            "--image-size", "8", "--epochs", "1", "--channels", "2", "--layers", "2", "--batch-size", "4",
            "--no-mlflow", "--out", "net"]
    code, out, err = run_main([*args, "--json"], capsys)
    assert code == 0, err[-3000:]
    assert json.loads(out)["dataset"] == "imagefolder" and (tmp_path / "net" / "weights.safetensors").is_file()
    assert json.loads((tmp_path / "net" / "network.json").read_text())["auxiliary"] is False
    code, out, err = run_main([*args, "--auxiliary", "--out", "net2"], capsys)
    assert code == 2 and "a ColorNAS network has no auxiliary head" in err, err[-3000:]
