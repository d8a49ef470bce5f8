"""The `dartboard` command end to end (in-process), including its user-error contract."""

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from dartboard.platform.cli import main
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve
from dartboard.spaces.networks import DiscreteNetwork


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def run_ok(args, capsys):
    try:
        main(args)
    except SystemExit as e:
        assert not e.code, capsys.readouterr()
    out = capsys.readouterr()
    return out.out, out.err


def test_info_prints_darts_paper_size(capsys):
    out, _ = run_ok(["info", "darts-v2", "--channels", "36", "--layers", "20", "--auxiliary", "--dataset",
                     "cifar10", "--json"], capsys)
    info = json.loads(out)
    assert info["parameters"] == 3_349_342 and round(info["parameters"] / 1e6, 1) == 3.3
    assert info["parameters_with_auxiliary"] > info["parameters"]
    assert info["multiply_adds"] == _flop_counter_macs(DiscreteNetwork(resolve("darts-v2"), C=36, layers=20,
                                                                       auxiliary=True).eval(), (1, 3, 32, 32))


@pytest.mark.parametrize("name, dataset, layers", [("darts-v2", "cifar10", 8), ("resnet18", "digits", 4),
                                                   ("xception", "cifar100", 8)])
def test_multiply_adds_equal_torchs_flop_counter(name, dataset, layers):
    """`info`'s count (forward hooks) against torch's own FlopCounterMode (2 FLOPs per multiply-add)."""
    from dartboard.data.datasets import DatasetInfo
    from dartboard.platform.cli.info import DATASET_SHAPES
    from dartboard.spaces.networks import multiply_adds
    from dartboard.training.final import TrainConfig, network_of

    in_ch, size, classes = DATASET_SHAPES[dataset]
    net = network_of(resolve(name), TrainConfig(channels=8, layers=layers, auxiliary=name == "darts-v2"),
                     DatasetInfo(dataset, in_ch, size, classes)).eval()
    assert multiply_adds(net, (1, in_ch, size, size)) == _flop_counter_macs(net, (1, in_ch, size, size)) > 0


def _flop_counter_macs(net, shape) -> int:
    """Multiply-adds counted by torch's own FlopCounterMode (2 FLOPs each): independent of `info`'s hooks."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(shape))
    return counter.get_total_flops() // 2


def test_search_then_train_on_digits(tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="dartboard")
    out, err = run_ok(["search", "--epochs", "1", "--set", "C=4", "--set", "layers=3", "--out", "run",
                       "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], capsys)
    assert "search: darts on digits, 1 epoch (from epoch 1)," in caplog.text
    run = tmp_path / "run"
    for name in ("genotype.json", "history.json", "alpha_history.png", "normal.png", "reduce.png"):
        assert (run / name).is_file(), name
    genotype = gt.load(run / "genotype.json")
    assert isinstance(genotype, gt.DartsGenotype)
    out, _ = run_ok(["train", str(run / "genotype.json"), "--channels", "4", "--layers", "3", "--epochs", "1",
                     "--no-mlflow"], capsys)
    assert ", C=4, 3 cells, 1 epoch on digits" in caplog.text
    lines = out.strip().splitlines()
    acc_line = [line for line in lines if line.startswith("test_acc ")]
    assert len(acc_line) == 1 and 0.0 <= float(acc_line[0].split()[1]) <= 1.0
    assert (run / "weights.safetensors").is_file()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["dartboard"])
    assert len(runs) == 1 and runs.iloc[0]["tags.searcher"] == "darts"


def test_train_takes_a_search_folder_and_trains_into_it(tmp_path, capsys, monkeypatch):
    """`dartboard train runs/search-...` trains the folder's genotype.json and writes the network beside it, as for
    the file itself; `info` reads the folder as its genotype, then, once trained, at its size as trained."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "search-darts-digits-s0"
    run.mkdir(parents=True)  # laid out otherwise than gt.save would: the training keeps the folder's file as it is
    (run / gt.GENOTYPE_FILE).write_text(json.dumps(gt.to_dict(resolve("darts-v2")), indent=4, sort_keys=True))
    before = (run / gt.GENOTYPE_FILE).read_bytes()
    out, _ = run_ok(["info", str(run)], capsys)  # a search's folder: its genotype at info's default size
    assert "C=36, 20 cells, cifar10 input" in out, out
    out, _ = run_ok(["train", "runs/search-darts-digits-s0/", "--channels", "4", "--layers", "2", "--epochs", "1",
                     "--no-mlflow"], capsys)
    assert any(line.startswith("test_acc ") for line in out.splitlines())
    assert (run / "weights.safetensors").is_file() and (run / "network.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing beside the folder
    assert (run / gt.GENOTYPE_FILE).read_bytes() == before
    out, _ = run_ok(["info", str(run)], capsys)
    assert "C=4, 2 cells" in out, out
    from dartboard.platform.tracking.final import default_model_name

    assert default_model_name("runs/search-darts-digits-s0/", "digits") == "final-search-darts-digits-s0-digits"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "darts-v9"], "neither a file nor a catalog name"),
        (["info", "nope.json"], "neither a file nor a catalog name"),
        (["search", "--dataset", "cifar10", "--data-root", "/nonexistent", "--no-mlflow"], "never downloads"),
        (["search", "--batch-size", "0", "--no-mlflow"], "batch_size"),
        (["search", "--searcher", "dorts", "--no-mlflow"], "unknown searcher 'dorts'"),
        (["search", "--set", "order=3", "--no-mlflow"], "order: expected 1 or 2"),
        (["search", "--space", "nospace", "--no-mlflow"], "unknown space 'nospace'"),
    ],
)
def test_user_errors_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_malformed_and_unknown_op_genotypes(tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    code, _, err = run_cli(["info", str(bad_json)], capsys)
    assert code == 2 and "not valid JSON" in err
    data = gt.to_dict(resolve("darts-v2"))
    data["normal"]["edges"][0][0] = "conv_11x11"
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(data))
    code, _, err = run_cli(["train", str(unknown), "--no-mlflow"], capsys)
    assert code == 2 and "normal.edges[0].op: unknown op 'conv_11x11'" in err


def test_bench_speed_prints_timing(capsys, monkeypatch):
    """A clock the test controls, both engines interleaved (reference, batched, reference, ...): the
    reference's iterations take 10, 30, 20 ms (median 20 ms, 8 / 0.02 = 400 images/s), the batched
    engine's 5, 4, 6 ms (median 5 ms): ratio 4, paired ratio 20 / 6 (the median of 10 / 5, 30 / 4, 20 / 6); one
    warm-up and three timed search steps each."""
    from dartboard.bench import speed
    from dartboard.searchers.engine import Engine

    durations = [0.010, 0.005, 0.030, 0.004, 0.020, 0.006]
    ticks = iter([t for i, d in enumerate(durations) for t in (float(i), i + d)])
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    steps = []
    original = Engine.step
    monkeypatch.setattr(Engine, "step", lambda self, *a: steps.append((self.config.engine, self.arch_steps))
                        or original(self, *a))
    args = ["bench", "speed", "--channels", "4", "--layers", "3", "--input-size", "8", "--batch", "8",
            "--warmup", "1", "--repeats", "3", "--orders", "1", "--no-memory"]
    out, _ = run_ok([*args, "--json"], capsys)
    result = json.loads(out)["results"]
    assert [(r["preset"], r["order"]) for r in result] == [("darts", 1)]
    ref, bat = result[0]["engines"]["reference"], result[0]["engines"]["batched"]
    assert ref["ms_per_iter"] == pytest.approx(20.0) and ref["images_per_s"] == pytest.approx(400.0)
    assert (ref["ms_min"], ref["ms_max"]) == pytest.approx((10.0, 30.0))
    assert bat["ms_per_iter"] == pytest.approx(5.0) and bat["images_per_s"] == pytest.approx(1600.0)
    assert bat["ratio"] == pytest.approx(4.0) and ref["ratio"] == pytest.approx(1.0)
    # each round's own ratio: 10 / 5, 30 / 4, 20 / 6
    assert (bat["paired_ratio"], bat["paired_min"], bat["paired_max"]) == pytest.approx((20 / 6, 2.0, 7.5))
    assert ref["paired_ratio"] == pytest.approx(1.0)
    assert steps == [("reference", 0), ("batched", 0)] + [(e, k) for k in (1, 2, 3) for e in ("reference", "batched")]
    ticks = iter([t for i, d in enumerate(durations) for t in (float(i), i + d)])
    out, _ = run_ok(args, capsys)
    line = next(row for row in out.splitlines() if "batched" in row and "darts" in row)
    assert line.split()[-1] == "4.00x" and "1600.0" in line
    assert "darts order 1 batched 3.33x (2.00-7.50)" in out.splitlines()[-1]



def test_bench_speed_prints_no_profiler_log(tmp_path):
    # the CPU peak is read from the torch profiler, whose own log (kineto) wrote "USDT: ... profiler_start" and
    # "profiler_stop" lines to stderr at every profiled step, and an ERROR line where no GPU answers
    from test_cli_contract import env_for, run

    env = env_for(OMP_NUM_THREADS="1")
    env.pop("KINETO_LOG_LEVEL", None)
    result = run(["bench", "speed", "--channels", "4", "--layers", "3", "--input-size", "8", "--batch", "8",
                  "--warmup", "1", "--repeats", "1", "--orders", "1"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "peak MiB" in result.stdout and "USDT" not in result.stderr and "profiler_st" not in result.stderr, \
        result.stderr[-3000:]

def test_bench_speed_shows_no_peak_for_a_graph_replay(monkeypatch):
    """A replay allocates nothing (the graph's pool is taken at the capture): a ``+graph`` engine's row
    says so instead of a peak of 0 MiB; the other engines keep their measured peak."""
    from dartboard.bench import speed

    class Stepper:
        def step(self, train, val):
            torch.ones(256, 256).sum()

    monkeypatch.setattr(speed, "build", lambda preset, engine, order, setting: Stepper())
    setting = speed.SpeedSetting(batch=2, channels=4, layers=2, input_size=8, warmup=0, repeats=1)
    rows = speed.compare("darts", 1, ["batched", "batched+graph"], setting)["engines"]
    assert rows["batched"]["peak_mib"] > 0
    assert "peak_mib" not in rows["batched+graph"] and rows["batched+graph"]["memory_method"].startswith("none")
    line = next(r for r in speed.report([{"preset": "darts", "order": 1, "engines": rows}], setting).splitlines()
                if "batched+graph" in r)
    assert line.split()[-2] == "-"
