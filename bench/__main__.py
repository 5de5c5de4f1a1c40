"""`python -m bench [core] [local] [telegram] [discord] [load] [workers] [--json]`: print one table."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform

from bench import core_bench, discord_bench, load_bench, local_bench, telegram_bench, workers_bench
from bench.core_bench import Row

BENCHMARKS = ("core", "local", "telegram", "discord", "load", "workers")


def _run_core(cores: int) -> list[Row]:
    """The core benchmark, pinned to `cores` CPUs (the target is per core)."""
    if not hasattr(os, "sched_setaffinity"):
        return asyncio.run(core_bench.run())
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(everything)[:cores]))
    try:
        return asyncio.run(core_bench.run())
    finally:
        os.sched_setaffinity(0, everything)


def main() -> None:
    """Parse arguments, run what was asked, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("which", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--cores", type=int, default=1, help="CPU cores the core benchmark is pinned to")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args()
    chosen = args.which or list(BENCHMARKS)
    if unknown := set(chosen) - set(BENCHMARKS):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    rows: list[Row] = []
    if "core" in chosen:
        rows += _run_core(args.cores)
    if "local" in chosen:
        rows += asyncio.run(local_bench.run())  # unpinned: llama.cpp uses both cores either way
    if "telegram" in chosen:
        rows += asyncio.run(telegram_bench.run())  # unpinned: the bot and the fake run in separate processes
    if "discord" in chosen:
        rows += asyncio.run(discord_bench.run())  # unpinned: the bot and the fake run in separate processes
    if "load" in chosen:
        rows += asyncio.run(load_bench.run())  # unpinned: the bot runs in a process of its own
    if "workers" in chosen:
        rows += asyncio.run(workers_bench.run())  # unpinned: workers, PostgreSQL and driver share the cores
    if args.json:
        print(core_bench.as_json(rows))
        return
    print(f"gptrelay benchmarks ({', '.join(chosen)}), Python {platform.python_version()}")
    print(core_bench.render(rows))


if __name__ == "__main__":
    main()
