"""Peak memory of a D-DARTS search step: L_T (ablation loss) against L_F (FairDARTS loss per cell).

The thesis (4.2.3) reports that L_T doubles GPU memory over L_F; dartboard's L_T runs the n
ablated forwards without autograd graphs (``ablation_grad: active``) or one graph at a time
(``full``), so it must stay within 25% of L_F (issue 4).

Every variant builds a fresh searcher on the same network, batch and seed, takes one step
(so optimizer states exist), then measures the peak memory that further steps allocate:
- CPU: from the torch profiler's allocation records (every allocation and free of the CPU
  allocator, with its size, summed in time order: a kernel's own scratch buffers count too);
  the resident set is useless here, as the C allocator keeps freed pages;
- GPU (``--device cuda``): ``torch.cuda.max_memory_allocated`` minus the memory allocated
  before the steps.

Run: ``dartboard bench memory`` (or ``python benchmarks/memory_ddarts.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from dartboard.streams import stderr_without

LIMIT = 1.25  # issue 4: L_T may cost at most 25% more peak memory than L_F

VARIANTS = {
    "L_F": {"searcher": "ddarts-lf", "options": {}},
    "L_T (active)": {"searcher": "ddarts", "options": {"ablation_grad": "active"}},
    "L_T (full)": {"searcher": "ddarts", "options": {"ablation_grad": "full"}},
    "L_T (none)": {"searcher": "ddarts", "options": {"ablation_grad": "none"}},
}


@dataclass
class Setting:
    batch: int = 32
    C: int = 8
    layers: int = 5
    input_size: int = 32
    steps: int = 2
    device: str = "cpu"
    threads: int = 1


#: Kineto's (the torch profiler's) log level: 6 is above its USDT level, the highest it logs at.
KINETO_LOG_ENV, KINETO_QUIET = "KINETO_LOG_LEVEL", "6"
#: The profiler's device types whose allocations are the CPU's (as in ``torch.autograd.profiler_util``).
_CPU_TYPES = ("CPU", "MKLDNN", "IDEEP")
MEMORY_METHOD = "torch.profiler CPU allocation records"
#: c10's line (``CPUAllocator.cpp``, written by the C++ library straight to the process's stderr, once per process)
#: when a block allocated before the profiler started is freed under it: expected here (the step frees the previous
#: step's tensors), and what it says is in ``profiled_peak_bytes``' docstring, so it is not the benchmark's output.
UNKNOWN_BLOCK_LINE = "Memory block of unknown size was allocated before the profiling started"


def profiled_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak of the bytes that ``fn`` allocates on the CPU and still holds at some moment: the profiler's record of
    every allocation (positive) and free (negative) of the CPU allocator, summed in time order. Memory allocated
    before ``fn`` is not counted, nor is its free (the profiler does not know its size).

    Each op's own memory (``FunctionEvent.self_cpu_memory_usage``, summed per op) missed what a kernel allocates and
    frees inside its call: about half of a convolution's backward here. Reading the raw records also skips building
    the profiler's event tree, which took seconds per step (3.5 s of 3.9 s for a D-DARTS step of 60,000 events)."""
    from torch.profiler import ProfilerActivity, profile

    # the profiler's own log (kineto: "USDT: ... profiler_start" and "profiler_stop" lines on stderr at each profiled
    # step, and an ERROR line where no GPU answers) is not the benchmark's output; read when the profiler first starts
    os.environ.setdefault(KINETO_LOG_ENV, KINETO_QUIET)
    with stderr_without(UNKNOWN_BLOCK_LINE), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]" and e.device_type().name in _CPU_TYPES]
    live = peak = 0
    for _, nbytes in sorted(records, key=lambda r: r[0]):  # stable: records of one instant keep their order
        live += nbytes
        peak = max(peak, live)
    return peak


def build(searcher: str, options: dict, setting: Setting):
    """A fresh searcher of the benchmark (seeded), on the setting's network, data shape and device."""
    import torch

    from dartboard.searchers.registry import DataShape, build_searcher

    torch.manual_seed(0)
    opts = {"C": setting.C, "layers": setting.layers, "epochs": 1, **options}
    return build_searcher(searcher, opts, DataShape(3, setting.input_size, 10), setting.device)


def measure(searcher: str, options: dict, setting: Setting) -> dict:
    """Peak bytes added by ``setting.steps`` search steps of a fresh searcher."""
    import torch

    torch.set_num_threads(setting.threads)
    s = build(searcher, options, setting)
    x = torch.randn(setting.batch, 3, setting.input_size, setting.input_size, device=setting.device)
    y = torch.randint(0, 10, (setting.batch,), device=setting.device)
    s.step((x, y), (x, y))  # optimizer states exist before measuring

    def steps() -> None:
        for _ in range(setting.steps):
            s.step((x, y), (x, y))

    if setting.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        steps()
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "method": "torch.cuda.max_memory_allocated"}
    return {"peak_bytes": profiled_peak_bytes(steps), "method": MEMORY_METHOD}


def check(setting: Setting, variants: list[str] | None = None) -> None:
    """The setting's values (:func:`check_values`), then a build of every variant's searcher (dropped again),
    before any measuring: a ``ValueError`` names what cannot be run. Without it a batch of 0 or an unknown device
    failed inside the first measurement."""
    check_values(setting, variants)
    for name in _names(variants):
        spec = VARIANTS[name]
        build(spec["searcher"], dict(spec["options"]), setting)


def check_values(setting: Setting, variants: list[str] | None = None) -> None:
    """The setting's numbers, device and variant names (0 steps measured nothing and reported a ratio of nan as
    over the limit)."""
    for name, low in (("batch", 1), ("C", 1), ("layers", 1), ("input_size", 8), ("steps", 1), ("threads", 1)):
        value = getattr(setting, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if not isinstance(setting.device, str) or not (setting.device == "cpu" or setting.device.startswith("cuda")):
        raise ValueError(f"device: expected cpu or cuda[:N] (the peak is measured by the torch profiler or by "
                         f"torch.cuda), got {setting.device!r}")
    unknown = [n for n in variants or [] if n not in VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {', '.join(map(repr, unknown))}; expected some of "
                         f"{', '.join(VARIANTS)}")


def run_variant(name: str, setting: Setting) -> dict:
    spec = VARIANTS[name]
    return measure(spec["searcher"], dict(spec["options"]), setting)


def run(setting: Setting, variants: list[str] | None = None) -> dict[str, dict]:
    """Peaks of every variant and their ratio to L_F."""
    check_values(setting, variants)
    results = {name: run_variant(name, setting) for name in _names(variants)}
    base = results["L_F"]["peak_bytes"]
    for r in results.values():
        r["ratio"] = r["peak_bytes"] / base if base > 0 else float("nan")
    return results


def _names(variants: list[str] | None) -> list[str]:
    """The variants measured: the given ones (default: all), L_F first, the base of the ratios."""
    names = list(variants or VARIANTS)
    return names if "L_F" in names else ["L_F", *names]


def report(results: dict[str, dict], setting: Setting) -> str:
    lines = [f"D-DARTS peak memory per search step ({setting.device}, batch {setting.batch}, C {setting.C}, "
             f"{setting.layers} cells, {setting.input_size}x{setting.input_size}); "
             f"method: {next(iter(results.values()))['method']}",
             f"{'variant':<16}{'peak MiB':>10}{'ratio to L_F':>14}"]
    for name, r in results.items():
        lines.append(f"{name:<16}{r['peak_bytes'] / 2**20:>10.1f}{r['ratio']:>14.3f}")
    worst = max(r["ratio"] for name, r in results.items() if name.startswith("L_T") and name != "L_T (none)")
    lines.append(f"L_T / L_F = {worst:.3f} (limit {LIMIT}): {'OK' if worst <= LIMIT else 'OVER'}")
    return "\n".join(lines)
