"""benchmarks/suite_timeline.py: the suite's tests on a timeline against the machine's CPU counters, checked on a
hand-made timeline of two workers on two cores, and its pytest plugin's records."""

from __future__ import annotations

import pytest
from scripts import load_script


@pytest.fixture()
def timeline():
    return load_script("benchmarks/suite_timeline.py")


def test_a_hand_made_timeline_is_taken_apart(timeline, tmp_path):
    # /proc/stat's first line, summed over 2 cores at 100 ticks a second: second 1 all busy, second 2 half idle,
    # second 3 all idle (user nice system idle iowait)
    (tmp_path / "proc_stat.log").write_text("100.0 0 0 0 0 0\n101.0 150 20 30 0 0\n102.0 220 20 60 90 10\n"
                                            "103.0 220 20 60 250 50\n")
    (tmp_path / "tests-gw0.log").write_text(
        "100.0 start tests/test_a.py::t1\n101.5 end tests/test_a.py::t1\n"
        "101.6 start tests/test_b.py::t2[x]@ray\n102.8 end tests/test_b.py::t2[x]@ray\n")
    (tmp_path / "tests-gw1.log").write_text("100.0 start tests/test_c.py::t3\n101.4 end tests/test_c.py::t3\n")
    f = timeline.analyse(timeline.read_spans(tmp_path), timeline.read_samples(tmp_path / "proc_stat.log"), cores=2)
    assert f["wall_s"] == pytest.approx(3.0)
    assert f["busy_core_s"] == pytest.approx(3.0) and f["idle_core_s"] == pytest.approx(3.0)
    assert f["busy_share"] == pytest.approx(0.5)
    assert f["worker_end_s"] == pytest.approx({"gw0": 2.8, "gw1": 1.4})
    assert dict(f["modules"]) == pytest.approx({"tests/test_a.py": 1.5, "tests/test_b.py (ray)": 1.2,
                                                "tests/test_c.py": 1.4})
    assert f["test_s"] == pytest.approx(4.1)
    # second 2 (middle 101.5): gw0 in t1, gw1 in nothing; second 3 (middle 102.5): gw0 in t2, gw1 in nothing
    assert dict(f["idle_laid"]) == pytest.approx({"(no test)": 1.5, "tests/test_b.py::t2": 1.0,
                                                  "tests/test_a.py::t1": 0.5})
    text = timeline.report(f)
    assert "3.0 core-s" not in text and "busy 3 core-s, idle 3 core-s (50.0 % busy)" in text
    assert "gw0 3 s, gw1 1 s" in text


def test_the_plugin_records_each_tests_start_and_end_per_worker(timeline, tmp_path, monkeypatch):
    monkeypatch.setenv(timeline.DIR_ENV, str(tmp_path))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    monkeypatch.setattr(timeline, "_FILE", None)
    timeline.pytest_runtest_logstart("tests/test_x.py::t", None)
    timeline.pytest_runtest_logfinish("tests/test_x.py::t", None)
    (span,) = timeline.read_spans(tmp_path)["gw7"]
    assert span[2] == "tests/test_x.py::t" and 0 <= span[1] - span[0] < 60


def test_without_its_folder_the_plugin_records_nothing(timeline, tmp_path, monkeypatch):
    monkeypatch.delenv(timeline.DIR_ENV, raising=False)
    monkeypatch.setattr(timeline, "_FILE", None)
    monkeypatch.chdir(tmp_path)
    timeline.pytest_runtest_logstart("tests/test_x.py::t", None)
    assert list(tmp_path.iterdir()) == []


def test_an_xdist_controller_records_nothing_its_workers_and_a_plain_run_do(timeline, tmp_path, monkeypatch):
    """The controller hears every worker's tests again: its records would count each test twice."""
    from types import SimpleNamespace

    monkeypatch.setenv(timeline.DIR_ENV, str(tmp_path))
    monkeypatch.setattr(timeline, "_FILE", None)
    monkeypatch.setattr(timeline, "_RECORDS", True)
    for config, records in ((SimpleNamespace(option=SimpleNamespace(numprocesses=2)), False),
                            (SimpleNamespace(option=SimpleNamespace(numprocesses=2), workerinput={}), True),
                            (SimpleNamespace(option=SimpleNamespace()), True)):
        timeline.pytest_configure(config)
        assert timeline._RECORDS is records
    timeline.pytest_configure(SimpleNamespace(option=SimpleNamespace(numprocesses=2)))
    timeline.pytest_runtest_logstart("tests/test_x.py::t", None)
    assert list(tmp_path.iterdir()) == []
