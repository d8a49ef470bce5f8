"""Speed of a search iteration (alpha step + weight step) on both supernet engines, in one process.

For every preset and hypergradient order, one searcher per engine is built from the same seed and
options; after the warm-up steps the engines' timed steps are *interleaved* (reference, batched,
reference, ...) so that a shared machine's load changes hit both alike; the median of each engine's
times gives ms/iteration, images/s and the ratio reference / batched, and the median of each round's own ratio
(reference step / the batched step right after it) the paired ratio, which a drift of the machine's speed over
the rounds leaves alone. Peak memory comes from one
more, untimed step per engine (:func:`dartboard.bench.memory.profiled_peak_bytes` on CPU,
``torch.cuda.max_memory_allocated`` on a GPU). An engine name with ``+graph`` (``batched+graph``)
replays that engine's whole step from one CUDA graph (:class:`dartboard.searchers.graphed.GraphedStep`;
its eager warm-up calls are the warm-up steps, so ``warmup`` must be at least 2 there).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dartboard.bench.memory import MEMORY_METHOD, profiled_peak_bytes


@dataclass
class SpeedSetting:
    batch: int = 64
    channels: int = 16
    layers: int = 8
    input_size: int = 32
    warmup: int = 3
    repeats: int = 10
    device: str = "cpu"
    precision: str = "fp32"
    memory: bool = True
    threads: int | None = None  # torch threads (None: torch's default)


GRAPH = "+graph"


def build(preset: str, engine: str, order: int, setting: SpeedSetting):
    """A searcher of ``preset`` on ``engine``; with ``+graph``, an object whose ``step`` replays a CUDA graph."""
    import torch

    from dartboard.searchers.registry import DataShape, build_searcher

    graphed = engine.endswith(GRAPH)
    torch.manual_seed(0)
    options = {"C": setting.channels, "layers": setting.layers, "order": order, "precision": setting.precision,
               "engine": engine.removesuffix(GRAPH)}
    searcher = build_searcher(preset, options, DataShape(3, setting.input_size, 10), setting.device)
    if not graphed:
        return searcher
    from dartboard.searchers.graphed import GraphedStep

    if setting.warmup < 2:
        raise ValueError(f"engine {engine!r}: warmup must be >= 2 (eager warm-up calls, then the capture), "
                         f"got {setting.warmup}")
    return GraphedStep(searcher, warmup=setting.warmup - 1)


def check(presets: Sequence[str], orders: Sequence[int], engines: Sequence[str], setting: SpeedSetting) -> None:
    """Build the searcher of every preset, order and engine that :func:`run` will time, and drop it again: a bad
    combination (D-DARTS' ablation loss with order 2, a graph on the CPU, an unknown engine) raises its
    ``ValueError`` here, before any timing, instead of after every combination timed before it. A build is a
    fraction of a second, a timed combination many steps of two engines."""
    from dartboard.searchers.registry import get_searcher_spec

    for preset in presets:
        get_searcher_spec(preset)  # an unknown name, said as such
    for preset in presets:
        for order in orders:
            for engine in engines:
                try:
                    build(preset, engine, order, setting)
                except ValueError as err:
                    raise ValueError(f"preset {preset!r} at order {order} on engine {engine!r}: {err}") from None


def _peak_bytes(step: Any, device: str) -> tuple[int, str]:
    import torch

    if not device.startswith("cuda"):
        return profiled_peak_bytes(step), MEMORY_METHOD
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"


def compare(preset: str, order: int, engines: Sequence[str], setting: SpeedSetting) -> dict[str, Any]:
    """Timings of ``engines`` for one preset and order; ``ratio``: first engine's time / each one's."""
    import torch

    if setting.threads is not None:
        torch.set_num_threads(setting.threads)
    searchers = {e: build(preset, e, order, setting) for e in engines}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(setting.batch, 3, setting.input_size, setting.input_size, generator=gen).to(setting.device)
    y = torch.randint(0, 10, (setting.batch,), generator=gen).to(setting.device)
    times = _interleaved_times(searchers, (x, y), setting)
    rows = {}
    for e, s in searchers.items():
        med = statistics.median(times[e])
        rows[e] = {"ms_per_iter": med * 1e3, "ms_min": min(times[e]) * 1e3, "ms_max": max(times[e]) * 1e3,
                   "images_per_s": setting.batch / med}
        if setting.memory and e.endswith(GRAPH):  # a replay allocates nothing: its pool was taken at the capture
            rows[e].update(memory_method="none: a replay allocates nothing (the graph's pool is taken at the capture)")
        elif setting.memory:
            peak, method = _peak_bytes(lambda s=s: s.step((x, y), (x, y)), setting.device)
            rows[e].update(peak_mib=peak / 2**20, memory_method=method)
    base = rows[engines[0]]["ms_per_iter"]
    for e, row in rows.items():
        row["ratio"] = base / row["ms_per_iter"]
        mid, low, high = paired_ratios(times[engines[0]], times[e])
        row.update(paired_ratio=mid, paired_min=low, paired_max=high)
    return {"preset": preset, "order": order, "engines": rows}


def paired_ratios(base: Sequence[float], times: Sequence[float]) -> tuple[float, float, float]:
    """Each round's base step time over the other step of the same round (interleaved, so close in time): their
    median, min and max. A drift of the machine's speed over the rounds (slow spells of a shared machine) leaves
    these ratios alone, the ratio of medians not; their range shows what one run can resolve."""
    ratios = [b / t for b, t in zip(base, times, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _interleaved_times(searchers: dict[str, Any], batch: Any, setting: SpeedSetting) -> dict[str, list[float]]:
    """Seconds of each timed search step, per engine: warm-up steps, then one step of each engine in turn."""
    import torch

    def sync() -> None:
        if setting.device.startswith("cuda"):
            torch.cuda.synchronize()

    for s in searchers.values():
        for _ in range(setting.warmup):
            s.step(batch, batch)
    sync()
    times: dict[str, list[float]] = {e: [] for e in searchers}
    for _ in range(setting.repeats):
        for e, s in searchers.items():
            start = time.perf_counter()
            s.step(batch, batch)
            sync()
            times[e].append(time.perf_counter() - start)
    return times


def run(presets: Sequence[str], orders: Sequence[int], engines: Sequence[str], setting: SpeedSetting
        ) -> list[dict[str, Any]]:
    return [compare(p, o, engines, setting) for p in presets for o in orders]


def report(results: Sequence[dict[str, Any]], setting: SpeedSetting) -> str:
    lines = [f"device {setting.device}  precision {setting.precision}  batch {setting.batch}  C={setting.channels} "
             f"layers={setting.layers} input {setting.input_size}x{setting.input_size}, "
             f"{setting.threads or 'default'} threads; median of {setting.repeats} "
             f"interleaved iterations after {setting.warmup} warm-up",
             f"{'preset':<14}{'order':>6}  {'engine':<10}{'ms/iter':>10}{'images/s':>10}{'peak MiB':>10}"
             f"{'ratio':>8}"]
    for r in results:
        for engine, row in r["engines"].items():
            peak = f"{row['peak_mib']:>10.1f}" if "peak_mib" in row else f"{'-':>10}"
            lines.append(f"{r['preset']:<14}{r['order']:>6}  {engine:<10}{row['ms_per_iter']:>10.1f}"
                         f"{row['images_per_s']:>10.1f}{peak}{row['ratio']:>7.2f}x")
    paired = [f"{r['preset']} order {r['order']} {engine} {row['paired_ratio']:.2f}x "
              f"({row['paired_min']:.2f}-{row['paired_max']:.2f})"
              for r in results for engine, row in list(r["engines"].items())[1:]]
    if paired:
        lines.append("paired ratios (median of each round's first-engine step / the engine's step after it, with "
                     "their range): " + "; ".join(paired))
    return "\n".join(lines)
