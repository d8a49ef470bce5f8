"""The tiny81 quality benchmark of the one-shot presets against DARTS, in this process (no Ray):
the trials of ``dartboard bench quality`` run one after another, scored the same way.

Run: ``python benchmarks/oneshot_quality.py --out runs/oneshot-quality [--epochs 20 --seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dartboard.bench.quality import ONESHOT_SEARCHERS, QualityConfig, write_outputs
from dartboard.bench.quality_local import run_local
from dartboard.bench.table import load_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searchers", default=",".join(("darts", *ONESHOT_SEARCHERS)))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--table", default=None)
    parser.add_argument("--out", default="runs/oneshot-quality")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = QualityConfig(searchers=args.searchers.split(","), seeds=[int(s) for s in args.seeds.split(",")],
                        epochs=args.epochs, table=args.table, workers=1)
    table = load_table(cfg.table)
    start = time.perf_counter()
    records = run_local(cfg, table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = write_outputs(records, cfg, table, out, time.perf_counter() - start)
    print(result["markdown"])
    print(f"wall {result['wall_seconds']:.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
