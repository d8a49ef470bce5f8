"""A DARIO-pruned ViT is a registered model version like any other (sqlite MLflow backend, a tiny timm
ViT built locally, nothing downloaded): gates genotype + safetensors weights with SHA-256, parameter
counts and throughput before/after as tags; `dartboard pull` and `dartboard.load` give back the
physically smaller model, computing what the pruned model computes. `dartboard prune --mlflow-uri`
registers what it pruned."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_VIT, TINY_VIT_NAME
from test_cli_contract import run

import dartboard
from dartboard.platform import dario_run
from dartboard.platform.tracking.models import client
from dartboard.platform.tracking.pruned import register_pruned
from dartboard.platform.tracking.runs import end_run, start_parent_run
from dartboard.spaces import genotype as G
from dartboard.spaces.vit import count_parameters, find_blocks, prune_vit
from dartboard.training.final import sha256_file

pytest.importorskip("mlflow")
pytestmark = pytest.mark.mlflow


@pytest.fixture(scope="module")
def registered(tiny_vit, tmp_path_factory):
    """Blocks 0 and 2 of 3 kept, every head of block 0 but head 1 of block 2: registered as tinyvit@champion."""
    root = tmp_path_factory.mktemp("pruned")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    genotype = G.GateGenotype(TINY_VIT_NAME, (0, 2), {2: (0,)}, 3, 2, {"create_kwargs": TINY_VIT})
    pruned = prune_vit(tiny_vit, genotype).eval()
    throughput = dario_run.compare_throughput(tiny_vit, pruned, (1, 8, 8), batch_size=4, steps=2, warmup=1)
    run_id = start_parent_run(uri, "dario", "prune", {}, {})
    end_run(uri, run_id)
    version = register_pruned(uri, "tinyvit", run_id, pruned, genotype, params_original=count_parameters(tiny_vit),
                              params_pruned=count_parameters(pruned), throughput=throughput, alias="champion")
    return {"uri": uri, "root": root, "pruned": pruned, "version": version, "genotype": genotype}


def test_the_version_records_the_gates_genotype_weights_parameters_and_throughput(registered, tiny_vit):
    tags = client(registered["uri"]).get_model_version_by_alias("tinyvit", "champion").tags
    assert int(tags["params_original"]) == count_parameters(tiny_vit)
    assert int(tags["params_pruned"]) == count_parameters(registered["pruned"]) < count_parameters(tiny_vit)
    assert tags["blocks_kept"] == "0,2" and tags["dartboard.kind"] == "network"
    assert {"throughput.inference_original", "throughput.inference_pruned", "throughput.train_original",
            "throughput.train_pruned", "throughput.inference_speedup"} <= set(tags)
    assert {"sha256.genotype.json", "sha256.weights.safetensors"} <= set(tags)


def test_pull_and_load_return_the_physically_smaller_model(registered, tiny_vit, tmp_path):
    loaded = dartboard.load("models:/tinyvit@champion", tracking_uri=registered["uri"], cache_dir=tmp_path / "c")
    assert not loaded.training
    assert len(find_blocks(loaded)) == 2 < len(find_blocks(tiny_vit))
    assert count_parameters(loaded) == count_parameters(registered["pruned"]) < count_parameters(tiny_vit)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), registered["pruned"](x), atol=1e-6)
    result = run(["pull", "tinyvit@champion", "--to", str(tmp_path / "pulled"), "--tracking-uri", registered["uri"]])
    assert result.returncode == 0, result.stderr
    assert G.load(tmp_path / "pulled" / "genotype.json") == registered["genotype"]
    tags = registered["version"].tags
    assert sha256_file(tmp_path / "pulled" / "weights.safetensors") == tags["sha256.weights.safetensors"]


def test_the_prune_command_registers_what_it_pruned(tiny_vit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the pruned ViT is also saved in runs/ (no --out)
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from dartboard.platform.cli import build_app

    ckpt = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, str(ckpt))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["prune", TINY_VIT_NAME, "--checkpoint", str(ckpt), "--model-kwargs", json.dumps(TINY_VIT), "--k", "3",
            "--n", "2", "--granularity", "both", "--threshold", "0.5", "--mlflow-uri", uri, "--register", "cli@best"]
    result = CliRunner().invoke(build_app(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "registered cli version 1 (@best)" in result.output
    version = client(uri).get_model_version_by_alias("cli", "best")
    loaded = dartboard.load("models:/cli@best", tracking_uri=uri, cache_dir=tmp_path / "c")
    assert count_parameters(loaded) == int(version.tags["params_pruned"])
    assert int(version.tags["params_original"]) == count_parameters(tiny_vit)
    assert float(version.tags["throughput.inference_original"]) > 0
