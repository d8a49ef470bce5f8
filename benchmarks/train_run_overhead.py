"""Fixed cost of one Ray Train run: Ray's TorchTrainer against dartboard's DartboardTrainer.

    python benchmarks/train_run_overhead.py [--rounds 4]

Both trainers run the same trivial loop (import torch, report once) on one worker, interleaved
(plain, dartboard, plain, ...) in one private local Ray instance started by ``session.init_ray``, so
the machine's load hits both alike. For every run it prints the wall time of ``fit()`` and the Ray
processes that the run started, with their CPU seconds (sampled from /proc every 0.1 s while the run
lasts, so a process's last tenth of a second can be missed). The ratio lines compare the medians.
DartboardTrainer leaves out the DatasetManager and PlacementGroupCleaner actors and the metrics
callbacks on a private instance (``dartboard/platform/ray/trainer.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict

TICK = os.sysconf("SC_CLK_TCK")


def ray_processes() -> dict[int, tuple[str, float]]:
    """pid -> (Ray process title, CPU seconds so far) for every ``ray::`` process of this session (the
    Ray instance this script started; other users' Ray processes are in other sessions)."""
    out, session = {}, os.getsid(0)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
            if not title.startswith("ray::"):
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) != session:
                continue
            out[int(pid)] = (title.split()[0].split(".")[0], (int(fields[11]) + int(fields[12])) / TICK)
        except OSError:
            continue
    return out


def measured_fit(trainer) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``trainer.fit()`` and CPU seconds of the Ray processes it started, by title."""
    before = set(ray_processes())
    seen: dict[int, tuple[str, float]] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid, value in ray_processes().items():
                if pid not in before:
                    seen[pid] = value
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - start
    stop.set()
    thread.join()
    by_title: dict[str, float] = defaultdict(float)
    for title, cpu in seen.values():
        by_title[title] += cpu
    return wall, dict(by_title)


def loop(config) -> None:
    import torch  # noqa: F401 - what every dartboard worker imports
    from ray import train

    train.report({"done": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if os.getsid(0) != os.getpid():
        os.setsid()  # this script's Ray instance in a session of its own (ray_processes)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dartboard.platform.ray.session import init_ray
    from dartboard.platform.ray.trainer import DartboardTrainer

    init_ray(num_cpus=2)
    storage = tempfile.mkdtemp(prefix="train-run-overhead-")
    results: dict[str, list[tuple[float, dict[str, float]]]] = {"TorchTrainer": [], "DartboardTrainer": []}
    for r in range(args.rounds):
        for name, cls in (("TorchTrainer", TorchTrainer), ("DartboardTrainer", DartboardTrainer)):
            trainer = cls(loop, scaling_config=ScalingConfig(num_workers=1),
                          run_config=RunConfig(name=f"{name}-{r}", storage_path=storage))
            wall, cpu = measured_fit(trainer)
            results[name].append((wall, cpu))
            print(f"round {r} {name:16s} fit {wall:5.1f} s  processes {len(cpu)}  CPU {sum(cpu.values()):5.1f} s  "
                  + ", ".join(f"{k[5:]} {v:.1f}" for k, v in sorted(cpu.items())), flush=True)
    import ray

    ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
    med = {name: (statistics.median(w for w, _ in rows), statistics.median(sum(c.values()) for _, c in rows))
           for name, rows in results.items()}
    for name, (wall, cpu) in med.items():
        print(f"median {name:16s} fit {wall:5.1f} s  CPU of its Ray processes {cpu:5.1f} s")
    (pw, pc), (dw, dc) = med["TorchTrainer"], med["DartboardTrainer"]
    print(f"ratio DartboardTrainer / TorchTrainer: wall {dw / pw:.2f}x, CPU {dc / pc:.2f}x")


if __name__ == "__main__":
    main()
