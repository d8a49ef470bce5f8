"""The batched engine under several conv plans (``batched.ConvPlan``), one searcher each from the same seed,
their steps interleaved in one process (A/B of the "small maps as matrix products" of ``HISTORY.md``): ms/iteration
and the ratio to the first plan. Each plan is given as ``ConvPlan`` keyword arguments, ``""`` for ``ConvPlan()``.

    OMP_NUM_THREADS=1 python benchmarks/conv_plan_ab.py --scale digits --order 1 --repeats 11 \\
        "linear_1x1=True" "matmul_limit=64,linear_1x1=True"
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
from typing import Any

SCALES = {"digits": {"batch": 64, "channels": 8, "layers": 5, "input_size": 8, "warmup": 2},
          "published": {"batch": 16, "channels": 16, "layers": 8, "input_size": 32, "warmup": 1},
          "toy": {"batch": 4, "channels": 4, "layers": 2, "input_size": 8, "warmup": 1}}


def parse_plan(text: str) -> dict[str, Any]:
    """``"matmul_limit=64,linear_1x1=True"`` -> keyword arguments of ``ConvPlan`` (literal values only)."""
    kwargs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"conv plan {text!r}: expected key=value pairs separated by commas, got {part!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"conv plan {text!r}: {key.strip()}={value.strip()} is no Python literal") from None
    return kwargs


def paired(times: dict[str, list[float]]) -> dict[str, tuple[float, float, float]]:
    """Per plan, each round's speed-up over the first plan (its step time over this plan's in the same round):
    (median, min, max), ``bench speed``'s paired ratio."""
    from dartboard.bench.speed import paired_ratios

    base = next(iter(times.values()))
    return {text: paired_ratios(base, t) for text, t in times.items()}


def step_times(plans: list[str], scale: str, order: int, repeats: int, device: str = "cpu") -> dict[str, list[float]]:
    """Seconds of each timed step per plan (its text as the key), the plans' steps interleaved."""
    import torch

    from dartboard.bench.speed import SpeedSetting, _interleaved_times, build
    from dartboard.spaces import batched

    setting = SpeedSetting(**SCALES[scale], repeats=repeats, memory=False, device=device)
    chosen = {text: batched.ConvPlan(**parse_plan(text)) for text in plans}

    class Switched:  # the plan is the module's, for the device type: set before each step
        def __init__(self, searcher, plan):
            self.searcher, self.plan = searcher, plan

        def step(self, train, val):
            batched.CONV_PLANS[torch.device(device).type] = self.plan
            self.searcher.step(train, val)

    before = dict(batched.CONV_PLANS)
    try:
        searchers = {text: Switched(build("darts", "batched", order, setting), plan) for text, plan in chosen.items()}
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(setting.batch, 3, setting.input_size, setting.input_size, generator=gen).to(device)
        y = torch.randint(0, 10, (setting.batch,), generator=gen).to(device)
        times = _interleaved_times(searchers, (x, y), setting)
    finally:
        batched.CONV_PLANS.clear()
        batched.CONV_PLANS.update(before)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plans", nargs="+", help="ConvPlan keyword arguments, e.g. 'matmul_limit=64'")
    parser.add_argument("--scale", choices=sorted(SCALES), default="digits")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        for text in args.plans:
            parse_plan(text)
    except ValueError as error:
        parser.error(str(error))
    times = step_times(args.plans, args.scale, args.order, args.repeats)
    result = {text: statistics.median(t) * 1e3 for text, t in times.items()}
    base = result[args.plans[0]]
    print(f"batched engine, darts, {args.scale} scale, order {args.order}; median of {args.repeats} interleaved steps")
    for text, ms in result.items():
        print(f"{ms:9.1f} ms  {base / ms:5.2f}x  ConvPlan({text})")
    for text, (mid, low, high) in paired(times).items():
        print(f"paired: speed-up over the first plan in the same round {mid:.3f}x (rounds {low:.3f}-{high:.3f})  "
              f"ConvPlan({text})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
