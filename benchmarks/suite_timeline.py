"""Where the test suite's wall time goes: the README's test command, run with each test's start and end recorded
per xdist worker and the machine's CPU counters (/proc/stat) read every second, then taken apart.

It prints the wall time, the cores' busy and idle seconds (the share of the machine the suite used), when each
worker ended, the test time of the largest modules (Ray-marked tests apart) and the idle core-seconds laid to the
tests running at the time. A suite whose cores are nearly always busy is shortened only by less CPU work; idle
seconds laid to a test point at waits (sleeps, timeouts, a worker with nothing left to take).

Run from the repository's root (Linux): ``python benchmarks/suite_timeline.py [--out DIR] [-- PYTEST_ARGS]`` (the
logs go to DIR, by default a folder in the system's temporary directory);
the arguments after ``--`` replace the README's ``-q -n 2 --dist loadgroup``. The script is also the pytest
plugin that records the tests (``-p suite_timeline``, writing to ``$SUITE_TIMELINE_DIR``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

DIR_ENV = "SUITE_TIMELINE_DIR"
README_ARGS = ["-q", "-n", "2", "--dist", "loadgroup"]


# ------------------------------------------------------------------ the plugin (in each pytest process)
def _log():
    folder = os.environ.get(DIR_ENV)
    if not folder:
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return open(Path(folder) / f"tests-{worker}.log", "a", buffering=1)  # noqa: SIM115 - one line per event


_FILE = None
_RECORDS = True  # False in an xdist controller, which hears every worker's tests again


def pytest_configure(config):
    global _RECORDS
    _RECORDS = hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)


def _write(kind: str, nodeid: str) -> None:
    global _FILE
    if not _RECORDS:
        return
    if _FILE is None:
        _FILE = _log()
    if _FILE is not None:
        _FILE.write(f"{time.time():.3f} {kind} {nodeid}\n")


def pytest_runtest_logstart(nodeid, location):
    _write("start", nodeid)


def pytest_runtest_logfinish(nodeid, location):
    _write("end", nodeid)


# ------------------------------------------------------------------ reading what was recorded
def read_spans(folder: Path) -> dict[str, list[tuple[float, float, str]]]:
    """Per worker: (start, end, node id) of each test, in the order run."""
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for path in sorted(folder.glob("tests-*.log")):
        started: dict[str, float] = {}
        mine = spans.setdefault(path.stem.removeprefix("tests-"), [])
        for line in path.read_text().splitlines():
            stamp, kind, nodeid = line.split(" ", 2)
            if kind == "start":
                started[nodeid] = float(stamp)
            elif nodeid in started:
                mine.append((started.pop(nodeid), float(stamp), nodeid))
    return spans


def read_samples(path: Path) -> list[tuple[float, int, int]]:
    """(time, busy ticks, idle ticks) of each /proc/stat reading, summed over all cores (idle includes iowait)."""
    samples = []
    for line in path.read_text().splitlines():
        stamp, *ticks = line.split()
        user, nice, system, idle, iowait = (int(t) for t in ticks[:5])
        samples.append((float(stamp), user + nice + system, idle + iowait))
    return samples


def module_of(nodeid: str) -> str:
    return nodeid.split("::")[0] + (" (ray)" if nodeid.endswith("@ray") else "")


def analyse(spans: dict[str, list[tuple[float, float, str]]], samples: list[tuple[float, int, int]],
            cores: int) -> dict:
    """The timeline's figures: wall, busy and idle core-seconds, each worker's end (from the first sample), the test
    time per module and the idle core-seconds laid to the tests running (half to each of two workers' tests, all of
    it to "(no test)" where a worker runs none)."""
    t0, t1 = samples[0][0], samples[-1][0]
    busy = idle = 0.0
    laid: Counter = Counter()
    for (a, busy_a, idle_a), (b, busy_b, idle_b) in zip(samples, samples[1:], strict=False):
        ticks = (busy_b - busy_a) + (idle_b - idle_a)
        if ticks <= 0:
            continue
        seconds = (b - a) * cores
        idle_here = seconds * (idle_b - idle_a) / ticks
        busy += seconds - idle_here
        idle += idle_here
        if idle_here <= 0:
            continue
        middle = (a + b) / 2
        for worker_spans in spans.values():
            running = next((n for s, e, n in worker_spans if s <= middle <= e), None)
            laid[running.split("[")[0] if running else "(no test)"] += idle_here / max(1, len(spans))
    per_module: Counter = Counter()
    for worker_spans in spans.values():
        for s, e, n in worker_spans:
            per_module[module_of(n)] += e - s
    return {"wall_s": t1 - t0, "busy_core_s": busy, "idle_core_s": idle, "cores": cores,
            "busy_share": busy / (busy + idle) if busy + idle else 0.0,
            "worker_end_s": {w: (max(e for _, e, _ in sp) - t0) for w, sp in spans.items() if sp},
            "test_s": sum(per_module.values()), "modules": per_module.most_common(), "idle_laid": laid.most_common()}


def report(figures: dict, top: int = 15) -> str:
    lines = [f"wall {figures['wall_s']:.0f} s on {figures['cores']} cores: busy {figures['busy_core_s']:.0f} "
             f"core-s, idle {figures['idle_core_s']:.0f} core-s ({100 * figures['busy_share']:.1f} % busy)",
             "workers ended at " + ", ".join(f"{w} {t:.0f} s" for w, t in sorted(figures["worker_end_s"].items())),
             f"test time {figures['test_s']:.0f} s; the largest modules:"]
    lines += [f"  {seconds:7.1f} s  {name}" for name, seconds in figures["modules"][:top]]
    lines.append("idle core-seconds laid to the tests running then:")
    lines += [f"  {seconds:7.1f} s  {name}" for name, seconds in figures["idle_laid"][:top]]
    return "\n".join(lines)


# ------------------------------------------------------------------ running the suite
def _sample(path: Path, stop: threading.Event) -> None:
    with path.open("w") as out:
        while True:
            with open("/proc/stat") as stat:
                ticks = stat.readline().split()[1:6]
            out.write(f"{time.time():.3f} {' '.join(ticks)}\n")
            out.flush()
            if stop.wait(1.0):
                return


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else None
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dartboard-suite-timeline",
                    help="where the logs go (emptied first)")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if not Path("/proc/stat").is_file():
        ap.error("needs Linux's /proc/stat")
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.log"):
        old.unlink()
    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, DIR_ENV: str(args.out.resolve()),
           "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(args.out / "proc_stat.log", stop), daemon=True)
    sampler.start()
    try:
        code = subprocess.call([sys.executable, "-m", "pytest", *(README_ARGS if extra is None else extra),
                                "-p", "suite_timeline"], env=env)
    finally:
        stop.set()
        sampler.join()
    figures = analyse(read_spans(args.out), read_samples(args.out / "proc_stat.log"), os.cpu_count() or 1)
    print(report(figures))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
