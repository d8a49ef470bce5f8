"""Where a search iteration's GPU time goes, and which cuDNN/layout settings shorten it (issue 17).

Two parts, written as JSON:

- ``kernels``: one eager first-order darts step per engine under ``torch.profiler`` (after warm-up):
  the GPU kernel time of the step, the number of kernels, and the top kernels and aten ops by their
  own GPU time. The graphed step replays the same kernels, so this is what a CUDA graph's time is made of.
- ``settings``: the graphed step's ms/iteration (first and second order) for each named
  ``batched.ConvPlan`` (how the batched engine runs its convolutions: 5x5 and dilated depthwise convs with
  a channel multiplier or on a repeated input; the edges' 1x1 convs as one grouped conv or one
  block-diagonal dense conv; depthwise convs in channels-last or on NCHW copies), all in one process,
  the reference engine once.

Measured on an H200: run 1 (``gpu_profile_h200_run1.json``, 2026-12-04) swept
``torch.backends.cudnn.benchmark`` (no change, within 1 %) and an NCHW layout for the whole batched engine
(17 % slower); run 2 (``gpu_profile_h200_run2.json``) the multiplier (off: 15 % faster) and the grouped 1x1
convs as one batched matrix product (1.8x slower: dropped); run 3 (``gpu_profile_h200_run3.json``,
2026-12-04, fourth session) the block-diagonal 1x1 conv and the NCHW depthwise convs (together 145.1 ->
123.1 ms first order, 416.3 -> 348.9 ms second: CUDA's default since). The NCHW conv stack was added after
run 3, and the 1x1 convs as ``F.linear`` of the channels-last pixels (``linear_1x1``: the CPU plan's since the
fifth session; on CUDA's block-diagonal plan every pointwise conv would become one cuBLAS product) after that;
neither is measured on a GPU yet.

Without CUDA it writes ``{"skipped": true}`` and exits 0; ``--dry-run-cpu`` runs it on the CPU at toy
sizes (eager steps only: a check of the script, its numbers mean nothing).

    python benchmarks/gpu_profile.py [--out benchmarks/results/gpu_profile.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

FULL = {"batch": 64, "channels": 16, "layers": 8, "input_size": 32}
TOY = {"batch": 2, "channels": 4, "layers": 2, "input_size": 8}


def _setting(size: dict[str, int], device: str, repeats: int):
    from dartboard.bench.speed import SpeedSetting

    return SpeedSetting(batch=size["batch"], channels=size["channels"], layers=size["layers"],
                        input_size=size["input_size"], warmup=3, repeats=repeats, device=device, precision="fp32",
                        memory=False)


@contextmanager
def variant(plan: Any, device: str):
    """``plan`` (a ``batched.ConvPlan``) as the batched engine's conv plan on ``device``'s type."""
    from dartboard.spaces import batched

    before = batched.CONV_PLANS.get(device)
    batched.CONV_PLANS[device] = plan
    try:
        yield
    finally:
        if before is None:
            batched.CONV_PLANS.pop(device, None)
        else:
            batched.CONV_PLANS[device] = before


def variants() -> dict[str, Any]:
    """The conv plans timed: CUDA's defaults before run 2 and before run 3, the default now, the candidates."""
    from dataclasses import replace

    from dartboard.spaces.batched import CONV_PLANS, ConvPlan

    return {"multiplier (before run 2)": ConvPlan(reduce_many=False),
            "repeated (before run 3)": ConvPlan(multiplier=False, reduce_many=False),
            "default": CONV_PLANS["cuda"],
            "default, stride-2 skips per edge (before session 30)": replace(CONV_PLANS["cuda"], reduce_many=False),
            "default, NCHW stack": replace(CONV_PLANS["cuda"], stack_nchw=True),
            "grouped 1x1, NCHW stack": ConvPlan(multiplier=False, depthwise_nchw=True, stack_nchw=True),
            "default, 1x1 as linear": replace(CONV_PLANS["cuda"], linear_1x1=True),
            "default, flipped input grads": replace(CONV_PLANS["cuda"], flipped_input_grad=True),
            "default, a cell's two inputs as one source": replace(CONV_PLANS["cuda"], merge_limit=float("inf"))}


def kernels(device: str, size: dict[str, int], top: int = 30) -> dict[str, Any]:
    """GPU time per kernel and per aten op of one eager first-order step: the reference engine, the batched
    one with its defaults and with the candidate (the whole conv op in NCHW)."""
    from torch.profiler import ProfilerActivity, profile

    from dartboard.bench.speed import build

    setting = _setting(size, device, 1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(setting.batch, 3, setting.input_size, setting.input_size, generator=gen).to(device)
    y = torch.randint(0, 10, (setting.batch,), generator=gen).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    out: dict[str, Any] = {}
    candidate = variants()["default, NCHW stack"]
    for name, engine, plan in (("reference", "reference", None), ("batched", "batched", None),
                               ("batched, NCHW stack", "batched", candidate)):
        with variant(plan, device) if plan else nullcontext():
            searcher = build("darts", engine, 1, setting)
            for _ in range(3):
                searcher.step((x, y), (x, y))
            if device == "cuda":
                torch.cuda.synchronize()
            steps = 2
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    searcher.step((x, y), (x, y))
                if device == "cuda":
                    torch.cuda.synchronize()
        per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for evt in prof.key_averages():
            gpu_us = float(getattr(evt, "self_device_time_total", 0.0) or 0.0)
            if evt.device_type == torch.autograd.DeviceType.CUDA:
                per_kernel[evt.key][0] += gpu_us / steps
                per_kernel[evt.key][1] += evt.count / steps
            elif gpu_us > 0:
                per_op[evt.key][0] += gpu_us / steps
                per_op[evt.key][1] += evt.count / steps
        total = sum(v[0] for v in per_kernel.values())
        out[name] = {
            "gpu_ms_per_step": total / 1e3,
            "families": families(per_kernel),
            "kernels_per_step": sum(v[1] for v in per_kernel.values()),
            "top_kernels": [{"name": k[:160], "ms": v[0] / 1e3, "count": v[1], "share": v[0] / total if total else 0}
                            for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:top]],
            "top_ops": [{"op": k, "ms": v[0] / 1e3, "count": v[1]}
                        for k, v in sorted(per_op.items(), key=lambda kv: -kv[1][0])[:top]],
        }
        del searcher
    return out


#: Kernel families by name (first match): what a kernel's time is spent on.
FAMILIES = (("batch norm", ("batch_norm", "bn_")),
            ("convolution", ("conv", "xmma", "cutlass", "gemm", "wgrad", "dgrad", "implicit", "tensorTransform",
                             "nhwcSlice")),
            ("copy", ("copy", "Memcpy")), ("memset/fill", ("Memset", "fill")),
            ("pooling", ("pool",)), ("optimizer", ("Optimizer", "foreach", "multi_tensor")),
            ("elementwise/reduce", ("elementwise", "reduce", "Functor")))


def families(per_kernel: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """GPU ms and kernel count of each family in :data:`FAMILIES` (``other``: the rest) from each kernel's
    GPU microseconds and count (per step)."""
    out: dict[str, dict[str, float]] = {}
    for name, (us, count) in per_kernel.items():
        family = next((f for f, keys in FAMILIES if any(k in name for k in keys)), "other")
        row = out.setdefault(family, {"ms": 0.0, "count": 0.0})
        row["ms"] += us / 1e3
        row["count"] += count
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms"]))


def settings(device: str, size: dict[str, int], repeats: int) -> list[dict[str, Any]]:
    """ms/iteration of the graphed batched engine for each conv plan, and of the graphed reference."""
    from dartboard.bench.speed import run

    setting = _setting(size, device, repeats)
    graph = "+graph" if device == "cuda" else ""
    rows = []
    for k, (name, plan) in enumerate(variants().items()):
        engines = [f"batched{graph}"] + ([f"reference{graph}"] if k == 0 else [])
        try:
            with variant(plan, device):
                results = run(["darts"], [1, 2], engines, setting)
            for r in results:
                for engine, row in r["engines"].items():
                    rows.append({"variant": name, "plan": vars(plan), "order": r["order"], "engine": engine,
                                 "ms_per_iter": row["ms_per_iter"], "ms_min": row["ms_min"], "ms_max": row["ms_max"]})
        except Exception:  # one failing variant keeps the others' numbers
            rows.append({"variant": name, "plan": vars(plan), "error": traceback.format_exc()})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_profile.json"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dry-run-cpu", action="store_true")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"torch": torch.__version__}
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_all import device_or_skip

    device = device_or_skip(args.dry_run_cpu, args.out, report)
    if device is None:
        return 0
    size = TOY if device == "cpu" else FULL
    report["size"] = size
    for name, fn in (("kernels", lambda: kernels(device, size)),
                     ("settings", lambda: settings(device, size, args.repeats))):
        try:
            report[name] = fn()
        except Exception:
            report[name] = {"error": traceback.format_exc()}
        args.out.write_text(json.dumps(report, indent=2))
    for engine, k in report["kernels"].items() if isinstance(report["kernels"], dict) else ():
        if engine == "error":
            print("kernels: ERROR", k.strip().splitlines()[-1])
            continue
        print(f"{engine}: {k['gpu_ms_per_step']:.1f} GPU ms/step, {k['kernels_per_step']:.0f} kernels; "
              + ", ".join(f"{f} {v['ms']:.1f} ms ({v['count']:.0f})" for f, v in k["families"].items()))
        for row in k["top_kernels"][:12]:
            print(f"  {row['ms']:8.2f} ms {row['count']:6.0f}x {100 * row['share']:5.1f}%  {row['name'][:90]}")
    for row in report["settings"] if isinstance(report["settings"], list) else [report["settings"]]:
        if "error" in row:
            print(f"variant {row.get('variant')}: ERROR",
                  row["error"].strip().splitlines()[-1])
        else:
            print(f"{row['variant']:<30} order {row['order']} "
                  f"{row['engine']:<16} {row['ms_per_iter']:8.1f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
