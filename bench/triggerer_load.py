"""3. A triggerer full of waiting faxes: N OutboxFaxTriggers in one event loop, per-fax GETs against one
shared *List outgoing faxes* per account and tick (``shared_poll``).

Each fax leaves the outbox at a random time within WINDOW seconds; the triggers poll every POLL seconds.
Faxes are spread round-robin over ACCOUNTS user_ids of one token (a corporate account's members: one
connection, one token, one list per member). Every row runs in a fresh process (its RSS is its own), and
the sandbox in another. The provider's loggers are set to WARNING (a triggerer's log handlers are not
what is measured here).

python bench/triggerer_load.py --count 10000 --accounts 1 --mode shared --profile /tmp/shared.prof
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import inspect
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections import Counter

from _common import FullCollections, Sandbox, percentile, rss_kib

MODES = ("per-fax", "shared")


def shared_poll_available() -> bool:
    from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger

    return "shared_poll" in inspect.signature(OutboxFaxTrigger.__init__).parameters


def account_ids(accounts: int) -> list[str]:
    if accounts == 1:
        return ["self"]
    return [hashlib.md5(f"member-{i}".encode()).hexdigest() for i in range(accounts)]  # noqa: S324 - ids


async def _drive(
    triggers: list, lag: list[float], rss: list[int], timeout: float
) -> tuple[dict[str, float], Counter[str], Counter[str]]:
    done: dict[str, float] = {}
    events: Counter[str] = Counter()  # per fax: every event its trigger yields (exactly one expected)
    kinds: Counter[str] = Counter()
    finished = asyncio.Event()

    async def one(trigger) -> None:
        # Run to the end, not just to the first event: a second event would be a duplicate.
        async for event in trigger.run():
            events[trigger.outbox_fax_id] += 1
            kinds[event.payload["status"]] += 1
            if event.payload["status"] == "success" and trigger.outbox_fax_id not in done:
                done[trigger.outbox_fax_id] = time.time()

    async def monitor() -> None:
        while not finished.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.05)
            lag.append(time.perf_counter() - started - 0.05)
            if len(lag) % 10 == 0:
                rss.append(rss_kib())

    watcher = asyncio.ensure_future(monitor())
    tasks = [asyncio.ensure_future(one(trigger)) for trigger in triggers]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:  # still waiting at the timeout: counted as missing events
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    finished.set()
    await watcher
    return done, events, kinds


def run(
    mode: str = "per-fax",
    count: int = 1000,
    accounts: int = 1,
    window: float = 60.0,
    poll: float = 5.0,
    seed: int = 7,
    profile: str | None = None,
) -> dict[str, object]:
    """One row, in this process."""
    logging.getLogger("airflow_provider_faxplus").setLevel(logging.WARNING)
    from airflow_provider_faxplus.triggers.outbox import POOL_MAX_CONNECTIONS, OutboxFaxTrigger

    rng = random.Random(seed)  # noqa: S311 - reproducible lifetimes, not crypto
    users = account_ids(accounts)
    with Sandbox(members=tuple(users) if accounts > 1 else ()) as sandbox:
        sandbox.control("POST", "/settings", {"log_response_bodies": False})
        os.environ["AIRFLOW_CONN_FAXPLUS_DEFAULT"] = sandbox.connection_json()
        lifetimes = [rng.uniform(0.5, window) for _ in range(count)]
        specs = [
            {
                "id": f"fax{i:06d}",
                "user_id": users[i % accounts],
                "lifecycle": [{"status": "sending", "seconds": life}],
            }
            for i, life in enumerate(lifetimes)
        ]
        for start in range(0, count, 10000):
            sandbox.control("POST", "/faxes", specs[start : start + 10000])
        base_rss = rss_kib()
        # As the sensor hands them over: it has looked once (the fax was there) before deferring.
        seen = {"started_at": time.time(), "ever_seen": True, "last_status": "sending", "last_record": None}
        extra = {"shared_poll": mode == "shared"} if shared_poll_available() else {}
        triggers = [
            OutboxFaxTrigger(
                outbox_fax_id=spec["id"],
                user_id=spec["user_id"],
                poke_interval=poll,
                progress=dict(seen),
                **extra,
            )
            for spec in specs
        ]
        lag: list[float] = []
        rss: list[int] = [base_rss]
        sandbox_cpu0, times0 = sandbox.cpu_seconds(), os.times()
        started = time.time()
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        with FullCollections() as collections:
            done, events, kinds = asyncio.run(
                _drive(triggers, lag, rss, timeout=window + 10 * poll + count / 1000)
            )
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        elapsed = time.time() - started
        times1 = os.times()
        sandbox_cpu = sandbox.cpu_seconds() - sandbox_cpu0
        client_cpu = (times1.user + times1.system) - (times0.user + times0.system)
        faxes = {fax["id"]: fax for fax in sandbox.control("GET", "/faxes")}
        log = sandbox.control("GET", "/requests")
    delays = [done[fax_id] - faxes[fax_id]["left_at_ts"] for fax_id in done]
    # Requests by kind, per poll interval of the run (from the first API request to the last).
    kind_of: list[tuple[float, str]] = []
    for entry in log:
        parts = entry["path"].split("/")  # /v3/accounts/{user}/outbox[/{id}]
        if entry["method"] != "GET" or len(parts) < 5:
            kind_of.append((entry["at"], "other"))
        elif len(parts) == 5:
            kind_of.append((entry["at"], "list"))
        else:  # a 404 confirms a fax gone; a 200 is a look at a fax still in the outbox
            kind_of.append((entry["at"], "confirm" if entry["status"] in (400, 404) else "get"))
    first = min((at for at, _ in kind_of), default=started)
    last = max((at for at, _ in kind_of), default=started)
    intervals = (last - first) // poll + 1  # the intervals of the run that saw requests
    totals = Counter(kind for _, kind in kind_of)
    buckets: Counter[int] = Counter()
    excess: Counter[int] = Counter()  # per interval: requests beyond accounts + confirmations
    for at, kind in kind_of:
        bucket = int((at - first) // poll)
        buckets[bucket] += 1
        if kind != "confirm":
            excess[bucket] += 1
    missing = [fax_id for fax_id in faxes if fax_id not in done]
    return {
        "mode": mode if (extra or mode == "per-fax") else f"{mode} (unavailable: per-fax)",
        "count": count,
        "accounts": accounts,
        "events": len(done),
        "missing": len(missing),
        "duplicated": sum(n - 1 for n in events.values() if n > 1),
        "event_kinds": dict(kinds),
        "elapsed_s": elapsed,
        "rss_per_trigger_kib": (max(rss) - base_rss) / count,
        "peak_rss_added_mib": (max(rss) - base_rss) / 1024,
        "lag_p50_ms": percentile(lag, 50) * 1000,
        "lag_p99_ms": percentile(lag, 99) * 1000,
        "lag_max_ms": max(lag) * 1000,
        "requests": len(log),
        "list_per_interval": totals["list"] / intervals,
        "confirm_per_interval": totals["confirm"] / intervals,
        "get_per_interval": totals["get"] / intervals,
        "other_requests": totals["other"],
        "max_requests_in_an_interval": max(buckets.values(), default=0),
        "max_excess_in_an_interval": max(excess.values(), default=0),
        "connections": len({entry["client_port"] for entry in log}),
        "pool_size": POOL_MAX_CONNECTIONS,
        "delay_p50_s": percentile(delays, 50),
        "delay_p99_s": percentile(delays, 99),
        "delay_max_s": max(delays, default=float("nan")),
        "late_events": sum(1 for delay in delays if delay > poll + 1.0),
        "poll_s": poll,
        "client_cpu_share": client_cpu / elapsed,
        "sandbox_cpu_share": sandbox_cpu / elapsed,
        "load_average": os.getloadavg(),
        "full_gcs": len(collections.durations),
        "full_gc_max_ms": max(collections.durations, default=0.0) * 1000,
        "full_gc_total_s": sum(collections.durations),
    }


def run_isolated(mode: str, count: int, accounts: int, window: float, poll: float) -> dict[str, object]:
    """One row in a fresh interpreter: RSS and the heap start from the same point for every row."""
    args = json.dumps({"mode": mode, "count": count, "accounts": accounts, "window": window, "poll": poll})
    out = subprocess.run(
        [sys.executable, __file__, "--row", args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:  # the table says so; the other rows still count
        print(f"row {args} failed (exit {out.returncode}):\n{out.stderr[-3000:]}", file=sys.stderr)
        return {"mode": mode, "count": count, "accounts": accounts, "failed": out.returncode}
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_matrix(
    counts: list[int], accounts: list[int], window: float = 60.0, poll: float = 5.0, modes: tuple = MODES
) -> list[dict[str, object]]:
    return [
        run_isolated(mode, count, spread, window, poll)
        for count in counts
        for spread in accounts
        for mode in modes
    ]


def table(results: list[dict[str, object]]) -> list[str]:
    lines = [
        "| waiting faxes | accounts | mode | requests per 5 s interval: list / confirm GET / per-fax GET "
        "(max in one, over goal) | loop lag p50 / p99 / max | leave → event p50 / p99 / max (over interval "
        "+ 1 s) | RSS per waiting fax | events missing / duplicated | CPU: triggerer / sandbox "
        "| full GCs (longest) | TCP connections | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "failed" in r:
            lines.append(f"| {r['count']:,} | {r['accounts']} | {r['mode']} | failed (exit {r['failed']}) |")
            continue
        lines.append(
            f"| {r['count']:,} | {r['accounts']} | {r['mode']} | "
            f"{r['list_per_interval']:.1f} / {r['confirm_per_interval']:.1f} / {r['get_per_interval']:,.1f} "
            f"({r['max_requests_in_an_interval']:,}, {r['max_excess_in_an_interval'] - r['accounts']:+,}) | "
            f"{r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f} / {r['lag_max_ms']:.0f} ms | "
            f"{r['delay_p50_s']:.2f} / {r['delay_p99_s']:.2f} / {r['delay_max_s']:.2f} s "
            f"({r['late_events']:,}) | "
            f"{r['rss_per_trigger_kib']:.1f} KiB ({r['peak_rss_added_mib']:.0f} MiB) | "
            f"{r['missing']} / {r['duplicated']} | "
            f"{r['client_cpu_share']:.0%} / {r['sandbox_cpu_share']:.0%} | "
            f"{r['full_gcs']} ({r['full_gc_max_ms']:.0f} ms) | {r['connections']} | {r['elapsed_s']:.0f} s |"
        )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, action="append")
    parser.add_argument("--accounts", type=int, action="append")
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--profile", help="cProfile the triggers' run into this file (one row, in-process)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # run_isolated's child: one row, JSON out
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run(**json.loads(args.row))))
    elif args.profile:
        mode = (args.mode or ["shared"])[0]
        row = run(
            mode,
            (args.count or [1000])[0],
            (args.accounts or [1])[0],
            args.window,
            args.poll,
            7,
            args.profile,
        )
        print("\n".join(table([row])))
    else:
        results = run_matrix(
            args.count or [1000], args.accounts or [1, 10], args.window, args.poll, tuple(args.mode or MODES)
        )
        print("\n".join(table(results)))
        print(f"\nload average after the run: {os.getloadavg()[0]:.2f} (1 min)")
