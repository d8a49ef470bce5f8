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


def test_a_local_ray_that_does_not_start_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    """Ray's startup timeout (seen on an overloaded machine) is neither the user's input nor a bug:
    one line naming Ray, exit 1, no traceback; any other failure of ray.init stays a bug."""
    ray = pytest.importorskip("ray")

    def timed_out(*args, **kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the "
                        "raylet failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    code = _exit_code(["sweep", "--no-mlflow", "--storage", str(tmp_path / "s"), "--num-samples", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: ray: the local Ray instance did not start in time") and "overloaded" in line

    from dartboard.platform.ray.session import init_ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(Exception("something else")))
    with pytest.raises(Exception, match="something else"):
        init_ray(num_cpus=1)
