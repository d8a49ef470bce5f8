"""Regret lookup and tracking, rank statistics, random search with a budget, `bench quality`."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import epoch_gate
import pytest
from scipy import stats
from servers import kill_session

from dartboard.bench.quality import QualityConfig, markdown, rescore, summarize, trial_options
from dartboard.bench.regret import RegretTracker, lookup_metrics, random_search_curve, searches_tiny81
from dartboard.bench.table import Table, average_ranks, spearman, table_from_dict
from dartboard.spaces.tiny import genotype_of_ops, ops_key

A = ("sep_conv_3x3",) * 4
B = ("sep_conv_3x3", "skip_connect", "sep_conv_3x3", "skip_connect")
C = ("max_pool_3x3",) * 4


def _entry(ops, test, val, seconds=1.0):
    return {"key": ops_key(ops), "ops": list(ops), "test_acc": list(test), "val_acc": list(val),
            "test_mean": sum(test) / len(test), "val_mean": sum(val) / len(val), "train_seconds": seconds}


@pytest.fixture()
def table() -> Table:
    entries = [_entry(A, [0.98, 0.96], [0.90, 0.90]), _entry(B, [0.95, 0.95], [0.95, 0.95]),
               _entry(C, [0.80, 0.84], [0.70, 0.70])]
    return table_from_dict({"space": "tiny81", "protocol": {}, "entries": entries})


def test_regret_and_rank_by_hand(table):
    assert table.best_test == pytest.approx(0.97)
    assert table.regret(genotype_of_ops(A)) == pytest.approx(0.0)
    assert table.regret(ops_key(B)) == pytest.approx(0.02)
    assert table.regret(genotype_of_ops(C)) == pytest.approx(0.15)
    assert [table.rank(ops_key(o)) for o in (A, B, C)] == [1, 2, 3]
    m = lookup_metrics(table, genotype_of_ops(C))
    assert m == pytest.approx({"tiny81_test_acc": 0.82, "tiny81_val_acc": 0.70, "tiny81_regret": 0.15,
                               "tiny81_rank": 3.0, "tiny81_on_table": 1.0})


def test_off_table_architecture_gives_nan_and_flag(table):
    other = ("skip_connect",) * 4  # a member of the space missing from this small table
    m = lookup_metrics(table, genotype_of_ops(other))
    assert m["tiny81_on_table"] == 0.0 and math.isnan(m["tiny81_regret"]) and math.isnan(m["tiny81_rank"])


def test_table_from_dict_refuses_other_spaces():
    with pytest.raises(ValueError, match="space: expected a table of 'tiny81', 'tiny625'"):
        table_from_dict({"space": "darts", "protocol": {}, "entries": []})


def test_spearman_matches_scipy_with_ties():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    rng = random.Random(0)
    a = [rng.choice([0.9, 0.92, 0.95, 0.97]) for _ in range(30)]
    b = [x + rng.gauss(0, 0.02) for x in a]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


class _FakeSearcher:
    """Derives A, then B, then C: the tracker must report the table's numbers for each. It runs
    its epoch hooks as the engine does, and is its own hook context (epoch, epoch_metrics, derive)."""

    space_info = {"space": "darts", "layers": 8, "reductions": (2, 5)}

    def __init__(self):
        self.epoch = 0
        self.sequence = [A, B, C]
        self.hooks = []
        self.epoch_metrics = {"val_acc": 0.5}

    def add_hook(self, hook):
        self.hooks.append(hook)

    def end_epoch(self):
        self.epoch += 1
        metrics = dict(self.epoch_metrics)
        for hook in self.hooks:
            metrics.update(hook.end_epoch(self))
        return metrics

    def derive(self):
        return genotype_of_ops(self.sequence[self.epoch - 1])


def test_tracker_adds_regret_to_every_epoch_metrics(table):
    searcher = _FakeSearcher()
    tracker = RegretTracker(table).attach(searcher)
    metrics = [searcher.end_epoch() for _ in range(3)]
    assert [m["tiny81_regret"] for m in metrics] == pytest.approx([0.0, 0.02, 0.15])
    assert metrics[0]["val_acc"] == 0.5
    assert [c["epoch"] for c in tracker.curve] == [1, 2, 3]
    assert [c["key"] for c in tracker.curve] == [ops_key(o) for o in (A, B, C)]
    assert not searches_tiny81(searcher)


def test_tracker_does_not_derive_in_a_diverged_epoch(table):
    """NaN loss (the alphas may be NaN too): the lookups are NaN and off-table, derive() is not called;
    the search loop then ends the trial with the divergence as its reason."""
    searcher = _FakeSearcher()
    searcher.epoch_metrics = {"train_loss": math.nan, "val_loss": 1.0}
    searcher.derive = lambda: pytest.fail("derive() called in a diverged epoch")
    tracker = RegretTracker(table).attach(searcher)
    m = searcher.end_epoch()
    assert math.isnan(m["tiny81_regret"]) and m["tiny81_on_table"] == 0.0 and m["val_loss"] == 1.0
    assert tracker.curve == []


def test_random_search_spends_its_budget_and_keeps_the_best_val(table):
    curve = random_search_curve(table, [0.5, 2.0, 100.0], seed=3)
    assert [c["tiny81_samples"] for c in curve] == [1.0, 2.0, 3.0]  # at least 1; 1 s per training
    assert curve[-1]["key"] == ops_key(B)  # best validation accuracy once all are seen
    assert curve[-1]["tiny81_regret"] == pytest.approx(0.02)
    # the incumbent is the best observed val among the samples drawn so far (slow recomputation)
    keys = list(table.entries)
    random.Random(3).shuffle(keys)
    first_two = max(keys[:2], key=lambda k: table.entries[k]["val_mean"])
    assert curve[1]["key"] == first_two


def _record(name, seed, regrets, ranks):
    curve = [{"epoch": i + 1, "key": "k", "tiny81_regret": r, "tiny81_rank": k, "tiny81_test_acc": 0.9 - r,
              "tiny81_on_table": 0.0 if math.isnan(r) else 1.0, "seconds": float(i + 1)}
             for i, (r, k) in enumerate(zip(regrets, ranks, strict=True))]
    return {"searcher": name, "seed": seed, "curve": curve, "seconds": 3.0, "stopped_early": False}


def test_summary_by_hand(table):
    records = [_record("x", 0, [0.05, 0.01, 0.03], [9, 2, 5]), _record("x", 1, [0.02, 0.02, 0.01], [4, 4, 2]),
               _record("y", 0, [math.nan, 0.1, 0.1], [math.nan, 40, 40])]
    rows = {r["searcher"]: r for r in summarize(records)}
    x = rows["x"]
    assert x["final_regret_mean"] == pytest.approx(0.02) and x["final_regret_std"] == pytest.approx(0.01 * 2 ** 0.5)
    assert x["best_regret_epoch_mean"] == pytest.approx(2.5)  # epoch 2 (seed 0), epoch 3 (seed 1)
    assert x["final_rank_mean"] == pytest.approx(3.5) and x["final_ranks"] == [5, 2]
    assert rows["y"]["off_table_epochs"] == 1 and rows["y"]["best_regret_epoch_mean"] == 2.0
    text = markdown(list(rows.values()), table)
    assert "| x | 2 | 2.00 +- 1.41 | 2.5 | 3.5 +- 2.1 | 5, 2 |" in text
    # one seed: its value alone (before: "10.00 +- 0.00"), said under the table
    assert "| y | 1 | 10.00 | 2.0 | 40.0 | 40 |" in text
    assert text.endswith("\n\nA searcher with one seed shows its value alone: one value has no standard deviation.")
    assert "one seed" not in markdown([rows["x"]], table)


def test_trial_options_put_any_searcher_on_tiny81_and_use_the_table_parse():
    opts = trial_options("ddarts", QualityConfig(epochs=3))
    assert opts["space"] == "tiny81" and opts["layers"] == 2 and opts["reductions"] == [1]
    assert opts["discretizer"] == "darts" and opts["epochs"] == 3
    assert "discretizer" not in {**trial_options("darts", QualityConfig(parse=None))}
    with pytest.raises(ValueError, match="epochs: expected >= 1"):
        QualityConfig(epochs=0)


@pytest.mark.ray
def test_a_quality_run_killed_inside_its_trial_resumes_and_scores(tmp_path, monkeypatch):
    """2 epochs of DARTS in tiny81 (a grid study on the one runner: a Ray Train trial) + random search, on the
    shipped table. Its driver is SIGKILLed while the trial is held after epoch 1 (the epoch gate), then
    `--resume` finishes it from the output folder: epoch 1 is not run again, epoch 2 runs once; then finite
    regrets, files, plot; rescoring the recorded keys gives the same curve."""
    from dartboard.platform.quality import CONFIG_FILE, run_quality
    from dartboard.platform.ray.worker import EPOCH_GATE_ENV

    gate = epoch_gate.close(tmp_path / "gate")
    out, log = tmp_path / "bench", tmp_path / "first.log"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, EPOCH_GATE_ENV: str(gate)}
    first = subprocess.Popen([sys.executable, "-m", "dartboard.platform.cli", "bench", "quality", "--searchers",
                              "darts", "--seeds", "0", "--epochs", "2", "--workers", "1", "--no-mlflow", "--out",
                              str(out)], env=env, start_new_session=True, stdout=log.open("w"),
                             stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        held = epoch_gate.wait_until(
            lambda: epoch_gate.held_after_epoch_1(gate, lambda: (out / "studies").glob("bench-quality-*"), 1), first)
        assert held, log.read_text()[-3000:]
    finally:
        kill_session(first.pid)
        first.wait()
    assert (out / CONFIG_FILE).is_file() and not (out / "quality.json").exists()
    epoch_gate.open_(gate)
    monkeypatch.setenv(EPOCH_GATE_ENV, str(gate))  # the resumed trial's workers log their epochs too
    result = run_quality(None, resume=out, mlflow=False)
    assert epoch_gate.lines(gate) == ["darts/seed0 1", "darts/seed0 2"]  # none lost, none run twice

    cfg = QualityConfig(searchers=["darts"], seeds=[0], epochs=2, workers=1)
    assert result["config"] == asdict(cfg)
    rows = {r["searcher"]: r for r in result["rows"]}
    assert set(rows) == {"darts", "random"} and result["rows"][0]["searcher"] == "darts"
    darts = result["records"][0]
    assert len(darts["curve"]) == 2 and all(c["tiny81_on_table"] == 1.0 for c in darts["curve"])
    assert all(c["seconds"] > 0 for c in darts["curve"]) and darts["curve"][0]["seconds"] < darts["curve"][1]["seconds"]
    assert 0.0 <= rows["darts"]["final_regret_mean"] < 0.5 and 1 <= rows["darts"]["final_rank_mean"] <= 81
    assert (out / "regret_curves.png").stat().st_size > 0 and (out / "quality.md").is_file()
    assert (out / "studies").is_dir() and "://" not in result["run_dir"]
    saved = json.loads((out / "quality.json").read_text())
    assert saved["rows"][0]["searcher"] == "darts"
    from dartboard.bench.table import load_table

    again = rescore(saved["records"], cfg, load_table())
    assert [c["tiny81_regret"] for c in again[0]["curve"]] == pytest.approx([c["tiny81_regret"]
                                                                            for c in darts["curve"]])


@pytest.mark.parametrize("args, expected", [
    ([], {"seeds": [0, 1, 2], "epochs": 20, "workers": 2, "out": Path("runs/bench-quality")}),
    (["--seeds", "4,5", "--epochs", "3", "--workers", "1", "--out", "q"],
     {"seeds": [4, 5], "epochs": 3, "workers": 1, "out": Path("q")}),
], ids=["defaults", "given"])
def test_a_new_benchmark_gets_the_defaults_its_help_shows_or_the_values_given(args, expected, tmp_path, monkeypatch):
    # The options' defaults are None on the command line (so that --resume can tell them given) and the shown
    # defaults come from QualityConfig: a new benchmark must still get them.
    import dartboard.platform.quality as platform_quality
    from dartboard.platform.cli.main import main

    got = {}

    def fake_run(cfg, out, **kwargs):
        got.update(seeds=cfg.seeds, epochs=cfg.epochs, workers=cfg.workers, out=out)
        return {"markdown": "", "plot": "p", "wall_seconds": 0.0, "run_dir": "r"}

    monkeypatch.setattr(platform_quality, "run_quality", fake_run)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["bench", "quality", "--searchers", "darts", "--no-mlflow", *args])
    assert done.value.code == 0
    assert got == expected


def test_resuming_names_what_it_cannot_resume(tmp_path):
    from dartboard.errors import UserInputError
    from dartboard.platform.quality import CONFIG_FILE, resumed_quality

    with pytest.raises(UserInputError, match="is no `dartboard bench quality` output folder or study run directory"):
        resumed_quality(tmp_path)
    cfg = QualityConfig(searchers=["darts"], seeds=[0], epochs=2)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(asdict(cfg)))
    with pytest.raises(UserInputError, match="holds 0 benchmark studies"):
        resumed_quality(tmp_path)
    for name in ("bench-quality-1", "bench-quality-2"):
        (tmp_path / "studies" / name).mkdir(parents=True)
        (tmp_path / "studies" / name / "study.yaml").write_text("name: bench-quality\n")
    with pytest.raises(UserInputError, match="holds 2 benchmark studies .*bench-quality-1.*; give the run directory"):
        resumed_quality(tmp_path)
    got, out, run_dir = resumed_quality(tmp_path / "studies" / "bench-quality-2")  # a run directory: its folder's
    assert got == cfg and out == tmp_path and run_dir == str(tmp_path / "studies" / "bench-quality-2")
    for content, message in [('{"epochs": 0}', "epochs: expected >= 1"), ('{"nosuch": 1}', "not a benchmark "
                              "configuration"), ("[1]", "expected the benchmark's configuration"),
                             ("{bad", "Expecting property name")]:
        (tmp_path / CONFIG_FILE).write_text(content)
        with pytest.raises(UserInputError, match=message):
            resumed_quality(tmp_path / "studies" / "bench-quality-2")


def test_bench_never_imports_the_platform():
    """bench/ is pure scoring (DESIGN.md): its quality module must import without dartboard.platform."""
    import ast

    root = Path(__file__).resolve().parents[1] / "dartboard" / "bench"
    for name in ("quality.py", "regret.py", "memory.py"):
        tree = ast.parse((root / name).read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("dartboard.platform")], name


@pytest.mark.mlflow
def test_rescore_logs_the_study_layout_to_mlflow(tmp_path):
    """`bench quality --rescore` logs like a study: a parent run with each searcher's mean final regret and
    the files, a child per (searcher, seed) whose regret history has one point per epoch."""
    from dataclasses import asdict

    from dartboard.bench.quality import rescore_file
    from dartboard.bench.table import load_table
    from dartboard.platform.quality import log_rescore
    from dartboard.platform.tracking import runs

    table = load_table()
    keys = sorted(table.entries)[:2]
    cfg = QualityConfig(searchers=["darts"], seeds=[0, 1], epochs=2, random_search=False)
    records = [{"searcher": "darts", "seed": s, "options": {}, "seconds": 2.0, "stopped_early": False,
                "curve": [{"epoch": t + 1, "key": keys[(s + t) % 2], "seconds": float(t + 1)} for t in range(2)]}
               for s in (0, 1)]
    source = tmp_path / "quality.json"
    source.write_text(json.dumps({"config": asdict(cfg), "records": records, "wall_seconds": 3.0}))
    cfg, result = rescore_file(source)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = log_rescore(result, cfg, source, uri)
    c = runs.client(uri)
    run = c.get_run(parent)
    expected = sum(table.regret(keys[(s + 1) % 2]) for s in (0, 1)) / 2
    assert run.data.metrics["darts.final_regret_mean"] == pytest.approx(expected)
    assert run.info.status == "FINISHED"
    assert {a.path for a in c.list_artifacts(parent)} >= {"quality.json", "quality.md", "regret_curves.png"}
    for s in (0, 1):
        child = runs.find_child_run(uri, parent, f"darts-s{s}")
        history = c.get_metric_history(child.info.run_id, "tiny81_regret")
        assert [h.step for h in history] == [0, 1]
        assert [h.value for h in history] == pytest.approx([table.regret(keys[(s + t) % 2]) for t in range(2)])
