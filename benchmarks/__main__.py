"""``make bench``: run every benchmark side by side and print the markdown tables for benchmarks/README.md."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = ["bench_bridge", "bench_engine", "bench_sr", "bench_lcm", "bench_pool", "bench_conversation",
              "bench_hostile", "bench_health", "bench_stock"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help=f"which to run (default all of {', '.join(BENCHMARKS)})")
    args = parser.parse_args(argv)
    for name in args.names or BENCHMARKS:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"benchmarks.{name}":
                continue  # not written yet
            raise
        print(f"running {name} ...", file=sys.stderr, flush=True)
        print(module.run(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
