"""`dartboard prune MODEL --checkpoint W --data-root FOLDER`: the pruned ViT fine-tuned on the user's own image
folder (a tiny 3-channel timm ViT built locally, nothing downloaded; classes told apart by their colour). The
fine-tuning must move the pruned model's test accuracy up, the folder's model must be the fine-tuned one
(``dartboard.load`` computes the reported accuracy), a model whose head has other classes gets a new head that
``dartboard.load`` rebuilds, and the accuracies reach MLflow with the pruned model. Bad folders and models are
refused before the search."""

from __future__ import annotations

import json
import re

import pytest
import torch
from image_folders import write_image_folder
from safetensors.torch import save_file
from test_cli_contract import run_main

import dartboard
from dartboard.data.datasets import make_loader
from dartboard.platform.dario_finetune import folder_for
from dartboard.spaces.vit import create_vit, find_blocks
from dartboard.training.vit_finetune import evaluate

pytest.importorskip("timm")
NAME = "deit_tiny_patch16_224"  # ImageNet statistics: the normalisation of its inputs matters
KWARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2, "num_classes": 3}


def _setup(tmp_path, **changes):
    kwargs = {**KWARGS, **changes}
    torch.manual_seed(0)
    model = create_vit(NAME, **kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    write_image_folder(tmp_path / "imgs", ("a", "b", "c"), per_class=6, size=16)
    return ["prune", NAME, "--checkpoint", str(tmp_path / "vit.safetensors"), "--model-kwargs", json.dumps(kwargs),
            "--k", "5", "--n", "5", "--data-root", str(tmp_path / "imgs"), "--batch-size", "8", "--out",
            str(tmp_path / "out")]


def test_the_pruned_vit_is_fine_tuned_on_the_folder_and_saved_fine_tuned(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # nothing logged: a folder's model only
    args = _setup(tmp_path)
    code, out, err = run_main([*args, "--finetune", "all", "--finetune-epochs", "10"], capsys)
    assert code == 0, err
    found = re.search(r"test accuracy \(18 images\): original ([\d.]+)%  pruned ([\d.]+)% before fine-tuning, "
                      r"([\d.]+)% after", out)
    assert found, out
    original, before, after = map(float, found.groups())
    assert after >= 90.0 and after >= before + 50  # colours a random backbone's pruned model learns in 10 epochs
    loaded = dartboard.load(str(tmp_path / "out"))
    assert len(find_blocks(loaded)) < KWARGS["depth"]
    test = make_loader(folder_for(loaded, str(tmp_path / "imgs")).test, 256, shuffle=False, seed=0)
    assert evaluate(loaded, test) == pytest.approx(after, abs=0.005)  # the saved weights are the fine-tuned ones
    meta = json.loads((tmp_path / "out" / "genotype.json").read_text())["meta"]
    assert meta["classes"] == ["a", "b", "c"] and meta["create_kwargs"]["num_classes"] == 3
    # the folder is a trained network's: predicted with and evaluated on its data as the fine-tuning read them
    code, out, err = run_main(["evaluate", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["test_acc"] == evaluated["recorded_test_acc"] == pytest.approx(after / 100, abs=5e-5)
    assert evaluated["data_root"] == str((tmp_path / "imgs").resolve()) and evaluated["test_samples"] == 18
    files = [str(tmp_path / "imgs" / "test" / c / "0.png") for c in ("a", "b", "c")]
    code, out, err = run_main(["predict", str(tmp_path / "out"), *files, "--json"], capsys)
    assert code == 0, err
    assert [row["label"] for row in json.loads(out)] == ["a", "b", "c"]
    code, out, err = run_main(["info", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    sized, kept = json.loads(out), len(find_blocks(loaded))
    assert sized["input"] == [3, 16, 16] and sized["parameters"] == sum(p.numel() for p in loaded.parameters())
    # by hand: the 4x4 patch conv (4 x 4 outputs of 32 channels from 3 x 4 x 4 taps), per block qkv, proj, fc1, fc2
    # on 17 tokens of width 32 (mlp 128), the head on the class token
    per_block = 17 * (96 * 32 + 32 * 32 + 128 * 32 + 32 * 128)
    assert sized["multiply_adds"] == 16 * 32 * 48 + kept * per_block + 3 * 32
    # pruned again into the same folder without a folder to fine-tune on: no network.json of other weights is left
    unfolded = [a for a in args if a not in ("--data-root", str(tmp_path / "imgs"), "--batch-size", "8")]
    code, out, err = run_main(unfolded, capsys)
    assert code == 0, err
    assert not (tmp_path / "out" / "network.json").exists()


@pytest.mark.mlflow
def test_no_mlflow_logs_nothing_where_a_tracking_uri_is_set(tmp_path, capsys, monkeypatch):
    """MLFLOW_TRACKING_URI set (as MLflow's own tools leave it): `--no-mlflow` logs and registers nothing (before,
    prune had no way to opt out but to unset it)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'set.db'}")
    code, out, err = run_main([*_setup(tmp_path), "--finetune-epochs", "1", "--no-mlflow"], capsys)
    assert code == 0, err
    assert "saved" in out and "mlflow run" not in out and "registry:" not in out and "registered" not in out
    assert not (tmp_path / "set.db").exists() and (tmp_path / "out" / "model.safetensors").is_file()


def test_a_head_of_other_classes_is_replaced_and_the_accuracy_logged(tmp_path, capsys):
    from mlflow import MlflowClient

    args = _setup(tmp_path, num_classes=5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = run_main([*args, "--finetune-epochs", "2", "--tracking-uri", uri], capsys)
    assert code == 0, err
    assert "of the pruned ViT with its new head, fine-tuned: " in out
    loaded = dartboard.load(str(tmp_path / "out"))
    assert loaded.num_classes == 3 and loaded(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("dario").experiment_id])
    assert "accuracy_pruned_finetuned" in run.data.metrics and "accuracy_original" not in run.data.metrics
    assert run.data.params["finetune"] == "last-block" and run.data.params["finetune_epochs"] == "2"
    assert run.data.params["data_root"] == str((tmp_path / "imgs").resolve())
    # the registered version is a trained network too: pulled, verified, evaluated on the recorded folder
    code, out, err = run_main(["evaluate", f"dario-{NAME}:1", "--tracking-uri", uri, "--json"], capsys)
    assert code == 0, err
    evaluated = json.loads(out)
    finetuned = run.data.metrics["accuracy_pruned_finetuned"] / 100
    assert evaluated["test_acc"] == evaluated["registered_test_acc"] == finetuned


@pytest.mark.parametrize("change, message", [
    ({"in_chans": 1}, "error: --data-root: an image folder's images are RGB (3 channels), the model takes 1 "
                      "(its in_chans)"),
    ("no test", "error: imagefolder: {root!r} must hold train/ and test/ (or val/) subfolders, one folder per class"),
    ("--finetune", "error: --finetune: expected one of last-block, all, got 'head'"),
    ("one class", "error: --data-root: {root!r} holds one class folder in train/ (a); fine-tuning a classifier "
                  "needs at least two classes"),
], ids=["grey-model", "no-test-split", "unknown-protocol", "one-class"])
def test_bad_folders_models_and_protocols_are_refused_before_the_search(change, message, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = _setup(tmp_path, **(change if isinstance(change, dict) else {}))
    if change == "no test":
        import shutil

        shutil.rmtree(tmp_path / "imgs" / "test")
    if change == "--finetune":
        args += ["--finetune", "head"]
    if change == "one class":
        import shutil

        for split in ("train", "test"):
            for name in ("b", "c"):
                shutil.rmtree(tmp_path / "imgs" / split / name)
    code, out, err = run_main(args, capsys)
    assert code == 2 and err.strip() == message.format(root=str(tmp_path / "imgs")), err
    assert "blocks kept" not in out and not (tmp_path / "out").exists()


def test_info_of_a_head_pruned_vit_says_which_heads_each_block_kept(tmp_path, capsys, monkeypatch):
    """`--granularity head` keeps every block and cuts attention heads: info said "blocks kept [0, 1, 2, 3] of 4" only,
    the same as for the unpruned model, beside a smaller parameter count."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run_main([*_setup(tmp_path), "--granularity", "head", "--threshold", "0.9", "--finetune-epochs",
                               "1"], capsys)
    assert code == 0, err
    genotype = json.loads((tmp_path / "out" / "genotype.json").read_text())
    kept = {int(b): heads for b, heads in genotype["heads_kept"].items()}
    assert any(len(kept.get(b, [0, 1])) < 2 for b in genotype["blocks_kept"])  # threshold 0.9: some head is cut
    code, out, err = run_main(["info", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    sized = json.loads(out)
    assert sized["n_heads"] == 2 and {int(b): h for b, h in sized["heads_kept"].items()} == kept
    assert sized["parameters"] == sum(p.numel() for p in dartboard.load(str(tmp_path / "out")).parameters())
    code, out, err = run_main(["info", str(tmp_path / "out")], capsys)
    assert code == 0, err
    listed = ", ".join(f"block {b}: {len(kept.get(b, [0, 1]))} of 2" for b in genotype["blocks_kept"])
    assert f"attention heads kept: {listed}\n" in out, out
