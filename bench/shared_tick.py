"""Anatomy of one shared-poll tick: N callers of one account's poll, as N triggers use it.

Each caller asks ``poll.snapshot(due=...)``, reads its own record (parsed on first use) and asks again one
interval after the answer's request was sent. The faxes never leave, so every tick is the same: one list
request of N records, then N callers woken. Printed per tick: how long the sandbox took to answer (the
request's round trip), the longest loop stall (how late a 5 ms sleep woke up), and the triggerer CPU
time of the tick. The sandbox runs in its own process.

python bench/shared_tick.py --count 10000 --count 100000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import time

from _common import FullCollections, Sandbox, percentile, rss_kib


async def _ticks(count: int, interval: float, ticks: int) -> dict[str, float]:
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
    from airflow_provider_faxplus.triggers import outbox_poll

    config = FaxPlusHook().config
    stalls: list[float] = []
    first: set[str] = set()  # callers that have had their first answer
    tracked: list[int] = []  # objects the garbage collector tracks, once all callers run
    stop = asyncio.Event()

    async def monitor() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            if len(first) == count:  # steady ticks only: not the start of N callers
                stalls.append(time.perf_counter() - started - 0.005)

    async with outbox_poll.account_poll(config, "self") as poll:
        poll.holders += 1  # a trigger alone on its account polls its own fax: count as shared from the start

        async def caller(fax_id: str) -> None:
            due = time.time() - interval
            for _ in range(ticks):
                snapshot = await poll.snapshot(due=due, interval=interval)
                assert snapshot.records[fax_id].status is not None
                first.add(fax_id)
                if len(first) == count and not tracked:
                    tracked.append(len(gc.get_objects()))
                due = snapshot.started_at + interval

        watcher = asyncio.ensure_future(monitor())
        cpu0 = os.times()  # start-up included: per tick it is (ticks - 1) ticks of work plus the start
        started = time.time()
        with FullCollections() as collections:
            await asyncio.gather(*(caller(f"fax{i:06d}") for i in range(count)))
        elapsed = time.time() - started
        cpu1 = os.times()
        poll.holders -= 1
        stop.set()
        await watcher
    return {
        "count": count,
        "ticks": ticks,
        "lists": poll.requests_sent,
        "elapsed_s": elapsed,
        "cpu_per_tick_s": ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / ticks,
        "stall_p99_ms": percentile(stalls, 99) * 1000,
        "stall_max_ms": max(stalls) * 1000,
        "tracked_objects": tracked[0] if tracked else 0,
        "full_gcs": len(collections.durations),
        "full_gc_max_ms": max(collections.durations, default=0.0) * 1000,
    }


def run(count: int, interval: float = 5.0, ticks: int = 4) -> dict[str, float]:
    logging.getLogger("airflow_provider_faxplus").setLevel(logging.WARNING)
    import airflow_provider_faxplus.hooks.faxplus
    import airflow_provider_faxplus.triggers.outbox_poll  # noqa: F401 - imported before RSS is read

    with Sandbox() as sandbox:
        sandbox.control("POST", "/settings", {"log_response_bodies": False})
        os.environ["AIRFLOW_CONN_FAXPLUS_DEFAULT"] = sandbox.connection_json()
        life = [{"status": "sending", "seconds": 3600}]
        for start in range(0, count, 10000):
            batch = range(start, min(count, start + 10000))
            sandbox.control("POST", "/faxes", [{"id": f"fax{i:06d}", "lifecycle": life} for i in batch])
        rss0 = rss_kib()
        sandbox_cpu0 = sandbox.cpu_seconds()
        result = asyncio.run(_ticks(count, interval, ticks))
        result["sandbox_cpu_per_tick_s"] = (sandbox.cpu_seconds() - sandbox_cpu0) / ticks
        result["rss_added_mib"] = (rss_kib() - rss0) / 1024
        log = sandbox.control("GET", "/requests")
    lists = [entry for entry in log if entry["path"] == "/v3/accounts/self/outbox"]
    result["list_requests_logged"] = len(lists)
    return result


def table(results: list[dict[str, float]]) -> list[str]:
    lines = [
        "| callers (records per list) | list requests / ticks | loop stall p99 / max "
        "| triggerer CPU per tick | sandbox CPU per tick | RSS added | objects the GC tracks "
        "| full GCs (longest) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['count']:,} | {r['list_requests_logged']} / {r['ticks']} | {r['stall_p99_ms']:.0f} / "
            f"{r['stall_max_ms']:.0f} ms | {r['cpu_per_tick_s']:.2f} s | "
            f"{r['sandbox_cpu_per_tick_s']:.2f} s | {r['rss_added_mib']:.0f} MiB | "
            f"{r['tracked_objects']:,} | {r['full_gcs']} ({r['full_gc_max_ms']:.0f} ms) |"
        )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, action="append")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--ticks", type=int, default=4)
    args = parser.parse_args()
    print("\n".join(table([run(count, args.interval, args.ticks) for count in args.count or [10000]])))
