"""`dartboard search --config RUN.yaml`: the searcher options that are flags of the command (space, start, epochs,
order, precision) may stand at the top of the file, as a study file gives `epochs`; before, `epochs: 1` there was
refused as "epochs: Extra inputs are not permitted". Given both there and under `options`, refused by name; a flag
overrides either."""

from __future__ import annotations

import json

from test_cli_bad_input import refused_here
from test_cli_contract import run_main


def test_a_flagged_option_at_the_top_of_a_run_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "run.yaml").write_text("searcher: darts\nepochs: 1\noptions: {C: 2, layers: 3}\n")
    code, _, err = run_main(["search", "-c", "run.yaml", "--no-mlflow", "--out", "one"], capsys)
    assert code == 0, err[-3000:]
    assert len(json.loads((tmp_path / "one" / "history.json").read_text())) == 1
    code, _, err = run_main(["search", "-c", "run.yaml", "--epochs", "2", "--no-mlflow", "--out", "two"], capsys)
    assert code == 0, err[-3000:]
    assert len(json.loads((tmp_path / "two" / "history.json").read_text())) == 2  # the flag wins


def test_a_flagged_option_given_twice_in_a_run_config_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "run.yaml").write_text("searcher: darts\nepochs: 1\noptions: {C: 2, layers: 3, epochs: 2}\n")
    line = refused_here(["search", "-c", "run.yaml", "--no-mlflow", "--out", "s"], tmp_path, capsys, monkeypatch)
    assert line == "error: --config: epochs is given both at the top of the file and under options; give it once"
