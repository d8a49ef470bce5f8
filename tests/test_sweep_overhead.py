"""benchmarks/sweep_overhead.py: the overhead of a sweep (wall - sum of trial times / concurrency) taken apart on
the study's timeline, against hand-computed schedules; the driver's trial spans read from the study's result
file, the trials' own reports (whole-second timestamps) where a trial has none."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/sweep_overhead.py")


def test_a_hand_computed_schedule_of_two_slots(bench):
    # slot 0: A (0-10), D (11-14); slot 1: B (0.5-6), C (7-15); the sweep ran from -5 to 17
    spans = [(0.0, 10.0), (0.5, 6.0), (7.0, 15.0), (11.0, 14.0)]
    times = [9.0, 5.5 - 0.5, 8.0, 3.0]  # A's span is 1 s longer than its trial time, B's 0.5 s
    b = bench.breakdown(spans, times, 2, sweep=(-5.0, 17.0))
    assert b["wall_s"] == 22.0 and b["ideal_s"] == 12.5 and b["overhead_s"] == 9.5
    assert b["before_first_s"] == 5.0 and b["after_last_s"] == 2.0
    assert b["gaps_s"] == 1.0 and b["gap_count"] == 2 and b["mean_gap_s"] == 1.0  # 11 - 10 and 7 - 6, over 2 slots
    assert b["tail_s"] == 0.5  # slot 0 idle from 14 to 15
    assert b["overhead_without_tail"] == (9.5 - 0.5) / 12.5
    assert b["lead_s"] == 0.25  # slot 1 started 0.5 s after slot 0
    assert b["outside_trial_time_s"] == 0.75  # (1 + 0.5) / 2
    terms = ("before_first_s", "after_last_s", "gaps_s", "tail_s", "lead_s", "outside_trial_time_s")
    assert sum(b[k] for k in terms) == b["overhead_s"]


def test_the_terms_add_up_to_the_overhead_on_simulated_schedules(bench):
    rng = random.Random(0)
    terms = ("before_first_s", "after_last_s", "gaps_s", "tail_s", "lead_s", "outside_trial_time_s")
    for _ in range(50):
        slots, n = rng.randint(1, 4), rng.randint(1, 12)
        free = [rng.uniform(0, 3) for _ in range(slots)]
        spans, times = [], []
        for _ in range(n):  # Tune's way: the next trial takes the slot that frees first
            k = min(range(slots), key=free.__getitem__)
            start = free[k] + rng.uniform(0, 2)
            length = rng.uniform(1, 20)
            spans.append((start, start + length))
            times.append(length - rng.uniform(0, 0.5))
            free[k] = start + length
        sweep = (-rng.uniform(0, 8), max(e for _, e in spans) + rng.uniform(0, 3))
        b = bench.breakdown(spans, times, slots, sweep)
        assert sum(b[k] for k in terms) == pytest.approx(b["overhead_s"], abs=1e-9)
        assert b["overhead_s"] == pytest.approx(sweep[1] - sweep[0] - sum(times) / slots, abs=1e-9)
        assert min(b[k] for k in terms) >= -1e-9


def test_a_slot_no_trial_used_is_idle_throughout(bench):
    b = bench.breakdown([(0.0, 4.0), (1.0, 6.0)], [4.0, 5.0], 3)
    assert b["tail_s"] == pytest.approx((2.0 + 0.0 + 6.0) / 3)  # slot 0 idle 4-6, slot 2 idle 0-6
    assert b["lead_s"] == pytest.approx(1.0 / 3)


@pytest.mark.parametrize("args, message", [
    (([(0.0, 1.0)], [1.0, 2.0], 1), "1 spans for 2 trial times"),
    (([(0.0, 1.0)], [1.0], 0), "concurrency must be >= 1"),
    (([], [], 2), "no trials"),
])
def test_bad_input_is_named(bench, args, message):
    with pytest.raises(ValueError, match=message):
        bench.breakdown(*args)


def _run_dir(tmp_path: Path, spans: dict[str, list[float] | None]) -> Path:
    """Two trials' report files (Tune's whole-second timestamps) and, with ``spans``, the study's result file."""
    run = tmp_path / "run"
    reports = {"a": [(1000, 3.6), (1004, 7.9)], "b": [(1009, 5.2)]}  # (timestamp, time_total_s) per report
    for trial, rows in reports.items():
        d = run / f"run_trial_{trial}"
        d.mkdir(parents=True)
        d.joinpath("result.json").write_text("".join(
            json.dumps({"trial_id": trial, "timestamp": ts, "time_total_s": tt,
                        "time_this_iter_s": tt - (rows[i - 1][1] if i else 0.0)}) + "\n"
            for i, (ts, tt) in enumerate(rows)))
    if spans is not None:
        run.joinpath("study_result.json").write_text(json.dumps(
            {"trials": [{"trial_id": t, "span": s} for t, s in spans.items()]}))
    return run


def test_the_analysis_takes_the_driver_spans_from_the_result_file(bench, tmp_path):
    run = _run_dir(tmp_path, {"a": [995.5, 1004.5], "b": [1003.0, 1009.5]})
    m = bench.analyse(run, 20.0, 2, sweep=(990.0, 1010.0))
    assert m["driver_spans"] == 2 and m["sum_trial_s"] == pytest.approx(7.9 + 5.2)
    b = m["breakdown"]
    assert b["before_first_s"] == pytest.approx(5.5) and b["after_last_s"] == pytest.approx(0.5)
    assert b["outside_trial_time_s"] == pytest.approx(((9.0 - 7.9) + (6.5 - 5.2)) / 2)


def test_without_driver_spans_the_reports_give_them(bench, tmp_path):
    # a resumed study: trial b ended under an earlier driver and has no span
    run = _run_dir(tmp_path, {"a": [995.5, 1004.5], "b": None})
    m = bench.analyse(run, 20.0, 2)
    assert m["driver_spans"] == 1
    # b: timestamp 1009 is whole seconds, so its start is at least 1009 - 5.2
    assert bench.reported_span([{"timestamp": 1009, "time_total_s": 5.2}]) == pytest.approx((1003.8, 1009.0))
    # of several reports the latest bound: max(1000 - 3.6, 1004 - 7.9) = 996.4
    assert bench.reported_span([{"timestamp": 1000, "time_total_s": 3.6}, {"timestamp": 1004, "time_total_s": 7.9}]
                               ) == pytest.approx((996.4, 1004.3))
    assert m["breakdown"]["wall_s"] == pytest.approx(1009.0 - 995.5)  # first start to last end, no sweep given


def test_a_finished_run_directorys_wall_is_first_start_to_last_end_of_the_reports(bench, tmp_path):
    run = _run_dir(tmp_path, None)  # a: from 996.4 (the closer of its two bounds) to 1004.3; b: 1003.8 to 1009.0
    assert bench._wall_from_trials(run) == pytest.approx(1009.0 - 996.4)
