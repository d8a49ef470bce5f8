"""Script form of ``dartboard bench memory`` (the benchmark lives in dartboard.bench.memory)."""

from __future__ import annotations

import argparse
import sys

from dartboard.bench.memory import LIMIT, Setting, report, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field, default in Setting().__dict__.items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    setting = Setting(**{k: getattr(args, k) for k in Setting().__dict__})
    results = run(setting)
    print(report(results, setting))
    worst = max(r["ratio"] for name, r in results.items() if name.startswith("L_T") and name != "L_T (none)")
    return 0 if worst <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
