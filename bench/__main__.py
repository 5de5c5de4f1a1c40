"""`python -m bench [--json] [--cores N]`: run the benchmarks and print the table."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform

from bench import core_bench


def main() -> None:
    """Pin to the requested cores, run, print."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--cores", type=int, default=1, help="CPU cores to pin to (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    rows = asyncio.run(core_bench.run())
    if args.json:
        print(core_bench.as_json(rows))
        return
    print(f"gptrelay core benchmark: Python {platform.python_version()}, {args.cores} core(s), instant model")
    print(core_bench.render(rows))


if __name__ == "__main__":
    main()
