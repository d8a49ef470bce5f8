"""A study in which no trial completes is a failure: `sweep` and `ablate` exit 1 (no recommendation)."""

from __future__ import annotations

import pytest

from dartboard.platform.cli import main


def _exit_code(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def _result(tmp_path, status: str):
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.runner import StudyResult

    trial = {"trial_id": "t1", "key": "darts/s0", "status": status, "error": "boom" if status == "error" else None,
             "objective": None, "epoch": None, "config": {}, "variant": "darts", "genotype": None}
    return StudyResult(str(tmp_path), StudyConfig(name="s"), [trial], None, 1.0, {status: 1})


@pytest.mark.parametrize("status", ["error", "pruned"])
def test_sweep_without_a_complete_trial_exits_1(tmp_path, monkeypatch, capsys, status):
    import dartboard.platform.sweep as sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: _result(tmp_path, status))
    assert _exit_code(["sweep", "--no-mlflow"]) == 1
    assert "no trial completed" in capsys.readouterr().out


def test_ablate_without_a_complete_trial_exits_1(tmp_path, monkeypatch, capsys):
    import dartboard.platform.ablation as ablation

    result = _result(tmp_path, "error")
    monkeypatch.setattr(ablation, "run_ablation", lambda *a, **k: {"result": result, "run_dir": str(tmp_path),
                                                                   "table_md": str(tmp_path / "none.md")})
    assert _exit_code(["ablate", "ablation_maile_table1", "--no-mlflow"]) == 1
    assert "no trial of the study completed" in capsys.readouterr().err
