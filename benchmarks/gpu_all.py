"""Every GPU figure of issue 17 in one run, written as JSON (one H100/H200; nothing is downloaded).

- search iteration, C=16, 8 cells, 32x32, batch 64, fp32, both supernet engines interleaved, first and
  second order (targets: <= 60 ms first order, <= 300 ms second order; the original DARTS code: 855 ms);
- D-DARTS peak memory, L_T over L_F (target <= 1.25x; the thesis reports 2x);
- DARIO: ViT-B/16 with 6 of 12 blocks pruned, bf16 inference throughput at batch 256 against the
  original (target >= 1.65x), and the Algorithm 5 search time (k = 100, n = 500; target < 60 s).

Without CUDA it writes ``{"skipped": true, ...}`` and exits 0. Each part records its own error, so one
failure keeps the others' numbers. Not measured here: whole-step CUDA graphs (not built yet).

    python benchmarks/gpu_all.py [--out benchmarks/results/gpu_all.json] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUT = Path("benchmarks/results/gpu_all.json")
TARGETS = {"first_order_ms": 60.0, "second_order_ms": 300.0, "ddarts_memory_ratio": 1.25,
           "dario_inference_speedup": 1.65, "dario_search_s": 60.0}  # issue 17


def search_speed(repeats: int) -> dict[str, Any]:
    from dartboard.bench.speed import SpeedSetting, run

    setting = SpeedSetting(batch=64, channels=16, layers=8, input_size=32, warmup=3, repeats=repeats,
                           device="cuda", precision="fp32")
    return {"setting": vars(setting), "results": run(["darts"], [1, 2], ["reference", "batched"], setting)}


def ddarts_memory() -> dict[str, Any]:
    from dartboard.bench.memory import Setting, run

    setting = Setting(batch=64, C=16, layers=8, input_size=32, steps=2, device="cuda")
    results = run(setting)
    return {"setting": vars(setting), "results": results,
            "l_t_over_l_f": max(r["ratio"] for n, r in results.items() if n.startswith("L_T") and n != "L_T (none)")}


def dario(batch: int, k: int, n: int) -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from dario_throughput import VIT_B, half_pruned

    from dartboard.platform.dario_run import compare_throughput
    from dartboard.searchers.dario import DarioConfig, DarioSearcher
    from dartboard.spaces.vit import create_vit

    model = create_vit(VIT_B).to("cuda").eval()
    out: dict[str, Any] = {"throughput": compare_throughput(model, half_pruned(model), (3, 224, 224), batch, steps=20,
                                                            warmup=5, device="cuda", amp_dtype=torch.bfloat16)}
    searcher = DarioSearcher(model, DarioConfig(warmup_samples=k, iterations=n))
    torch.cuda.synchronize()
    start = time.perf_counter()
    searcher.warm_start()
    for _ in range(n):
        searcher.step()
    torch.cuda.synchronize()
    out["search_s"] = time.perf_counter() - start
    out["search"] = {"k": k, "n": n}
    return out


def _part(name: str, fn: Callable[[], dict[str, Any]], report: dict[str, Any], out: Path) -> None:
    try:
        report[name] = fn()
    except Exception:  # one failing part keeps the others' numbers
        report[name] = {"error": traceback.format_exc()}
    out.write_text(json.dumps(report, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dario-batch", type=int, default=256)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"targets": TARGETS, "torch": torch.__version__, "host": platform.node()}
    if not torch.cuda.is_available():
        report.update(skipped=True, reason="no CUDA device: nothing measured")
        args.out.write_text(json.dumps(report, indent=2))
        print(f"skipped (no CUDA device); wrote {args.out}")
        return 0
    report.update(skipped=False, device=torch.cuda.get_device_name(0))
    _part("search_speed", lambda: search_speed(args.repeats), report, args.out)
    _part("ddarts_memory", ddarts_memory, report, args.out)
    _part("dario", lambda: dario(args.dario_batch, args.k, args.n), report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
