"""Algorithm 5 end to end on a tiny ViT, the proxy study, the CLI and the MLflow logging."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_VIT as TINY  # noqa: E402
from conftest import TINY_VIT_NAME as NAME  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset

from dartboard.platform import dario_run
from dartboard.searchers.dario import DarioConfig, DarioSearcher
from dartboard.spaces import genotype as G
from dartboard.spaces.published import darts_v2
from dartboard.spaces.vit import create_vit, rebuild_pruned
from dartboard.training import vit_finetune


def test_warm_start_keeps_the_best_sample(tiny_vit):
    searcher = DarioSearcher(tiny_vit, DarioConfig(warmup_samples=4, iterations=0, seed=3))
    best = searcher.warm_start()
    gen = torch.Generator().manual_seed(3)
    values = []
    for _ in range(4):
        sample = {"block": torch.randn(3, generator=gen)}
        values.append(float(searcher.proxy_value(sample, create_graph=False).detach()))
    assert best == pytest.approx(min(values))
    assert torch.allclose(searcher.alpha["block"].detach(), _nth_sample(3, 4, values.index(min(values))))


def _nth_sample(seed, count, index):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, generator=gen) for _ in range(count)][index]


@pytest.mark.parametrize("granularity", ["block", "both"])
def test_search_lowers_the_proxy(tiny_vit, granularity):
    cfg = DarioConfig(granularity=granularity, warmup_samples=3, iterations=12, optimizer="adam", search_lr=0.2,
                      model_lr=0.05, seed=1)
    searcher = DarioSearcher(tiny_vit, cfg)
    before = {k: v.detach().clone() for k, v in tiny_vit.state_dict().items()}
    searcher.search()
    assert searcher.final_value() < searcher.warm_start_value
    # theta is never changed by the search (single level, "reset" every step)
    assert all(torch.equal(p, q) for p, q in zip(searcher.gated.parameters(), tiny_vit.parameters(), strict=True))
    assert all(torch.equal(v, tiny_vit.state_dict()[k]) for k, v in before.items())
    genotype = searcher.derive(NAME, {"create_kwargs": TINY})
    assert genotype.meta["granularity"] == granularity and len(genotype.meta["block_gates"]) == 3


def test_config_errors_name_the_field(tiny_vit):
    with pytest.raises(ValueError, match="granularity"):
        DarioSearcher(tiny_vit, DarioConfig(granularity="layer"))
    with pytest.raises(ValueError, match="l0_norm"):
        DarioSearcher(tiny_vit, DarioConfig(proxy="l0_norm", iterations=5))
    with pytest.raises(ValueError, match="proxy"):
        DarioSearcher(tiny_vit, DarioConfig(proxy="accuracy"))
    with pytest.raises(ValueError, match="cuda_graph: CUDA graphs need a CUDA device, the model is on cpu"):
        DarioSearcher(tiny_vit, DarioConfig(cuda_graph=True))
    with pytest.raises(ValueError, match="cuda_graph: expected true or false, got 'yes'"):
        DarioSearcher(tiny_vit, DarioConfig(cuda_graph="yes"))


@pytest.mark.gpu
@pytest.mark.parametrize("proxy", ["l2_norm", "synflow"])
def test_a_graphed_search_walks_the_eager_searchs_path(proxy):
    """cuda_graph: 2 eager iterations, a capture, replays; the proxy values and the alphas of every
    iteration equal the eager search's (float64: the comparison is of the same arithmetic)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = create_vit(NAME, **TINY).eval().cuda()
        runs = []
        for graph in (False, True):
            cfg = DarioConfig(granularity="both", proxy=proxy, warmup_samples=3, iterations=8, optimizer="adam",
                              search_lr=0.2, model_lr=0.05, seed=1, cuda_graph=graph)
            searcher = DarioSearcher(model, cfg)
            searcher.search()
            runs.append(searcher)
        eager, graphed = runs
        assert graphed._graph is not None and graphed._graph_calls == 2
        assert graphed.history == pytest.approx(eager.history, rel=1e-9)
        for k in eager.alpha:
            torch.testing.assert_close(graphed.alpha[k], eager.alpha[k], rtol=1e-9, atol=1e-12)
    finally:
        torch.set_default_dtype(dtype)


def _random_loaders():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=gen)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=48)


def test_finetune_trains_only_last_block_and_head(tiny_vit):
    model = create_vit(NAME, **TINY)
    model.load_state_dict(tiny_vit.state_dict())
    train, _ = _random_loaders()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vit_finetune.finetune_last_block(model, train, epochs=1)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("blocks.2.", "head.", "norm.")) for k in changed)


def test_throughput_and_proxy_study_run(tiny_vit, monkeypatch):
    train, test = _random_loaders()
    # A clock the test controls: the four timed runs (inference original/pruned, train original/pruned)
    # take 0.5, 0.25, 1.0 and 0.5 s for 2 steps of 4 images.
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0, 4.0, 4.5])
    monkeypatch.setattr(dario_run, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    res = dario_run.compare_throughput(tiny_vit, tiny_vit, (1, 8, 8), batch_size=4, steps=2, warmup=1)
    assert res == pytest.approx({"inference_original": 16.0, "inference_pruned": 32.0, "inference_speedup": 2.0,
                                 "train_original": 8.0, "train_pruned": 16.0, "train_speedup": 2.0})
    monkeypatch.undo()
    study = dario_run.proxy_study(tiny_vit, NAME, train, test, n_models=4, repeats=2, finetune_epochs=1)
    assert set(study.spearman) == set(dario_run.PROXIES) and len(study.runs) == 2
    assert len(study.runs[0]["accuracy"]) == 4 and study.table()[0].startswith("proxy")
    with pytest.raises(ValueError, match="n_models"):
        dario_run.proxy_study(tiny_vit, NAME, train, test, n_models=2)


def test_cli_prune_with_a_local_checkpoint(tiny_vit, tmp_path):
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from dartboard.platform.cli import build_app

    app = build_app()
    ckpt = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, str(ckpt))
    out = tmp_path / "pruned"
    args = ["prune", NAME, "--checkpoint", str(ckpt), "--model-kwargs", json.dumps(TINY), "--k", "3", "--n", "2",
            "--granularity", "both", "--threshold", "0.5", "--out", str(out)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "blocks kept" in result.output
    genotype = G.load(out / "genotype.json")
    from safetensors.torch import load_file

    rebuilt = rebuild_pruned(genotype, pruned_state=load_file(str(out / "model.safetensors"))).eval()
    again = rebuild_pruned(genotype, original_state=tiny_vit.state_dict()).eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(rebuilt(x), again(x), atol=1e-6)
    import dartboard  # the folder as it is: the pruned ViT, not only its gates genotype

    loaded = dartboard.load(str(out))
    assert not loaded.training and torch.equal(loaded(x), rebuilt(x))


def _prune_args(tiny_vit, folder):
    from safetensors.torch import save_file

    ckpt = folder / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, str(ckpt))
    return ["prune", NAME, "--checkpoint", str(ckpt), "--model-kwargs", json.dumps(TINY), "--k", "2", "--n", "1"]


def test_cli_prune_without_out_keeps_its_result_in_a_new_runs_folder(tiny_vit, tmp_path, monkeypatch):
    # Before: without --out (and without MLflow) the pruned ViT was computed, printed and thrown away.
    from typer.testing import CliRunner

    from dartboard.platform.cli import build_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(build_app(), _prune_args(tiny_vit, tmp_path), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith(f"prune-{NAME}-s0-")
    assert f"saved {Path('runs') / folder.name / 'genotype.json'}" in result.output
    import dartboard

    loaded = dartboard.load(str(folder))
    assert G.load(folder / "genotype.json").kind == "gates" and not loaded.training


def test_cli_prune_refuses_an_out_holding_another_model_and_replaces_an_earlier_pruning(tiny_vit, tmp_path, capsys,
                                                                                       caplog):
    from dartboard.platform.cli import main

    args = _prune_args(tiny_vit, tmp_path)

    def run(*more):
        with pytest.raises(SystemExit) as exc:
            main([*args, *more])
        return exc.value.code

    def refused(out):
        assert run("--out", str(out)) == 2
        return capsys.readouterr().err

    search = tmp_path / "search"
    search.mkdir()
    G.save(darts_v2(), search / "genotype.json")
    before = (search / "genotype.json").read_bytes()
    assert "holds another model's files (genotype.json of kind 'darts')" in refused(search)
    assert (search / "genotype.json").read_bytes() == before and [p.name for p in search.iterdir()] == ["genotype.json"]
    pruned = tmp_path / "pruned"
    assert run("--out", str(pruned)) == 0
    (pruned / "weights.safetensors").write_bytes(b"a pulled version's weights")
    assert "another model's files (weights.safetensors)" in refused(pruned)
    (pruned / "weights.safetensors").unlink()
    with caplog.at_level("WARNING"):
        assert run("--out", str(pruned), "--seed", "1") == 0
    assert "holds an earlier pruning" in caplog.text
    assert G.load(pruned / "genotype.json").kind == "gates"


def test_cli_prune_runs_where_auto_says(tiny_vit, tmp_path, monkeypatch, capsys):
    # --device defaults to auto (CUDA where there is one), as search and train do; before, the CPU always.
    from dartboard.platform import config
    from dartboard.platform.cli import main

    asked = []

    def resolve(device):
        asked.append(device)
        raise ValueError("device: seen")

    monkeypatch.setattr(config, "resolve_device", resolve)
    with pytest.raises(SystemExit) as exc:
        main([*_prune_args(tiny_vit, tmp_path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "device: seen" in capsys.readouterr().err
    assert asked == ["auto"]


def test_cli_bad_granularity_is_one_line(capsys):
    from dartboard.platform.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["prune", NAME, "--granularity", "layer"])
    assert exc.value.code == 2
    assert "granularity" in capsys.readouterr().err


@pytest.mark.mlflow
def test_log_pruned_model_writes_genotype_and_weights(tiny_vit, tmp_path):
    import mlflow

    genotype = G.GateGenotype(NAME, (0, 2), {}, 3, 2, {"create_kwargs": TINY})
    from dartboard.spaces.vit import prune_vit

    pruned = prune_vit(tiny_vit, genotype)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = dario_run.log_pruned_model(pruned, genotype, metrics={"accuracy": 90.0}, params={"proxy": "var"},
                                        tracking_uri=uri)
    client = mlflow.tracking.MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(run_id, "pruned")}
    assert names == {"pruned/genotype.json", "pruned/model.safetensors"}
    assert client.get_run(run_id).data.metrics["accuracy"] == 90.0


@pytest.mark.parametrize("mode", ["log", "unit"])
def test_gate_gradient_normalisations(tiny_vit, mode):
    searcher = DarioSearcher(tiny_vit, DarioConfig(granularity="both", gate_gradient=mode, model_lr=0.05))
    raw = searcher.alpha_gradient()
    value = searcher.history[-1]
    step = searcher.search_direction(raw, value)
    if mode == "log":  # d log s / d alpha = (ds/dalpha) / s, s > 0 for the parameter variance
        for k in raw:
            assert torch.allclose(step[k], raw[k] / value)
    else:  # one L2 norm over the block and head gates together
        norm = torch.sqrt(sum((g ** 2).sum() for g in raw.values()))
        for k in raw:
            assert torch.allclose(step[k], raw[k] / norm)
        assert float(torch.sqrt(sum((g ** 2).sum() for g in step.values()))) == pytest.approx(1.0)


def test_unit_gate_step_moves_alpha_by_lambda_and_thesis_step_by_lambda_times_gradient(tiny_vit):
    for mode in ("unit", "thesis"):
        searcher = DarioSearcher(tiny_vit, DarioConfig(gate_gradient=mode, search_lr=0.05, warmup_samples=0))
        raw = searcher.alpha_gradient()["block"]
        before = searcher.alpha["block"].detach().clone()
        searcher.step()
        moved = searcher.alpha["block"].detach() - before
        expected = 0.05 * (raw / raw.norm() if mode == "unit" else raw)
        assert torch.allclose(moved, -expected, atol=1e-7)  # Algorithm 5 line 10 with the normalised gradient
    assert float(moved.norm()) < 0.05  # the thesis form on this tiny model: |ds/dalpha| << 1


def test_prior_mean_for_keep_probability():
    from dartboard.searchers.dario import prior_mean_for_keep_probability as mu

    assert mu(0.5, 0.5) == pytest.approx(0.0, abs=1e-12)
    assert mu(0.65, 0.5) == pytest.approx(math.log(0.65 / 0.35))  # logit(0.65) = 0.6190
    assert mu(0.65, 0.8413447460685429) == pytest.approx(math.log(0.65 / 0.35) + 1.0)  # Phi(1) = 0.8413
    # empirical check: the fraction of N(mu, 1) samples whose sigmoid clears the threshold
    gen = torch.Generator().manual_seed(0)
    alpha = mu(0.65, 0.3) + torch.randn(200_000, generator=gen)
    assert float((torch.sigmoid(alpha) >= 0.65).double().mean()) == pytest.approx(0.3, abs=0.005)
    with pytest.raises(ValueError, match="keep_probability"):
        mu(0.65, 1.0)


def test_warm_start_samples_around_the_prior(tiny_vit):
    cfg = DarioConfig(warmup_samples=1, iterations=0, warmup_mean=5.0, warmup_std=0.01)
    searcher = DarioSearcher(tiny_vit, cfg)
    searcher.warm_start()
    assert torch.allclose(searcher.alpha["block"].detach(), torch.full((3,), 5.0), atol=0.05)
    with pytest.raises(ValueError, match="gate_gradient"):
        DarioConfig(gate_gradient="sign").validate()
    with pytest.raises(ValueError, match="warmup_std"):
        DarioConfig(warmup_std=0.0).validate()


# A reduced digits demo (~15 s on 2 cores): a 4-block ViT of width 32, 30 epochs. Measured (seed 0): original
# 95.3%, 3 of 4 blocks kept, 95.3% after fine-tuning all layers. Checked against a 3-point margin (the full demo
# holds the issue's 2 points; 1 test image is 0.28 points).
REDUCED_MARGIN = 3.0


def test_reduced_digits_demo_prunes_and_keeps_accuracy():
    from dartboard.platform.dario_demo import DemoSettings, run_demo

    settings = DemoSettings(model_kwargs={**dario_demo_kwargs(), "embed_dim": 32, "depth": 4, "num_heads": 2},
                            train_epochs=30, warmup_epochs=2.0, finetune_epochs=10, warmup_samples=12,
                            iterations=5)
    report, result = run_demo(settings, seed=0, throughput_steps=0)
    assert report.accuracy_original > 90.0  # the model really learned digits, so the comparison means something
    assert report.params_pruned < report.params_original
    assert len(result.genotype.blocks_kept) < result.genotype.n_blocks
    assert report.accuracy_all_layers >= report.accuracy_original - REDUCED_MARGIN
    assert any(line.startswith("bar") for line in report.lines())


def dario_demo_kwargs():
    from dartboard.platform.dario_demo import DEMO_KWARGS

    return dict(DEMO_KWARGS)


@pytest.mark.slow
def test_digits_demo_meets_the_issue_bar():
    from dartboard.platform.dario_demo import ACCURACY_BAR, run_demo

    report, result = run_demo(seed=0)
    assert report.accuracy_original > 97.0
    assert report.params_pruned < report.params_original
    assert len(result.genotype.blocks_kept) < result.genotype.n_blocks
    assert result.genotype.meta["threshold"] == 0.65  # the thesis threshold
    assert report.accuracy_all_layers >= report.accuracy_original - ACCURACY_BAR
    assert report.meets_bar(report.accuracy_all_layers)


def test_the_proxy_table_prints_no_nan():
    # one repeat: the mean alone, said once; a proxy with no correlation (constant values): n/a
    nan = float("nan")
    study = dario_run.StudyResult({"synflow": (0.8, nan), "l1_norm": (nan, nan)},
                                  {"synflow": (0.75, nan), "l1_norm": (nan, nan)}, [])
    lines = study.table()
    assert "nan" not in "\n".join(lines)
    assert lines[1].split() == ["synflow", "+0.800", "+0.750"] and lines[2].split() == ["l1_norm", "n/a", "n/a"]
    assert "(one repeat: no 95% interval" in lines[3] and "(n/a:" in lines[4]
    two = dario_run.StudyResult({"synflow": (0.8, 0.125)}, {"synflow": (-0.5, 0.25)}, []).table()
    assert two == [two[0], f"{'synflow':<20}    +0.800 +- 0.125     -0.500 +- 0.250 "]
