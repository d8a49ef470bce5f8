"""Scheduling overhead of a sweep: wall time versus (sum of trial times) / concurrency.

    python benchmarks/sweep_overhead.py                 # runs the bundled digits preset, then measures
    python benchmarks/sweep_overhead.py --run-dir DIR   # measures a finished sweep's run directory

overhead = wall / (sum of trial times / max_concurrent) - 1 (goal: < 10% on 2 CPU cores). A trial's
time is Tune's ``time_total_s`` (its function running, TorchTrainer start-up included). Inside
trials the time is split into start-up (trial start to the first epoch report minus one epoch:
controller + worker processes importing torch, process group, data, supernet) and epochs. What
``wall`` adds on top (``wall - ideal``) is taken apart on the study's timeline (:func:`breakdown`): before the
first trial (Ray's start, the study's set-up), after the last one (results, Ray's stop), and per slot of the
concurrency: the gaps between its trials (Tune's reset of the slot's reused trial actor; before 2026-12-05, a
fresh actor's start), its idle time at the end while another slot's trial runs (tail) or at the start, and the
time inside the trials' spans that Tune's trial time leaves out (the last report reaching the driver). It also
prints the overhead without the idle end, ``(wall - ideal - tail) / ideal``: what it would be were the slots' last
trials to end together, i.e. without the loss of packing whole trials into the slots.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

#: the study's result file (``platform.ray.storage.RESULT_FILE``), whose trials carry the driver's ``span``
RESULT_FILE = "study_result.json"


def trial_reports(run_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for result in sorted(run_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def driver_spans(run_dir: Path) -> dict[str, tuple[float, float]]:
    """Trial id -> (start, end) as the study's driver saw them (the result file's ``span``; trials that ended
    under an earlier driver of a resumed study have none)."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return {}
    trials = json.loads(path.read_text()).get("trials", [])
    return {t["trial_id"]: (float(t["span"][0]), float(t["span"][1])) for t in trials
            if t.get("span") and None not in t["span"]}


def reported_span(rows: list[dict]) -> tuple[float, float]:
    """A trial's (start, end) from its reports alone: Tune's ``timestamp`` is whole seconds (rounded down), so
    ``timestamp - time_total_s`` is at most the start; the largest over the reports is the closest."""
    start = max(r["timestamp"] - r["time_total_s"] for r in rows)
    return start, start + max(r["time_total_s"] for r in rows)


def breakdown(spans: list[tuple[float, float]], trial_times: list[float], concurrency: int,
              sweep: tuple[float, float] | None = None) -> dict[str, float]:
    """``wall - sum(trial_times) / concurrency`` taken apart (seconds of wall time; per-slot terms are summed over
    the slots and divided by ``concurrency``). ``spans``: each trial's (start, end); ``sweep``: the sweep's own
    (start, end), else the first start and the last end. Trials go to slots in start order, each to the slot
    freed last before it started (Tune starts the next trial when one ends); a slot no trial used is idle
    throughout. The terms add up to ``wall - ideal`` exactly when no two trials of a slot overlap."""
    if len(spans) != len(trial_times):
        raise ValueError(f"breakdown: {len(spans)} spans for {len(trial_times)} trial times")
    if concurrency < 1:
        raise ValueError(f"breakdown: concurrency must be >= 1, got {concurrency}")
    if not spans:
        raise ValueError("breakdown: no trials")
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    first, last = spans[order[0]][0], max(end for _, end in spans)
    start, end = sweep if sweep is not None else (first, last)
    slots: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    for i in order:
        s, _ = spans[i]
        free = [k for k, slot in enumerate(slots) if not slot or slot[-1][1] <= s]
        if free:  # the slot freed last before this start (an empty slot counts as freed at the first start)
            k = max(free, key=lambda k: slots[k][-1][1] if slots[k] else first)
        else:  # overlaps every slot (clock noise): the slot that ends first
            k = min(range(concurrency), key=lambda k: slots[k][-1][1])
        slots[k].append(spans[i])
    gaps = sum(b[0] - a[1] for slot in slots for a, b in zip(slot, slot[1:], strict=False))
    n_gaps = sum(max(0, len(slot) - 1) for slot in slots)
    tail = sum(last - (slot[-1][1] if slot else first) for slot in slots)
    lead = sum(slot[0][0] - first for slot in slots if slot)
    outside = sum((e - s) - t for (s, e), t in zip(spans, trial_times, strict=True))
    wall = end - start
    ideal = sum(trial_times) / concurrency
    return {"wall_s": wall, "ideal_s": ideal, "overhead_s": wall - ideal,
            "before_first_s": first - start, "after_last_s": end - last,
            "gaps_s": gaps / concurrency, "gap_count": n_gaps, "mean_gap_s": gaps / n_gaps if n_gaps else 0.0,
            "tail_s": tail / concurrency, "lead_s": lead / concurrency,
            "outside_trial_time_s": outside / concurrency,
            # the overhead were the slots' last trials to end together (what packing whole trials into the slots
            # adds at the end left out): (wall - ideal - tail) / ideal
            "overhead_without_tail": (wall - ideal - tail / concurrency) / ideal if ideal else float("nan")}


def analyse(run_dir: Path, wall: float, concurrency: int, sweep: tuple[float, float] | None = None
            ) -> dict[str, float]:
    reports = trial_reports(run_dir)
    precise = driver_spans(run_dir)
    trial_times, startups, epochs, spans = [], [], [], []
    for trial_id, rows in reports.items():
        trial_times.append(max(r["time_total_s"] for r in rows))
        iters = [r["time_this_iter_s"] for r in rows]
        epochs.extend(iters[1:])
        startups.append(iters[0])
        spans.append(precise.get(trial_id) or reported_span(rows))
    epoch_s = statistics.median(epochs) if epochs else 0.0
    startup_s = [max(0.0, s - epoch_s) for s in startups]
    ideal = sum(trial_times) / concurrency
    out = {"trials": len(reports), "wall_s": wall, "sum_trial_s": sum(trial_times), "concurrency": concurrency,
           "ideal_s": ideal, "overhead": wall / ideal - 1 if ideal else float("nan"),
           "median_epoch_s": epoch_s, "mean_trial_startup_s": statistics.mean(startup_s) if startup_s else 0.0,
           "startup_share_of_trial_time": sum(startup_s) / sum(trial_times) if trial_times else 0.0,
           "driver_spans": sum(t in precise for t in reports)}
    if spans:
        out["breakdown"] = breakdown(spans, trial_times, concurrency, sweep)
    return out


def describe(b: dict[str, float], concurrency: int) -> str:
    return (f"wall - ideal = {b['overhead_s']:.1f} s: {b['before_first_s']:.1f} s before the first trial (Ray's "
            f"start, the study's set-up), {b['after_last_s']:.1f} s after the last (results, Ray's stop); per slot "
            f"(summed over the {concurrency} slots, / {concurrency}): {b['gaps_s']:.1f} s between trials "
            f"({b['gap_count']} gaps, {b['mean_gap_s']:.1f} s each), {b['tail_s']:.1f} s idle at the end, "
            f"{b['lead_s']:.1f} s idle at the start, {b['outside_trial_time_s']:.1f} s of the trials' spans "
            f"outside Tune's trial time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a finished sweep's run directory (skips running the preset)")
    parser.add_argument("--wall", type=float, help="wall seconds of that sweep (default: from its result file)")
    parser.add_argument("--study", default="digits")
    parser.add_argument("--storage", default="runs/bench-sweeps")
    args = parser.parse_args()
    sweep = None
    if args.run_dir:
        run_dir = Path(args.run_dir)
        import yaml

        wall = args.wall or _wall_from_trials(run_dir)
        concurrency = yaml.safe_load((run_dir / "study.yaml").read_text())["max_concurrent"]
    else:
        from dartboard.platform.sweep import load_study, run_sweep

        # The champion's training from scratch after the sweep is not scheduling: left out of the wall time.
        cfg = load_study(args.study, {"storage": args.storage, "final_training": None})
        start, clock = time.perf_counter(), time.time()
        result = run_sweep(cfg, mlflow=False)
        wall = time.perf_counter() - start  # includes Ray start-up
        sweep = (clock, clock + wall)
        run_dir, concurrency = Path(result.run_dir), cfg.max_concurrent
        print(f"Tuner.fit: {result.seconds:.1f} s; with Ray start-up: {wall:.1f} s")
    m = analyse(run_dir, wall, concurrency, sweep)
    print(f"trials: {m['trials']}  concurrency: {m['concurrency']}")
    print(f"wall: {m['wall_s']:.1f} s   sum of trial times / concurrency: {m['ideal_s']:.1f} s   "
          f"overhead: {100 * m['overhead']:.1f}%")
    print(f"inside trials: median epoch {m['median_epoch_s']:.1f} s, mean start-up {m['mean_trial_startup_s']:.1f} s "
          f"({100 * m['startup_share_of_trial_time']:.0f}% of trial time: TorchTrainer controller + worker start, "
          f"torch import, process group, data, supernet build)")
    if "breakdown" in m:
        source = ("the driver's trial spans" if m["driver_spans"] == m["trials"] else
                  f"the driver's spans for {m['driver_spans']} of {m['trials']} trials, the others from their "
                  f"reports (whole seconds)")
        print(f"timeline ({source}): {describe(m['breakdown'], concurrency)}")
        print(f"overhead without the idle end (the slots' last trials ending together): "
              f"{100 * m['breakdown']['overhead_without_tail']:.1f}%")


def _wall_from_trials(run_dir: Path) -> float:
    """First trial start to last trial end, from the trials' own reports (no Ray start-up)."""
    spans = [reported_span(rows) for rows in trial_reports(run_dir).values()]
    return max(end for _, end in spans) - min(start for start, _ in spans)


if __name__ == "__main__":
    main()
