"""NASiam evaluation: retrieval mAP (thesis 5.1.3, Eq 5.5) and the weighted kNN against hand-computed
values, the head network of a derived genotype, and the train / retrieve / info commands on digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from dartboard.spaces import genotype as gt
from dartboard.training import ssl_eval as E

torch.set_num_threads(1)

QUERIES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
GALLERY = torch.tensor([[1.0, 0.1], [1.0, 0.5], [0.2, 1.0], [-1.0, 0.0]])
GROUPS = ["a", "b", "a", "a"]


def test_retrieval_map_against_a_hand_computed_ranking():
    # query a (1, 0): similarities 0.995 (a), 0.894 (b), 0.196 (a), -1 (a). tau = 0 keeps the first three:
    # hits at ranks 1 and 3 out of 3 relevant -> (1/1 + 2/3) / 3.
    ap_a = (1 + 2 / 3) / 3
    # query (0, 1) of group a: 0.0995 (a), 0.447 (b), 0.981 (a), exactly 0 (a: not *above* tau, never retrieved):
    # ranking a, b, a -> hits at ranks 1 and 3 of 3 relevant.
    ap_2 = (1 + 2 / 3) / 3
    assert E.retrieval_map(QUERIES, ["a", "a"], GALLERY, GROUPS, tau=0.0) == pytest.approx((ap_a + ap_2) / 2)
    # a query of group b: one relevant item, ranked 2nd for (0, 1)
    assert E.retrieval_map(QUERIES[1:], ["b"], GALLERY, GROUPS, tau=0.0) == pytest.approx(1 / 2)
    # no threshold: query a ranks all four -> (1/1 + 2/3 + 3/4) / 3
    assert E.retrieval_map(QUERIES[:1], ["a"], GALLERY, GROUPS, tau=-2.0) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    with pytest.raises(ValueError, match="must not be empty"):
        E.retrieval_map(QUERIES, ["a", "b"], GALLERY[:0], [], tau=0.0)


def test_cosine_similarity_is_eq_5_5_with_its_epsilon():
    sim = E.cosine_similarity(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([[4.0, 3.0]]))
    assert float(sim[0, 0]) == pytest.approx(24 / 25) and float(sim[1, 0]) == 0.0  # max(., eps): no NaN


def test_weighted_knn_votes_with_exp_similarity_over_t():
    train = torch.tensor([[1.0, 0.05], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    # k = 3, T = 1: class 0 gets e^0.9988 = 2.715, class 1 e^0 + e^0.0995 = 2.105 -> 0 (a plain majority says 1)
    assert E.knn_accuracy(train, labels, test, torch.tensor([0]), k=3, temperature=1.0) == 1.0
    assert E.knn_accuracy(train, labels, test, torch.tensor([0]), k=3, temperature=100.0) == 0.0


def test_linear_probe_and_collapse_indicator():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.randn(40, 4, generator=g) + 4 * y[:, None].float()
    acc, lr = E.linear_probe(x[:30], y[:30], x[30:], y[30:], epochs=50)
    assert acc == 1.0 and lr in E.PROBE_LRS
    assert E.collapse_std(torch.ones(10, 8)) == 0.0
    assert E.collapse_std(torch.randn(4000, 16, generator=g)) == pytest.approx(1 / math.sqrt(16), rel=0.05)


def test_head_network_of_a_genotype():
    geno = gt.MlpGenotype({"projector": ("linear_silu", "avg_pool_3"), "predictor": ()})
    net, weights = E.head_network(geno, 1, 4)
    assert [len(w) for w in weights] == [2, 1]
    assert isinstance(net.predictor[0].ops[0], nn.Identity)  # an empty chain is one identity
    simsiam, _ = E.head_network(gt.MlpGenotype(E.HAND_DESIGNED["simsiam"]), 1, 4)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in simsiam.predictor[-1].modules())
    with pytest.raises(gt.GenotypeError, match="'darts' genotype is not a Siamese head network"):
        from dartboard.spaces.catalog import resolve

        E.head_network(resolve("darts-v2"), 1, 4)
    with pytest.raises(gt.GenotypeError, match=r"chains.projector\[0\]: unknown op 'conv'"):
        E.head_network(gt.MlpGenotype({"projector": ("conv",)}), 1, 4)


def test_train_retrieve_and_info_commands_on_digits(tmp_path, capsys):
    from dartboard.platform.cli.main import main

    path = gt.save(gt.MlpGenotype({"projector": ("linear_relu",), "predictor": ("linear_relu",)},
                                  {"space": "nasiam-mlp"}), tmp_path / "heads.json")
    out = tmp_path / "run"

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
        return code or 0, capsys.readouterr().out

    code, text = run("train", str(path), "--epochs", "1", "--channels", "4", "--out", str(out), "--no-mlflow")
    assert code == 0, text
    metrics = json.loads((out / "ssl_metrics.json").read_text())
    assert metrics["framework"] == "simsiam" and 0.0 <= metrics["knn_acc"] <= 1.0
    code, text = run("retrieve", str(out / "ssl_weights.pt"))
    assert code == 0 and f"mAP {metrics['retrieval_map']:.4f}" in text
    code, text = run("retrieve", str(out))  # the folder the training wrote into
    assert code == 0 and f"mAP {metrics['retrieval_map']:.4f}" in text
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a folder without the weights: refused by name
        main(["retrieve", str(tmp_path)])
    assert f"weights: folder '{tmp_path}' holds no ssl_weights.pt" in capsys.readouterr().err
    # folders of grayscale images for heads pretrained on digits (one channel): was RGB into the one-channel stem, a
    # RuntimeError; now the mAP of the same images as digits-normalised tensors
    from PIL import Image
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    from dartboard.data.catalog import load_dataset

    digits, info = load_digits(), load_dataset("digits").info
    pixels = {}  # (folder, group) -> uint8 images
    for k in range(24):
        role, group = ("q" if k % 3 == 0 else "g"), str(digits.target[k])
        image = np.round(digits.images[k] / 16.0 * 255).astype(np.uint8)
        (tmp_path / role / group).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / role / group / f"{k:02d}.png")
        pixels.setdefault(role, []).append((group, k, image))
    embedded = {}
    for role, items in pixels.items():
        items.sort()  # ImageFolder's order: group folders, then file names
        x = torch.tensor(np.stack([im for _, _, im in items]), dtype=torch.float32).unsqueeze(1) / 255.0
        data = TensorDataset((x - info.mean[0]) / info.std[0], torch.zeros(len(items), dtype=torch.long))
        saved = torch.load(out / "ssl_weights.pt", weights_only=True)
        net, _ = E.head_network(gt.from_dict(saved["genotype"]), 1, saved["C"])
        net.load_state_dict(saved["state_dict"])
        embedded[role] = (E.embed(net.backbone, data)[0], [g for g, _, _ in items])
    expected = E.retrieval_map(*embedded["q"], *embedded["g"], 0.0)
    code, text = run("retrieve", str(out / "ssl_weights.pt"), "--query", str(tmp_path / "q"), "--gallery",
                     str(tmp_path / "g"))
    assert code == 0 and f"mAP {expected:.4f}" in text, text
    # a gallery that holds some query groups only: the others' queries are left out of the mAP, and said to be;
    # one that holds none of them: refused (an mAP of 0 looked like a result)
    import shutil

    (tmp_path / "some").mkdir()
    kept = sorted(p.name for p in (tmp_path / "g").iterdir())[:2]
    for group in kept:
        shutil.copytree(tmp_path / "g" / group, tmp_path / "some" / group)
    left_out = sum(1 for g, _, _ in pixels["q"] if g not in kept)
    code, text = run("retrieve", str(out / "ssl_weights.pt"), "--query", str(tmp_path / "q"), "--gallery",
                     str(tmp_path / "some"))
    n_queries = len(pixels["q"])
    assert code == 0 and 0 < left_out < n_queries, text
    assert (f"queries {n_queries} ({n_queries - left_out} scored: {left_out} whose group has no image in the gallery "
            f"left out), gallery") in text, text
    (tmp_path / "other" / "x").mkdir(parents=True)
    shutil.copy(next((tmp_path / "g").rglob("*.png")), tmp_path / "other" / "x" / "a.png")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["retrieve", str(out / "ssl_weights.pt"), "--query", str(tmp_path / "q"), "--gallery",
              str(tmp_path / "other")])
    assert "no query's group has an image in the gallery" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    code, _ = run("retrieve", str(out / "ssl_weights.pt"), "--query", str(tmp_path / "empty"), "--gallery",
                  str(tmp_path / "empty"))
    assert code == 2
    code, _ = run("retrieve", str(path))  # a genotype file is not the weights of a pretraining
    assert code == 2
    code, _ = run("train", "darts-v2", "--framework", "simclr")  # a cell genotype has no Siamese heads
    assert code == 2
    code, text = run("info", str(path))
    assert code == 0 and "projector (1 layers): linear_relu" in text


def test_retrieve_without_folders_ranks_the_held_out_part_of_the_data_the_weights_were_pretrained_on(
        tmp_path, capsys, monkeypatch):
    # Before: weights pretrained on an image folder were ranked on digits and failed with a conv's RuntimeError
    # (3-channel weights, 1-channel digits); the weights now record their data.
    from image_folders import write_image_folder
    from test_cli_contract import run_main

    from dartboard.spaces.genotype import MlpGenotype

    write_image_folder(tmp_path / "imgs", per_class=10)
    gt.save(MlpGenotype({"projector": ["linear_relu"], "predictor": ["linear_relu"]}, {}), tmp_path / "heads.json")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["train", "heads.json", "--dataset", "imagefolder", "--data-root", "imgs", "--epochs",
                               "1", "--channels", "4", "--batch-size", "8", "--no-mlflow", "--out", "w"], capsys)
    assert code == 0, err[-3000:]
    saved = torch.load(tmp_path / "w" / "ssl_weights.pt", weights_only=True)
    assert (saved["dataset"], saved["data_root"]) == ("imagefolder", str(tmp_path / "imgs"))
    code, out, err = run_main(["retrieve", "w"], capsys)
    fit, held = E.fit_held_out(20, 0)
    assert code == 0 and f"queries {len(held)}, gallery {len(fit)}, tau 0.0" in out, err[-3000:]
    torch.save({k: v for k, v in saved.items() if k not in ("dataset", "data_root")}, tmp_path / "old.pt")
    code, out, err = run_main(["retrieve", "old.pt"], capsys)  # written before the data was recorded: not digits
    assert code == 2 and "were pretrained on 3-channel data they do not name; rank folders of it with --query" in err
    (tmp_path / "imgs").rename(tmp_path / "moved")
    code, out, err = run_main(["retrieve", "w"], capsys)
    assert code == 2 and f"from {str(tmp_path / 'imgs')!r}, which is not on this machine" in err, err[-3000:]
