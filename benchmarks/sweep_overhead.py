"""Scheduling overhead of a sweep: wall time versus (sum of trial times) / concurrency.

    python benchmarks/sweep_overhead.py                 # runs the bundled digits preset, then measures
    python benchmarks/sweep_overhead.py --run-dir DIR   # measures a finished sweep's run directory

overhead = wall / (sum of trial times / max_concurrent) - 1 (goal: < 10% on 2 CPU cores). A trial's
time is Tune's ``time_total_s`` (its function running, TorchTrainer start-up included). Inside
trials the time is split into start-up (trial start to the first epoch report minus one epoch:
controller + worker processes importing torch, process group, data, supernet) and epochs. What
``wall`` adds on top is Tune's own scheduling: Ray start, trial actor launch, Optuna suggestions,
experiment-state syncing, and slots left idle while the last trials run (tail).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def trial_reports(run_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for result in sorted(run_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def analyse(run_dir: Path, wall: float, concurrency: int) -> dict[str, float]:
    reports = trial_reports(run_dir)
    trial_times, startups, epochs = [], [], []
    for rows in reports.values():
        trial_times.append(max(r["time_total_s"] for r in rows))
        iters = [r["time_this_iter_s"] for r in rows]
        epochs.extend(iters[1:])
        startups.append(iters[0])
    epoch_s = statistics.median(epochs) if epochs else 0.0
    startup_s = [max(0.0, s - epoch_s) for s in startups]
    ideal = sum(trial_times) / concurrency
    return {"trials": len(reports), "wall_s": wall, "sum_trial_s": sum(trial_times), "concurrency": concurrency,
            "ideal_s": ideal, "overhead": wall / ideal - 1 if ideal else float("nan"),
            "median_epoch_s": epoch_s, "mean_trial_startup_s": statistics.mean(startup_s) if startup_s else 0.0,
            "startup_share_of_trial_time": sum(startup_s) / sum(trial_times) if trial_times else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a finished sweep's run directory (skips running the preset)")
    parser.add_argument("--wall", type=float, help="wall seconds of that sweep (default: from its result file)")
    parser.add_argument("--study", default="digits")
    parser.add_argument("--storage", default="runs/bench-sweeps")
    args = parser.parse_args()
    if args.run_dir:
        run_dir = Path(args.run_dir)
        import yaml

        wall = args.wall or _wall_from_trials(run_dir)
        concurrency = yaml.safe_load((run_dir / "study.yaml").read_text())["max_concurrent"]
    else:
        from dartboard.platform.sweep import load_study, run_sweep

        # The champion's training from scratch after the sweep is not scheduling: left out of the wall time.
        cfg = load_study(args.study, {"storage": args.storage, "final_training": None})
        start = time.perf_counter()
        result = run_sweep(cfg, mlflow=False)
        wall = time.perf_counter() - start  # includes Ray start-up
        run_dir, concurrency = Path(result.run_dir), cfg.max_concurrent
        print(f"Tuner.fit: {result.seconds:.1f} s; with Ray start-up: {wall:.1f} s")
    m = analyse(run_dir, wall, concurrency)
    print(f"trials: {m['trials']}  concurrency: {m['concurrency']}")
    print(f"wall: {m['wall_s']:.1f} s   sum of trial times / concurrency: {m['ideal_s']:.1f} s   "
          f"overhead: {100 * m['overhead']:.1f}%")
    print(f"inside trials: median epoch {m['median_epoch_s']:.1f} s, mean start-up {m['mean_trial_startup_s']:.1f} s "
          f"({100 * m['startup_share_of_trial_time']:.0f}% of trial time: TorchTrainer controller + worker start, "
          f"torch import, process group, data, supernet build)")


def _wall_from_trials(run_dir: Path) -> float:
    """First trial start to last trial end, from the trials' own reports (no Ray start-up)."""
    starts, ends = [], []
    for rows in trial_reports(run_dir).values():
        ends.append(max(r["timestamp"] for r in rows))
        starts.append(min(r["timestamp"] - r["time_total_s"] for r in rows))
    return max(ends) - min(starts)


if __name__ == "__main__":
    main()
