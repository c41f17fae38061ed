"""N FaxDeliveryTriggers of one account over 10,000 sent fax records: one listing per account per interval.

The sandbox (its own process) holds ``records`` sent fax records of one account, all sent within the last
minutes (the worst case: every one of them is in the window the triggers list), each with an id of its own
(id policy ``new``: records are matched by their fields, the harder case). N triggers run in one event loop
as a triggerer runs them, each as the sensor defers it after its first look saw the fax leave the outbox:

- **waiting**: N triggers whose records are not there yet, for ``ticks`` intervals: what a steady
  interval costs (listing pages per interval, triggerer CPU per interval, loop stall, RSS);
- **found**: N triggers whose records are among the 10,000: requests and time until every trigger has its
  event.

python bench/delivery_records.py --waiters 1 --waiters 100 --waiters 1000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import time
from typing import Any

from _common import FullCollections, Sandbox, percentile, rss_kib

SENDER = "+16699990000"


def _destination(i: int) -> str:
    return f"+1669{i:07d}"


def _triggers(count: int, interval: float, submitted_at: str, waiting: bool) -> list[Any]:
    from airflow_provider_faxplus.triggers.delivery import FaxDeliveryTrigger

    triggers = []
    for i in range(count):
        outbox_fax_id = f"fax{i:06d}"
        sent = {
            "outbox_fax_id": outbox_fax_id,
            # A waiting trigger's fax went to a destination no record has (yet).
            "to": _destination(10_000_000 - 1 - i) if waiting else _destination(i),
            "from_number": SENDER,
            "submitted_at": submitted_at,
            "comment": f"letter {i}",
        }
        triggers.append(
            FaxDeliveryTrigger(
                outbox_fax_id=outbox_fax_id,
                user_id="self",
                faxplus_conn_id="faxplus_default",
                poke_interval=interval,
                sent=sent,
                left=True,
                record_grace_period=300.0,
                left_at=time.time(),
                deferred_at=time.time(),
            )
        )
    return triggers


async def _waiting(count: int, interval: float, ticks: int, submitted_at: str) -> dict[str, float]:
    from airflow_provider_faxplus.triggers import sent_poll

    triggers = _triggers(count, interval, submitted_at, waiting=True)
    stalls: list[float] = []
    stop = asyncio.Event()

    async def monitor() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            stalls.append(time.perf_counter() - started - 0.005)

    async def run(trigger: Any) -> None:
        async for _ in trigger.run():
            raise AssertionError("a waiting trigger had an event")

    watcher = asyncio.ensure_future(monitor())
    runs = [asyncio.ensure_future(run(t)) for t in triggers]
    await asyncio.sleep(interval / 2)  # the first listing (all triggers start together)
    polls = [p for loop_polls in sent_poll._POLLS.values() for p in loop_polls.values()]
    [poll] = polls
    pages0, rss0 = poll.requests_sent, rss_kib()
    cpu0 = os.times()
    gc.collect()
    with FullCollections() as collections:
        await asyncio.sleep(interval * ticks)
    cpu1 = os.times()
    pages = poll.requests_sent - pages0
    rss = rss_kib()
    stop.set()
    for r in runs:
        r.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    await watcher
    return {
        "pages_per_tick": pages / ticks,
        "cpu_per_tick_s": ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / ticks,
        "stall_p99_ms": percentile(stalls, 99) * 1000,
        "stall_max_ms": max(stalls) * 1000,
        "rss_mib": rss / 1024,
        "rss_since_first_tick_mib": (rss - rss0) / 1024,
        "full_gcs": len(collections.durations),
        "full_gc_max_ms": max(collections.durations, default=0.0) * 1000,
    }


async def _found(count: int, interval: float, submitted_at: str) -> dict[str, float]:
    triggers = _triggers(count, interval, submitted_at, waiting=False)

    async def run(trigger: Any) -> dict[str, Any]:
        [event] = [event.payload async for event in trigger.run()]
        return event

    started = time.perf_counter()
    events = await asyncio.gather(*(run(t) for t in triggers))
    elapsed = time.perf_counter() - started
    wrong = [
        e
        for i, e in enumerate(events)
        if e.get("status") != "found" or e["result"]["record"]["to"] != _destination(i)
    ]
    assert not wrong, wrong[:3]
    return {"found_s": elapsed}


def run(waiters: int, records: int = 10_000, interval: float = 5.0, ticks: int = 4) -> dict[str, float]:
    logging.getLogger("airflow_provider_faxplus").setLevel(logging.WARNING)
    import airflow_provider_faxplus.hooks.faxplus
    import airflow_provider_faxplus.triggers.delivery  # noqa: F401 - imported before RSS is read

    with Sandbox() as sandbox:
        sandbox.control("POST", "/settings", {"log_response_bodies": False})
        sandbox.control("POST", "/records/settings", {"id_policy": "new"})
        os.environ["AIRFLOW_CONN_FAXPLUS_DEFAULT"] = sandbox.connection_json(max_attempts=1)
        life = [{"status": "sending", "seconds": 1}]
        for start in range(0, records, 10000):
            batch = range(start, min(records, start + 10000))
            sandbox.control(
                "POST",
                "/faxes",
                [
                    {
                        "id": f"fax{i:06d}",
                        "comment": f"letter {i}",
                        "fields": {"to": [_destination(i)]},
                        "lifecycle": life,
                    }
                    for i in batch
                ],
            )
        sandbox.control("POST", "/clock", {"advance": 60})  # they have all left: 10,000 sent records
        made = sandbox.control("GET", "/records")
        assert len(made) == records, len(made)
        submitted_at = sandbox.control("GET", f"/faxes/fax{0:06d}")["created_at"]
        sandbox.control("DELETE", "/requests")
        sandbox_cpu0 = sandbox.cpu_seconds()
        result: dict[str, float] = {
            "waiters": waiters,
            "records": records,
            "ticks": ticks,
            "interval": interval,
        }
        result.update(asyncio.run(_waiting(waiters, interval, ticks, submitted_at)))
        result["sandbox_cpu_per_tick_s"] = (sandbox.cpu_seconds() - sandbox_cpu0) / (ticks + 0.5)
        log = sandbox.control("GET", "/requests")
        result["listings_logged"] = sum(
            1 for e in log if e["path"].endswith("/faxes") and "offset=0&" in e["query"] + "&"
        )
        result["gets_logged"] = sum(1 for e in log if "/faxes/" in e["path"] or "/outbox" in e["path"])
        sandbox.control("DELETE", "/requests")
        result.update(asyncio.run(_found(waiters, interval, submitted_at)))
        log = sandbox.control("GET", "/requests")
        result["found_requests"] = len(log)
        result["found_listings"] = sum(
            1 for e in log if e["path"].endswith("/faxes") and "offset=0" in e["query"]
        )
    return result


def table(results: list[dict[str, float]]) -> list[str]:
    lines = [
        "| waiting triggers (sent records listed) | listings / intervals begun (pages per interval) "
        "| other requests | triggerer CPU per interval | sandbox CPU per interval | loop stall p99 / max "
        "| RSS (growth over the intervals) | full GCs (longest) | all found: requests (listings), time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['waiters']:,} ({r['records']:,}) | {r['listings_logged']} / {r['ticks'] + 1} "
            f"({r['pages_per_tick']:.0f}) | {r['gets_logged']} | {r['cpu_per_tick_s']:.2f} s | "
            f"{r['sandbox_cpu_per_tick_s']:.2f} s | {r['stall_p99_ms']:.0f} / {r['stall_max_ms']:.0f} ms | "
            f"{r['rss_mib']:.0f} MiB (+{r['rss_since_first_tick_mib']:.0f}) | {r['full_gcs']} "
            f"({r['full_gc_max_ms']:.0f} ms) | {r['found_requests']} ({r['found_listings']}), "
            f"{r['found_s']:.1f} s |"
        )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--waiters", type=int, action="append")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--ticks", type=int, default=4)
    args = parser.parse_args()
    print(
        "\n".join(
            table([run(n, args.records, args.interval, args.ticks) for n in args.waiters or [1, 100, 1000]])
        )
    )
