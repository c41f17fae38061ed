"""Run every benchmark and print docs/benchmarks.md's tables (markdown).

python3 scripts/dev.py bench                 # all five, as in docs/benchmarks.md
python3 scripts/dev.py bench -- --quick      # smaller sizes, for a smoke run
python3 scripts/dev.py bench -- --table 3 --large   # table 3 alone, with the 100,000 rows
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import api_call_cost
import delivery_records
import import_cost
import misbehaving
import shared_tick
import triggerer_load
from _common import machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not the figures)")
    parser.add_argument(
        "--table", type=int, choices=(1, 2, 3, 4, 5), action="append", help="only these tables"
    )
    parser.add_argument(
        "--large", action="store_true", help="table 3 also at 100,000 waiting faxes (shared polling only)"
    )
    args = parser.parse_args()
    tables = set(args.table or (1, 2, 3, 4, 5))
    print(f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {machine()}.\n")
    if 1 in tables:
        print("## 1. DAG-parse cost\n")
        print("\n".join(import_cost.run(rounds=3 if args.quick else 10)), "\n", flush=True)
    if 2 in tables:
        print("## 2. Cost per API call\n")
        print("\n".join(api_call_cost.run(n=200 if args.quick else 2000)), "\n", flush=True)
    if 3 in tables:
        print("## 3. A triggerer full of waiting faxes\n")
        print(f"Load average (1 min) before table 3: {os.getloadavg()[0]:.2f}\n", flush=True)
        counts = [200] if args.quick else [1000, 10000]
        window = 10.0 if args.quick else 60.0
        rows = triggerer_load.run_matrix(counts, [1, 10], window)
        print("\n".join(triggerer_load.table(rows)), "\n", flush=True)
        print(f"Load average (1 min) after the rows: {os.getloadavg()[0]:.2f}\n", flush=True)
        ticks = [200] if args.quick else [1000, 10000]
        print("One shared tick, N waiters on one account (bench/shared_tick.py):\n")
        print("\n".join(shared_tick.table([shared_tick.run(n) for n in ticks])), "\n", flush=True)
        if args.large:
            print("100,000 waiting faxes, shared polling:\n")
            print("\n".join(shared_tick.table([shared_tick.run(100000)])), "\n", flush=True)
            large = triggerer_load.run_matrix([100000], [10], window, modes=("shared",))
            print("\n".join(triggerer_load.table(large)), "\n", flush=True)
            print(f"Load average (1 min) after the 100,000 rows: {os.getloadavg()[0]:.2f}\n", flush=True)
    if 4 in tables:
        print("## 4. Misbehaving API\n")
        print("\n".join(misbehaving.run(seconds=5 if args.quick else 30)), flush=True)
    if 5 in tables:
        print("## 5. Delivery triggers over 10,000 sent records\n")
        print(f"Load average (1 min) before table 5: {os.getloadavg()[0]:.2f}\n", flush=True)
        waiters = [10] if args.quick else [1, 100, 1000]
        rows = [delivery_records.run(n, interval=30.0, ticks=2) for n in waiters]
        print("\n".join(delivery_records.table(rows)), "\n", flush=True)
        print(f"Load average (1 min) after table 5: {os.getloadavg()[0]:.2f}\n", flush=True)


if __name__ == "__main__":
    main()
