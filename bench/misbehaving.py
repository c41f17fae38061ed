"""4. Misbehaving API: requests one waiting deferrable sensor sends in 30 s against 401 and 503.

Both triggers are started as a sensor hands them over after its first look, then the API starts
answering 401 (a revoked token) or 503 (an outage) to everything. Compared with the http provider's
HttpSensor(deferrable=True) trigger on the same endpoint, poke_interval 5 for both.
"""

from __future__ import annotations

import asyncio
import os
import time

from _common import HEADERS, Sandbox

SECONDS = 30.0


async def count_events(trigger, seconds: float) -> tuple[str, float]:
    started = time.monotonic()

    async def first() -> str:
        async for event in trigger.run():
            payload = event.payload
            return str(payload.get("status")) + (f" ({payload.get('kind')})" if payload.get("kind") else "")
        return "ended"

    try:
        outcome = await asyncio.wait_for(first(), seconds)
    except TimeoutError:
        outcome = "still waiting"
    return outcome, time.monotonic() - started


def run(seconds: float = SECONDS) -> list[str]:
    from airflow.providers.http.triggers.http import HttpSensorTrigger

    from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger

    rows = []
    with Sandbox() as sandbox:
        os.environ["AIRFLOW_CONN_FAXPLUS_DEFAULT"] = sandbox.connection_json()
        os.environ["AIRFLOW_CONN_HTTP_BENCH"] = sandbox.root
        for status in (401, 503):
            for name, make in (
                (
                    "OutboxFaxSensor (OutboxFaxTrigger)",
                    lambda fax_id: OutboxFaxTrigger(
                        outbox_fax_id=fax_id,
                        poke_interval=5,
                        progress={"started_at": time.time(), "ever_seen": True, "last_status": "sending"},
                    ),
                ),
                (
                    "HttpSensor 6.3.0 (HttpSensorTrigger)",
                    lambda fax_id: HttpSensorTrigger(
                        endpoint=f"/v3/accounts/self/outbox/{fax_id}",
                        http_conn_id="http_bench",
                        method="GET",
                        headers=HEADERS,
                        poke_interval=5,
                    ),
                ),
            ):
                sandbox.control("POST", "/reset")
                fax_id = sandbox.create_fax(lifecycle=[{"status": "sending", "seconds": 3600}])
                sandbox.control("POST", "/faults", {"status": status, "times": 10**9})
                outcome, elapsed = asyncio.run(count_events(make(fax_id), seconds))
                sent = len(sandbox.control("GET", "/requests"))
                rows.append((status, name, sent, outcome, elapsed))
    lines = [
        f"| API answers | sensor | requests in {seconds:.0f} s | outcome |",
        "|---|---|---|---|",
    ]
    for status, name, sent, outcome, elapsed in rows:
        lines.append(f"| {status} to everything | {name} | {sent:,} | {outcome} after {elapsed:.1f} s |")
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
