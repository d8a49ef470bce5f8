"""Build rate of an exhaustive table: rebuild a random sample of its members with the table's own
protocol and seeds, check they reproduce the shipped entries, and extrapolate the full build.

    python benchmarks/table_build_rate.py --table dartboard/data/tiny625.json --sample 24

Prints one JSON line: members rebuilt, wall seconds, seconds per member, how many reproduced the shipped
mean test accuracy exactly, and the estimated full build with one and with two builder processes.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="dartboard/data/tiny625.json")
    parser.add_argument("--sample", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from dartboard.bench.table import TableProtocol, build_table

    shipped = json.loads(Path(args.table).read_text())
    entries = shipped["entries"]
    if not 0 < args.sample <= len(entries):
        raise SystemExit(f"--sample: expected 1 to {len(entries)}, got {args.sample}")
    pick = random.Random(args.seed).sample(entries, args.sample)
    protocol = TableProtocol(**{k: tuple(v) if isinstance(v, list) else v for k, v in shipped["protocol"].items()})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sample.json"
        start = time.perf_counter()
        build_table(protocol, out, keys=[e["key"] for e in pick], space=shipped["space"])
        wall = time.perf_counter() - start
        rebuilt = {e["key"]: e for e in json.loads(out.read_text())["entries"]}
    same = sum(rebuilt[e["key"]]["test_mean"] == e["test_mean"] for e in pick)
    per_member = wall / len(pick)
    print(json.dumps({"table": shipped["space"], "members": len(entries), "sample": len(pick), "wall_s": round(wall, 1),
                      "s_per_member": round(per_member, 2), "reproduced_exactly": same,
                      "full_build_one_process_min": round(per_member * len(entries) / 60, 1),
                      "full_build_two_processes_min": round(per_member * len(entries) / 120, 1)}))


if __name__ == "__main__":
    main()
