"""An OutboxEventTrigger over a big outbox: loop stalls, CPU per tick and the stored cursor's size.

N faxes (32-hex ids, as the sandbox and Fax.Plus give) sit in the outbox; one OutboxEventTrigger with
``report_existing=True`` and a JSON state store watches it. The first tick reports N ``entered`` events
and writes the first cursor; the following ticks find nothing new. Printed: the longest loop stall (how
late a 5 ms sleep woke up) on the first tick and on the steady ticks, the triggerer CPU of each, and the
stored cursor (its largest value, as Airflow's ``max_value_storage_bytes`` limits each, and all its keys),
and the full garbage collections meanwhile (their pauses grow with all the process holds: ``--no-gc``
measures the trigger's own stalls without them). The sandbox runs in its own process.

python bench/outbox_events_cursor.py --count 1000 --count 10000 [--no-gc]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import time
from typing import Any

from _common import FullCollections, Sandbox


class JsonStore:
    """The asset state store as the triggerer's accessor keeps it: one JSON value per key."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.dumps(value)


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


async def _measure(count: int, ticks: int) -> dict[str, Any]:
    from airflow_provider_faxplus.triggers import acked_cursor, outbox_events, outbox_poll

    acked_cursor.SETTLE_SECONDS = 0.0
    store = JsonStore()
    trigger = outbox_events.OutboxEventTrigger(report_existing=True, poll_interval=1.0)
    trigger.asset_state_store = store
    answered: list[float] = []  # CPU time when each tick's snapshot came back
    real_snapshot = outbox_poll.AccountPoll.snapshot

    async def counted(self: Any, **kwargs: Any) -> Any:
        snapshot = await real_snapshot(self, **kwargs)
        answered.append(_cpu())
        return snapshot

    outbox_poll.AccountPoll.snapshot = counted  # type: ignore[method-assign]
    stalls: list[tuple[int, float]] = []  # (ticks answered so far, stall)
    events = 0
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            stalls.append((len(answered), time.perf_counter() - started - 0.005))

    async def consume() -> None:
        nonlocal events
        async for _event in trigger.run():
            events += 1

    prober = asyncio.ensure_future(probe())
    task = asyncio.ensure_future(consume())
    collections = FullCollections().__enter__()
    try:
        while len(answered) < ticks + 2:  # the first tick, `ticks` steady ones, and one more answer
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        stop.set()
        await asyncio.gather(task, prober, return_exceptions=True)
        collections.__exit__()
        outbox_poll.AccountPoll.snapshot = real_snapshot  # type: ignore[method-assign]
    sizes = [len(value.encode()) for value in store.values.values()]
    first = [stall for tick, stall in stalls if tick == 1]
    steady = [stall for tick, stall in stalls if 2 <= tick <= ticks + 1]
    return {
        "count": count,
        "events": events,
        "first_stall_ms": max(first, default=0.0) * 1000,
        "steady_stall_ms": max(steady, default=0.0) * 1000,
        "first_cpu_s": answered[1] - answered[0],
        "steady_cpu_s": (answered[ticks + 1] - answered[1]) / ticks,
        "keys": len(sizes),
        "largest_value_bytes": max(sizes, default=0),
        "total_bytes": sum(sizes),
        "full_gcs": len(collections.durations),
        "full_gc_max_ms": max(collections.durations, default=0.0) * 1000,
    }


def run(count: int, ticks: int, no_gc: bool = False) -> dict[str, Any]:
    if no_gc:
        gc.disable()
    logging.getLogger("airflow_provider_faxplus").setLevel(logging.WARNING)
    with Sandbox() as sandbox:
        sandbox.control("POST", "/settings", {"log_response_bodies": False})
        os.environ["AIRFLOW_CONN_FAXPLUS_DEFAULT"] = sandbox.connection_json()
        life = [{"status": "sending", "seconds": 3600}]
        for start in range(0, count, 10000):
            sandbox.control("POST", "/faxes", [{"lifecycle": life}] * min(10000, count - start))
        return asyncio.run(_measure(count, ticks))


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| faxes | entered events | longest stall, first tick / steady | CPU, first tick / steady tick "
        "| cursor keys | largest value | all values | full GCs (longest) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['count']:,} | {r['events']:,} | {r['first_stall_ms']:.0f} / {r['steady_stall_ms']:.0f} ms "
            f"| {r['first_cpu_s']:.2f} / {r['steady_cpu_s']:.2f} s | {r['keys']} "
            f"| {r['largest_value_bytes']:,} B | {r['total_bytes']:,} B "
            f"| {r['full_gcs']} ({r['full_gc_max_ms']:.0f} ms) |"
        )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, action="append")
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--no-gc", action="store_true", help="the garbage collector off")
    args = parser.parse_args()
    print("\n".join(table([run(count, args.ticks, args.no_gc) for count in args.count or [10000]])))
