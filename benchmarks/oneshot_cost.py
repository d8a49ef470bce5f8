"""GDAS and PC-DARTS against DARTS on the same supernet, in one run: step time and peak memory, as ratios.

Every variant is its preset on the DARTS space (8 ops with none) with the same network, batch and
seed; one search step (alpha step + weight step) is the unit. Time: the median of ``--repeats``
steps after ``--warmup`` steps, the variants interleaved step by step so that a shared machine's
load hits them alike; on the CPU the process's CPU time (one thread) is the measure, which a loaded
machine inflates far less than the wall time (both are printed). Peak memory: what ``--mem-steps``
further steps allocate and still hold (CPU: the torch profiler's allocation records, as ``dartboard bench
memory``; CUDA: ``torch.cuda.max_memory_allocated``). PC-DARTS runs without its warm-up so its alpha step is timed too.

Run: ``python benchmarks/oneshot_cost.py`` (``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from dartboard.bench.memory import Setting, measure
from dartboard.searchers.registry import DataShape, build_searcher

VARIANTS = {"darts": {}, "gdas": {}, "pc-darts": {"warmup_epochs": 0}}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_times(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    shape = DataShape(3, args.input_size, 10)
    searchers, batches = {}, {}
    for name, extra in VARIANTS.items():
        torch.manual_seed(0)
        searchers[name] = build_searcher(name, {"C": args.C, "layers": args.layers, "epochs": 1, **extra}, shape,
                                         args.device)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        batches[i] = (torch.randn(args.batch, 3, args.input_size, args.input_size, generator=g).to(args.device),
                      torch.randint(0, 10, (args.batch,), generator=g).to(args.device))
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in VARIANTS}
    for i in range(args.warmup + args.repeats):
        for name, s in searchers.items():  # interleaved: the same load for every variant
            _sync(args.device)
            start, cpu = time.perf_counter(), time.process_time()
            s.step(batches[0], batches[1])
            _sync(args.device)
            if i >= args.warmup:
                times[name]["wall"].append(time.perf_counter() - start)
                times[name]["cpu"].append(time.process_time() - cpu)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--C", type=int, default=16)  # DARTS search: 16 channels ...
    parser.add_argument("--layers", type=int, default=5)  # ... 8 cells (5 here: CPU-sized)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mem-steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times = step_times(args)
    setting = Setting(batch=args.batch, C=args.C, layers=args.layers, input_size=args.input_size,
                      steps=args.mem_steps, device=args.device, threads=args.threads)
    memory = {name: measure(name, dict(extra), setting) for name, extra in VARIANTS.items()}
    clock = "wall" if args.device.startswith("cuda") else "cpu"
    t0, m0 = statistics.median(times["darts"][clock]), memory["darts"]["peak_bytes"]
    print(f"one search step (alpha + weight step), DARTS space, C={args.C}, {args.layers} cells, batch {args.batch}, "
          f"{args.input_size}x{args.input_size}, {args.device}, {args.threads} thread(s); memory: "
          f"{memory['darts']['method']}")
    print(f"{'searcher':<10}{clock + ' ms':>10}{'time / DARTS':>14}{'wall ms':>10}{'peak MiB':>10}"
          f"{'memory / DARTS':>16}")
    for name in VARIANTS:
        t, m = statistics.median(times[name][clock]), memory[name]["peak_bytes"]
        wall = statistics.median(times[name]["wall"])
        print(f"{name:<10}{1000 * t:>10.1f}{t / t0:>14.3f}{1000 * wall:>10.1f}{m / 2**20:>10.1f}{m / m0:>16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
