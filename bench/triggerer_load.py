"""3. A triggerer full of waiting faxes: N OutboxFaxTriggers in one event loop.

Each fax leaves the outbox at a random time within WINDOW seconds; the triggers poll every POLL seconds.
The sandbox runs in its own process. The provider's loggers are set to WARNING (a triggerer's log
handlers are not what is measured here).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import time

from _common import Sandbox, percentile, rss_kib


async def _drive(triggers: list, lag: list[float], rss: list[int]) -> dict[str, float]:
    done: dict[str, float] = {}
    finished = asyncio.Event()

    async def one(trigger) -> None:
        async for event in trigger.run():
            assert event.payload["status"] == "success", event.payload
            done[trigger.outbox_fax_id] = time.time()
            break

    async def monitor() -> None:
        while not finished.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.05)
            lag.append(time.perf_counter() - started - 0.05)
            if len(lag) % 10 == 0:
                rss.append(rss_kib())

    watcher = asyncio.ensure_future(monitor())
    await asyncio.gather(*(one(trigger) for trigger in triggers))
    finished.set()
    await watcher
    return done


def run(count: int = 1000, window: float = 60.0, poll: float = 5.0, seed: int = 7) -> dict[str, object]:
    logging.getLogger("airflow_provider_faxplus").setLevel(logging.WARNING)
    from airflow_provider_faxplus.triggers.outbox import POOL_MAX_CONNECTIONS, OutboxFaxTrigger

    rng = random.Random(seed)  # noqa: S311 - reproducible lifetimes, not crypto
    with Sandbox() as sandbox:
        os.environ["AIRFLOW_CONN_FAXPLUS_DEFAULT"] = sandbox.connection_json()
        lifetimes = [rng.uniform(0.5, window) for _ in range(count)]
        specs = [
            {"id": f"fax{i:05d}", "lifecycle": [{"status": "sending", "seconds": life}]}
            for i, life in enumerate(lifetimes)
        ]
        sandbox.control("POST", "/faxes", specs)
        base_rss = rss_kib()
        # As the sensor hands them over: it has looked once (the fax was there) before deferring.
        seen = {"started_at": time.time(), "ever_seen": True, "last_status": "sending", "last_record": None}
        triggers = [
            OutboxFaxTrigger(outbox_fax_id=spec["id"], poke_interval=poll, progress=dict(seen))
            for spec in specs
        ]
        lag: list[float] = []
        rss: list[int] = [base_rss]
        started = time.time()
        done = asyncio.run(_drive(triggers, lag, rss))
        elapsed = time.time() - started
        faxes = {fax["id"]: fax for fax in sandbox.control("GET", "/faxes")}
        log = sandbox.control("GET", "/requests")
    delays = [done[fax_id] - faxes[fax_id]["left_at_ts"] for fax_id in done]
    # The least a poller at this interval needs: every poll from its first one while the fax is in the
    # outbox, plus the one that finds it gone.
    first_poll: dict[str, float] = {}
    for entry in log:
        first_poll.setdefault(entry["path"].rsplit("/", 1)[1], entry["at"])
    minimum = 0
    for fax_id in done:
        in_outbox = faxes[fax_id]["left_at_ts"] - first_poll[fax_id]
        minimum += 1 if in_outbox <= 0 else math.floor(in_outbox / poll) + 2
    return {
        "count": count,
        "events": len(done),
        "elapsed_s": elapsed,
        "rss_per_trigger_kib": (max(rss) - base_rss) / count,
        "peak_rss_added_mib": (max(rss) - base_rss) / 1024,
        "lag_p50_ms": percentile(lag, 50) * 1000,
        "lag_p99_ms": percentile(lag, 99) * 1000,
        "lag_max_ms": max(lag) * 1000,
        "requests": len(log),
        "minimum_requests": minimum,
        "connections": len({entry["client_port"] for entry in log}),
        "pool_size": POOL_MAX_CONNECTIONS,
        "delay_p50_s": percentile(delays, 50),
        "delay_p99_s": percentile(delays, 99),
        "delay_max_s": max(delays),
        "poll_s": poll,
    }


def table(results: list[dict[str, object]]) -> list[str]:
    lines = [
        "| triggers | RSS added per trigger | loop lag p50 / p99 / max | requests sent / minimum | TCP "
        "connections (pool) | leave → event p50 / p99 / max | run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['count']:,} | {r['rss_per_trigger_kib']:.1f} KiB ({r['peak_rss_added_mib']:.0f} MiB) | "
            f"{r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f} / {r['lag_max_ms']:.0f} ms | "
            f"{r['requests']:,} / {r['minimum_requests']:,} | {r['connections']} ({r['pool_size']}) | "
            f"{r['delay_p50_s']:.2f} / {r['delay_p99_s']:.2f} / {r['delay_max_s']:.2f} s | "
            f"{r['elapsed_s']:.0f} s |"
        )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, action="append")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=5.0)
    args = parser.parse_args()
    results = [run(count, args.window, args.poll) for count in (args.count or [1000])]
    print("\n".join(table(results)))
