"""PMSM on a motor's own measurements (``--data-root bench.csv``): the file's rows are the data, exactly; a search and
a comparison on them equal the same on the simulator's rows; the file's bad input is refused by line and column. And a
trained flux model's map as a look-up table (``dartboard pmsm flux``) against the model and finite differences."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from test_cli_bad_input import refused_here, run_here

from dartboard.data.catalog import DataError, load_dataset
from dartboard.data.pmsm import FEATURES, TARGETS, MotorParams, make_splits
from dartboard.spaces.catalog import resolve
from dartboard.training.pmsm import FluxTrainConfig, train_flux_model

SMALL = {"n_train": 512, "n_val": 128, "n_test": 128}
HEADER = ["time", *FEATURES, *TARGETS, "torque"]  # two columns a bench log has and the data does not use


def write_measurements(path: Path, splits, split_column: bool = True) -> Path:
    """The simulator's rows as a bench's CSV (float32 values written exactly), train rows first."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER + (["split"] if split_column else []))
        t = 0
        for name in ("train", "val", "test"):
            x, y = getattr(splits, name).tensors
            for i in range(len(x)):
                w.writerow([t, *(repr(float(v)) for v in x[i]), *(repr(float(v)) for v in y[i]), "0.5"]
                           + ([name.upper() if i == 0 else name] if split_column else []))
                t += 1
    return path


def rows_file(path: Path, rows: list[list[str]], header: list[str] | None = None) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header or [*FEATURES, *TARGETS])
        w.writerows(rows)
    return path.name


GOOD = ["0.5", "-0.2", "0.7", "0.1", "0.3", "0.02", "1.5", "-2.0"]


def test_a_split_column_gives_the_files_rows_exactly_and_training_equals_the_simulators(tmp_path):
    simulated = make_splits(MotorParams(**SMALL))
    measured = load_dataset("pmsm", str(write_measurements(tmp_path / "bench.csv", simulated)))
    for name in ("train", "val", "test"):
        for ours, theirs in zip(getattr(measured, name).tensors, getattr(simulated, name).tensors, strict=True):
            assert ours.dtype == torch.float32 and torch.equal(ours, theirs), name
    assert measured.params is None and measured.flux is None
    assert measured.info.in_channels == len(FEATURES) and measured.info.num_classes == len(TARGETS)
    cfg = FluxTrainConfig(epochs=2, batch_size=64)
    _, on_file = train_flux_model(resolve("pmsm-baseline"), measured, cfg)
    _, simulator = train_flux_model(resolve("pmsm-baseline"), simulated, cfg)
    assert on_file.criterion_test == simulator.criterion_test and on_file.criterion_val == simulator.criterion_val
    assert on_file.flux_rmse is None and on_file.torque_rmse is None  # no true flux map to compare with
    assert simulator.flux_rmse is not None and simulator.torque_rmse is not None


def test_without_a_split_column_the_rows_are_split_4_1_1_by_a_fixed_shuffle(tmp_path):
    simulated = make_splits(MotorParams(n_train=40, n_val=10, n_test=10))
    path = str(write_measurements(tmp_path / "bench.csv", simulated, split_column=False))
    torch.manual_seed(1)
    first = load_dataset("pmsm", path)
    torch.manual_seed(2)  # the global RNG does not move the split: a search and a comparison see the same test rows
    second = load_dataset("pmsm", path)
    assert [len(first.train), len(first.val), len(first.test)] == [40, 10, 10]
    every = torch.cat([s.tensors[0] for s in (simulated.train, simulated.val, simulated.test)])
    parts = [first.train.tensors[0], first.val.tensors[0], first.test.tensors[0]]
    assert sorted(map(tuple, torch.cat(parts).tolist())) == sorted(map(tuple, every.tolist()))  # each row once
    assert not torch.equal(first.test.tensors[0], simulated.test.tensors[0])  # shuffled, not the file's last rows
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(first, name).tensors[0], getattr(second, name).tensors[0])


def test_a_file_in_si_units_is_said_once_and_a_per_unit_one_is_not(tmp_path, caplog):
    """Values far from order 1 (a bench log in volts and rad/s) are read, and said: per unit is what the searches are
    set for. Once per file and process: the two-step search reads its file twice."""
    import logging

    per_unit = str(write_measurements(tmp_path / "pu.csv", make_splits(MotorParams(n_train=40, n_val=10, n_test=10))))
    si = rows_file(tmp_path / "si.csv", [GOOD[:2] + ["314.2", "230.0"] + GOOD[4:]] * 6)
    with caplog.at_level(logging.WARNING, logger="dartboard"):
        load_dataset("pmsm", per_unit)
        assert "read per unit" not in caplog.text
        for _ in range(2):
            load_dataset("pmsm", str(tmp_path / si))
    warned = [r.getMessage() for r in caplog.records if "read per unit" in r.getMessage()]
    assert len(warned) == 1 and "|omega_e| reaches 314.2, |v_d| reaches 230: values in SI units?" in warned[0]


def test_a_search_on_the_file_equals_the_search_on_the_simulators_rows(tmp_path, capsys, monkeypatch):
    params = MotorParams(**SMALL)
    write_measurements(tmp_path / "bench.csv", make_splits(params))
    (tmp_path / "motor.json").write_text(json.dumps(SMALL))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for root in ("motor.json", "bench.csv"):
        code, err = run_here(["search", "--searcher", "pmsm-depth", "--data-root", root, "--no-mlflow", "--set",
                              "epochs=3", "--set", "warmup_epochs=1", "--out", Path(root).stem], capsys)
        assert code == 0, err[-2000:]
    history = [json.loads((tmp_path / f / "alpha_history.json").read_text()) for f in ("motor", "bench")]
    assert history[0] == history[1] and len(history[0]) >= 2  # the arch steps moved the alphas the same way
    genotypes = [json.loads((tmp_path / f / "genotype.json").read_text()) for f in ("motor", "bench")]
    assert genotypes[0] == genotypes[1]


def test_compare_on_measured_data_reports_the_criterion_and_no_flux_errors(tmp_path, capsys, monkeypatch):
    write_measurements(tmp_path / "bench.csv", make_splits(MotorParams(**SMALL)))
    monkeypatch.chdir(tmp_path)
    code, err = run_here(["pmsm", "compare", "base=pmsm-baseline", "--data-root", "bench.csv", "--seeds", "0",
                          "--epochs", "2", "--batch-size", "64", "--out", "cmp", "--no-mlflow"], capsys)
    assert code == 0, err[-2000:]
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| base "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert " +- " in cells[2] and cells[3:6] == ["n/a", "n/a", "n/a"], row
    assert "measured data: no true flux map" in table
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert summary["summary"][0]["flux_rmse"] == [None, None] and summary["runs"][0]["flux_rmse"] is None
    assert summary["summary"][0]["criterion_test"][0] > 0
    assert (tmp_path / "cmp" / "flux_maps.png").stat().st_size > 10_000


def test_compare_refuses_a_batch_larger_than_the_training_rows_before_training(tmp_path, capsys, monkeypatch):
    """The loader drops a last partial batch: with fewer rows than a batch nothing would train, silently."""
    rows_file(tmp_path / "bench.csv", [GOOD] * 12)  # 8 training rows
    line = refused_here(["pmsm", "compare", "base=pmsm-baseline", "--data-root", "bench.csv", "--seeds", "0",
                         "--epochs", "1", "--out", "cmp"], tmp_path, capsys, monkeypatch)
    assert "batch_size: 128 is larger than the training split (8 samples)" in line, line
    with pytest.raises(ValueError, match=r"batch_size: 128 is larger than the training split \(8 samples\)"):
        train_flux_model(resolve("pmsm-baseline"), load_dataset("pmsm", str(tmp_path / "bench.csv")),
                         FluxTrainConfig(epochs=1))


@pytest.mark.parametrize("header, rows, message", [
    (["I_d", "I_q", "omega_e", "v_d", "v_q", "dI_d/dt", "dI_q/dt"], [GOOD[:5] + GOOD[6:]] * 6,
     r"has no column 'R'; a file of measurements needs the columns I_d, I_q, omega_e, v_d, v_q, R, dI_d/dt, dI_q/dt"),
    (None, [GOOD] * 5 + [GOOD[:3] + ["fast"] + GOOD[4:]], r"line 7, column 'v_d': expected a number, got 'fast'"),
    (None, [GOOD] * 5 + [GOOD[:6] + ["nan"] + GOOD[7:]], r"line 7, column 'dI_d/dt': expected a finite number"),
    (None, [GOOD] * 5 + [GOOD[:4]], r"line 7: 4 cells, the header has 8"),
    (None, [GOOD] * 5, r"has 5 row\(s\) of measurements; at least 6 are needed"),
    (None, [], r"has a header but no rows of measurements"),
    ([*FEATURES, *TARGETS, "I_d"], [GOOD + ["1"]] * 6, r"names the column 'I_d' more than once"),
    ([*FEATURES, *TARGETS, "split"], [GOOD + ["train"]] * 4 + [GOOD + ["validation"]],
     r"line 6, column 'split': expected one of train, val, test, got 'validation'"),
    ([*FEATURES, *TARGETS, "split"], [GOOD + ["train"]] * 4 + [GOOD + ["val"]], r"no row of split 'test'"),
])
def test_a_bad_measurements_file_is_refused_by_line_and_column(header, rows, message, tmp_path):
    name = rows_file(tmp_path / "bench.csv", rows, header)
    with pytest.raises(DataError, match=message):
        load_dataset("pmsm", str(tmp_path / name))


def test_a_measurements_file_that_is_not_there_is_named(tmp_path, capsys, monkeypatch):
    line = refused_here(["pmsm", "compare", "base=pmsm-baseline", "--data-root", "gone.csv", "--epochs", "1"],
                        tmp_path, capsys, monkeypatch)
    assert "'gone.csv' is not a file; give a CSV file of measurements with the columns I_d, I_q" in line, line


# ------------------------------------------------------------------ a trained model's flux map as a table
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A flux model trained 2 epochs on measured data, as pmsm compare saves it; the data's largest |current|."""
    folder = tmp_path_factory.mktemp("flux")
    path = write_measurements(folder / "bench.csv", make_splits(MotorParams(**SMALL)))
    splits = load_dataset("pmsm", str(path))
    train_flux_model(resolve("pmsm-thesis"), splits, FluxTrainConfig(epochs=2, batch_size=64), folder / "model")
    return folder / "model", float(splits.train.tensors[0][:, :2].abs().max())


def read_table(path: Path) -> dict[str, torch.Tensor]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {name: torch.tensor([float(r[i]) for r in rows[1:]], dtype=torch.float64) for i, name in enumerate(rows[0])}


def test_the_flux_table_is_the_models_flux_and_its_finite_difference_inductances(trained, tmp_path, capsys):
    from safetensors.torch import load_file

    from dartboard.spaces.pmsm import FluxNet

    folder, limit = trained
    code, err = run_here(["pmsm", "flux", str(folder), "--points", "7"], capsys)
    assert code == 0, err[-2000:]
    table = read_table(folder / "flux_map.csv")
    assert list(table) == ["I_d", "I_q", "lambda_d", "lambda_q", "L_dd", "L_dq", "L_qd", "L_qq"]
    axis = torch.linspace(-limit, limit, 7, dtype=torch.float64)
    assert torch.allclose(table["I_d"], axis.repeat_interleave(7), atol=1e-6)  # I_d slowest, over the data's box
    assert torch.allclose(table["I_q"], axis.repeat(7), atol=1e-6)
    net = FluxNet(resolve("pmsm-thesis")).double()
    net.load_state_dict({k: v.double() for k, v in load_file(str(folder / "weights.safetensors")).items()})
    currents = torch.stack([table["I_d"], table["I_q"]], 1)
    with torch.no_grad():
        flux = net.flux(currents)
        h = 1e-5
        for name, (row, col) in {"L_dd": (0, 0), "L_dq": (0, 1), "L_qd": (1, 0), "L_qq": (1, 1)}.items():
            step = torch.zeros(2, dtype=torch.float64)
            step[col] = h
            slope = (net.flux(currents + step)[:, row] - net.flux(currents - step)[:, row]) / (2 * h)
            assert torch.allclose(table[name], slope, rtol=1e-4, atol=1e-4), name
    assert torch.allclose(table["lambda_d"], flux[:, 0], atol=1e-5)
    assert torch.allclose(table["lambda_q"], flux[:, 1], atol=1e-5)
    from dartboard.platform.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["pmsm", "flux", str(folder), "--points", "3", "--limit", "0.5", "--out", str(tmp_path / "lut.csv")])
    said = capsys.readouterr()
    assert done.value.code == 0, said.err[-2000:]
    assert f"3 x 3 currents over [-0.5, 0.5] p.u. written to {tmp_path / 'lut.csv'}" in said.out, said.out
    assert read_table(tmp_path / "lut.csv")["I_q"].tolist() == [-0.5, 0.0, 0.5] * 3


def test_a_flux_table_is_computed_a_chunk_of_rows_at_a_time(monkeypatch):
    """1001 x 1001 points in one forward peaked at 2.1 GB (the Jacobian's work, about 2 kB a row): the grid goes
    through the network FLUX_TABLE_CHUNK rows at a time, with the table of one forward."""
    from dartboard.spaces.pmsm import FluxNet
    from dartboard.training import pmsm as training

    torch.manual_seed(0)
    net = FluxNet(resolve("pmsm-thesis")).eval()
    whole = training.flux_table(net, 1.0, 7)
    rows, forward = [], net.forward
    monkeypatch.setattr(net, "forward", lambda x: rows.append(len(x)) or forward(x))
    monkeypatch.setattr(training, "FLUX_TABLE_CHUNK", 20)
    chunked = training.flux_table(net, 1.0, 7)
    assert rows == [20, 20, 9]
    assert list(chunked) == list(whole)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("change, args, message", [
    ("no result", [], r"no result.json there; `dartboard pmsm compare` writes a trained flux model"),
    ("old result", [], r"does not say the currents it was trained on; give the table's range with --limit"),
    ("other genotype", [], r"weights.safetensors does not fit MLP"),
    (None, ["--points", "1"], r"points: expected an integer >= 2"),
    (None, ["--points", "4098"], r"points: at most 4097 per current axis, got 4098 \(a table of 16,793,604 rows\)"),
    (None, ["--limit", "0"], r"limit: expected a finite number > 0"),
])
def test_a_flux_table_refuses_what_it_cannot_use(change, args, message, trained, tmp_path, capsys, monkeypatch):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(trained[0], folder)
    (folder / "flux_map.csv").unlink(missing_ok=True)
    result = json.loads((folder / "result.json").read_text())
    if change == "no result":
        (folder / "result.json").unlink()
    elif change == "old result":  # written before the data's box was recorded
        (folder / "result.json").write_text(json.dumps({k: v for k, v in result.items() if k != "data"}))
    elif change == "other genotype":
        from dartboard.spaces import genotype as gt

        result["genotype"] = gt.to_dict(resolve("pmsm-baseline"))
        (folder / "result.json").write_text(json.dumps(result))
    line = refused_here(["pmsm", "flux", "model", *args], tmp_path, capsys, monkeypatch)
    assert __import__("re").search(message, line), line


def test_dartboard_load_reads_a_trained_flux_models_folder(trained):
    from safetensors.torch import load_file

    import dartboard
    from dartboard.spaces.pmsm import FluxNet

    net = dartboard.load(str(trained[0]))
    assert isinstance(net, FluxNet) and not net.training and net.genotype == resolve("pmsm-thesis")
    saved = load_file(str(trained[0] / "weights.safetensors"))
    assert saved.keys() == net.state_dict().keys()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in saved.items())
