"""Every GPU figure of issue 17 in one run, written as JSON (one H100/H200; nothing is downloaded).

- search iteration, C=16, 8 cells, 32x32, batch 64, fp32, both supernet engines interleaved, first and
  second order (targets: <= 60 ms first order, <= 300 ms second order; the original DARTS code: 855 ms);
- D-DARTS peak memory, L_T over L_F (target <= 1.25x; the thesis reports 2x);
- DARIO: ViT-B/16 with 6 of 12 blocks pruned, bf16 inference throughput at batch 256 against the
  original (target >= 1.65x), and the Algorithm 5 search time (k = 100, n = 500; target < 60 s), eager
  and with ``cuda_graph`` (each iteration's double backward replayed from one CUDA graph).

The search iteration is timed on ``reference`` (per edge, per op) and ``batched``, each eager and with
``+graph`` (the whole step replayed from one CUDA graph, :mod:`dartboard.searchers.graphed`; the
peak memory of a replay excludes the graph's pool, allocated at the capture).
"fp32" is PyTorch's default, which lets cuDNN convolutions use TF32; the JSON records those flags.

Without CUDA it writes ``{"skipped": true, ...}`` and exits 0. Each part records its own error, so one
failure keeps the others' numbers. ``--dry-run-cpu`` runs every part on the CPU at toy sizes (a check of
the script before device time is spent on it; its numbers mean nothing).

    python benchmarks/gpu_all.py [--out benchmarks/results/gpu_all.json] [--repeats 20] [--dry-run-cpu]
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


#: Sizes of the real run (issue 17) and of the CPU dry run.
FULL = {"batch": 64, "channels": 16, "layers": 8, "input_size": 32, "vit": "vit_base_patch16_224", "vit_kwargs": {},
        "dario_batch": 256, "image": 224, "k": 100, "n": 500, "memory_steps": 2}
TOY = {"batch": 2, "channels": 4, "layers": 2, "input_size": 8, "vit": "vit_tiny_patch16_224",
       "vit_kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 48, "depth": 12, "num_heads": 12,
                      "num_classes": 10}, "dario_batch": 2, "image": 32, "k": 3, "n": 4, "memory_steps": 1}
#: The eager engines, then the graphed ones (a part of their own: a failed capture keeps the eager numbers).
ENGINES = {"eager": ["reference", "batched"], "graph": ["batched", "reference+graph", "batched+graph"]}
PARTS = ("search_speed", "search_speed_graph", "ddarts_memory", "dario")


def search_speed(device: str, size: dict[str, Any], repeats: int, engines: str = "eager") -> dict[str, Any]:
    from dartboard.bench.speed import SpeedSetting, run

    setting = SpeedSetting(batch=size["batch"], channels=size["channels"], layers=size["layers"],
                           input_size=size["input_size"], warmup=3, repeats=repeats, device=device, precision="fp32",
                           memory=device == "cuda")  # the CPU's memory profiler is the slow part of a dry run
    return {"setting": vars(setting), "engines": ENGINES[engines],
            "results": run(["darts"], [1, 2], ENGINES[engines], setting)}


def ddarts_memory(device: str, size: dict[str, Any]) -> dict[str, Any]:
    from dartboard.bench.memory import Setting, run

    setting = Setting(batch=size["batch"], C=size["channels"], layers=size["layers"], input_size=size["input_size"],
                      steps=size["memory_steps"], device=device)
    results = run(setting)
    return {"setting": vars(setting), "results": results,
            "l_t_over_l_f": max(r["ratio"] for n, r in results.items() if n.startswith("L_T") and n != "L_T (none)")}


def dario(device: str, size: dict[str, Any]) -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from dario_throughput import KEEP

    from dartboard.platform.dario_run import compare_throughput
    from dartboard.searchers.dario import DarioConfig, DarioSearcher
    from dartboard.spaces.genotype import GateGenotype
    from dartboard.spaces.vit import create_vit, prune_vit

    torch.manual_seed(0)
    model = create_vit(size["vit"], **size["vit_kwargs"]).to(device).eval()
    pruned = prune_vit(model, GateGenotype(size["vit"], KEEP, {}, 12, 12))
    amp = torch.bfloat16 if device == "cuda" else None
    out: dict[str, Any] = {"model": size["vit"], "blocks_kept": list(KEEP), "batch": size["dario_batch"],
                           "precision": "bf16 autocast" if amp else "fp32",
                           "throughput": compare_throughput(model, pruned, (3, size["image"], size["image"]),
                                                            size["dario_batch"], steps=20, warmup=5, device=device,
                                                            amp_dtype=amp)}
    for graph in (False, True) if device == "cuda" else (False,):  # cuda_graph: the iterations in one graph
        searcher = DarioSearcher(model, DarioConfig(warmup_samples=size["k"], iterations=size["n"], cuda_graph=graph))
        _sync(device)
        start = time.perf_counter()
        searcher.warm_start()
        _sync(device)
        warm = time.perf_counter() - start
        for _ in range(size["n"]):
            searcher.step()
        _sync(device)
        key = "search_graph" if graph else "search"
        out[f"{key}_s"] = time.perf_counter() - start
        out[key] = {"k": size["k"], "n": size["n"], "warm_start_s": warm,
                    "ms_per_iteration": 1e3 * (out[f"{key}_s"] - warm) / max(1, size["n"]),
                    "final_proxy": searcher.history[-1] if searcher.history else None}
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _part(name: str, fn: Callable[[], dict[str, Any]], report: dict[str, Any], out: Path) -> None:
    try:
        report[name] = fn()
    except Exception:  # one failing part keeps the others' numbers
        report[name] = {"error": traceback.format_exc()}
    out.write_text(json.dumps(report, indent=2, default=str))


def device_or_skip(dry_run: bool, out: Path, report: dict[str, Any]) -> str | None:
    """``cpu`` for a dry run, ``cuda`` where there is one (both noted in ``report``); without CUDA, None
    after writing ``report`` as a skip to ``out``."""
    if dry_run:
        report.update(skipped=False, device="cpu (dry run at toy sizes: the numbers mean nothing)")
        return "cpu"
    if not torch.cuda.is_available():
        report.update(skipped=True, reason="no CUDA device: nothing measured")
        out.write_text(json.dumps(report, indent=2))
        print(f"skipped (no CUDA device); wrote {out}")
        return None
    report.update(skipped=False, device=torch.cuda.get_device_name(0))
    return "cuda"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dry-run-cpu", action="store_true", help="every part on the CPU at toy sizes")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--parts: expected names among {', '.join(PARTS)}, got {args.parts!r}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"targets": TARGETS, "torch": torch.__version__, "host": platform.node()}
    device = device_or_skip(args.dry_run_cpu, args.out, report)
    if device is None:
        return 0
    if device == "cpu":
        size, repeats = TOY, 2
    else:
        size, repeats = FULL, args.repeats
        report.update(tf32={"cudnn": torch.backends.cudnn.allow_tf32,
                            "matmul": torch.backends.cuda.matmul.allow_tf32})
    runs = {"search_speed": lambda: search_speed(device, size, repeats),
            "search_speed_graph": lambda: search_speed(device, size, repeats, "graph"),
            "ddarts_memory": lambda: ddarts_memory(device, size), "dario": lambda: dario(device, size)}
    if device == "cpu":  # no CUDA graphs on the CPU
        parts = [p for p in parts if p != "search_speed_graph"]
    for name in parts:
        _part(name, runs[name], report, args.out)
    print(summary(report))
    print(f"wrote {args.out}")
    return 0  # a failed part is in the JSON and the summary; the others' numbers stand


def summary(report: dict[str, Any]) -> str:
    """The figures against the targets, one line each."""
    lines = [f"device: {report['device']}"]
    for part in ("search_speed", "search_speed_graph"):
        results = report.get(part, {}).get("results", [])
        for r in results:
            first = next(iter(r["engines"]))
            for engine, row in r["engines"].items():
                peak = f"{row['peak_mib']:8.1f} MiB" if "peak_mib" in row else f"{'-':>8} MiB"
                lines.append(f"search order {r['order']} {engine:<16} {row['ms_per_iter']:9.1f} ms/iter  "
                             f"{peak}  x{row['ratio']:.2f} vs {first}")
    if "l_t_over_l_f" in report.get("ddarts_memory", {}):
        lines.append(f"D-DARTS peak memory L_T / L_F: {report['ddarts_memory']['l_t_over_l_f']:.2f}")
    d = report.get("dario", {})
    if "throughput" in d:
        lines.append(f"DARIO inference speed-up {d['throughput']['inference_speedup']:.2f}x, train "
                     f"{d['throughput']['train_speedup']:.2f}x; search {d['search_s']:.1f} s "
                     f"({d['search']['ms_per_iteration']:.1f} ms/iteration)")
    if "search_graph" in d:
        lines.append(f"DARIO search in a CUDA graph {d['search_graph_s']:.1f} s "
                     f"({d['search_graph']['ms_per_iteration']:.1f} ms/iteration)")
    for name, part in report.items():
        if isinstance(part, dict) and "error" in part:
            lines.append(f"{name}: ERROR {part['error'].strip().splitlines()[-1]}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
