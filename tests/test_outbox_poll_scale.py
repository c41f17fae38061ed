"""Shared outbox polling with many waiters: a tick's answer must not stall the triggerer's event loop.

Against the sandbox over real HTTP. Loop iterations are counted, not timed: a probe task that yields at
every iteration numbers them, and each waiter notes the number at which it was woken.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.models import OutboxFax, parse_outbox
from airflow_provider_faxplus.triggers import outbox_poll


def test_a_ticks_answer_wakes_its_waiters_a_slice_per_loop_iteration(faxplus_conn, control):
    count = 3 * outbox_poll.SETTLE_SLICE + 7
    config = FaxPlusHook().config

    async def scenario() -> tuple[Counter[int], set[float], int]:
        iteration = 0
        stop = asyncio.Event()

        async def probe() -> None:
            nonlocal iteration
            while not stop.is_set():
                iteration += 1
                await asyncio.sleep(0)

        woken: Counter[int] = Counter()
        answers: set[float] = set()
        async with outbox_poll.account_poll(config, "self") as poll:
            due = time.monotonic()

            async def waiter() -> None:
                snapshot = await poll.snapshot(due=due, interval=5.0)
                woken[iteration] += 1
                answers.add(snapshot.started_at)

            prober = asyncio.ensure_future(probe())
            await asyncio.gather(*(waiter() for _ in range(count)))
            stop.set()
            await prober
            return woken, answers, poll.requests_sent

    woken, answers, sent = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert (sent, len(answers)) == (1, 1)  # one list request answered them all
    assert sum(woken.values()) == count
    # Woken over several loop iterations, never more than a slice in one: the loop serves its other
    # tasks (other accounts' answers, timers, the triggerer's heartbeat) between slices.
    assert len(woken) >= 4, woken
    assert max(woken.values()) <= outbox_poll.SETTLE_SLICE, woken


def test_a_record_unchanged_since_the_last_tick_is_not_parsed_again(faxplus_conn, control):
    # Each list answer counts as a look: "moves" is submitted for two answers, then sending.
    control.create_fax(id="stays", lifecycle=[{"status": "submitted", "polls": 10}])
    control.create_fax(
        id="moves", lifecycle=[{"status": "submitted", "polls": 2}, {"status": "sending", "polls": 9}]
    )
    config = FaxPlusHook().config

    async def scenario() -> list[dict[str, OutboxFax]]:
        answers = []
        async with outbox_poll.account_poll(config, "self") as poll:
            due = time.monotonic()
            for _ in range(3):
                snapshot = await poll.snapshot(due=due, interval=0.1)
                answers.append({fax_id: snapshot.records[fax_id] for fax_id in ("stays", "moves")})
                due = snapshot.started_at + 0.1
        return answers

    first, second, third = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [a["moves"].status.value for a in (first, second, third)] == ["submitted", "submitted", "sending"]
    # The same record again is the same parsed object; a changed one is parsed anew.
    assert first["stays"] is second["stays"] is third["stays"]
    assert first["moves"] is second["moves"]
    assert third["moves"] is not second["moves"]
    assert third["moves"] == parse_outbox(third["moves"].raw)
