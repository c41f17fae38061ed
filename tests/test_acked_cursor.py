"""Ack mode (Airflow 3.3): the cursor of an event trigger moves only once Airflow confirmed its events
stored. Driven through Airflow's own ``SharedStreamManager`` (groups, binding windows, ack timeouts, the
advance pump) as the triggerer's runner drives it: each yielded event bound with ``bind_pending_event``,
its persistence confirmed with ``confirm_persisted`` when the test says so (the supervisor's part). The
real triggerer, killed before and after Airflow stored an event, is tests/test_event_ack.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import pytest

from tests.test_outbox_events import (
    AIRFLOW_3,
    ONE_HOUR,
    FailingStore,
    FakeStore,
    cursor,
    list_calls,
    run_async,
)

pytestmark = pytest.mark.skipif(not AIRFLOW_3, reason="asset watchers need Airflow 3")


@pytest.fixture
def ack(monkeypatch):
    """The trigger module with ack mode on (Airflow 3.3+)."""
    from airflow_provider_faxplus.triggers import acked_cursor, outbox_events

    if not acked_cursor.ACK_MODE:
        pytest.skip("this Airflow has no ack mode")
    monkeypatch.setattr(outbox_events, "PARKED_RECHECK_SECONDS", 0.2)
    # Test-only: the sandbox answers in milliseconds (Fax.Plus itself needs at least 1 s).
    monkeypatch.setattr(outbox_events.OutboxEventTrigger, "min_poll_interval", 0.01, raising=False)
    return outbox_events


class Subscribed:
    """One trigger subscribed to ``manager`` as the triggerer's runner does (``run_trigger``): events of
    ``filter_shared_stream`` bound to the raw event they came from, kept until :meth:`persist`."""

    _ids = iter(range(1, 10**6))

    def __init__(self, manager: Any, trigger: Any) -> None:
        self.manager, self.trigger = manager, trigger
        self.trigger_id = next(self._ids)
        self.key = trigger.shared_stream_key()
        assert self.key is not None
        self.events: list[dict[str, Any]] = []
        self.unconfirmed: list[int] = []
        stream = manager.subscribe(trigger_id=self.trigger_id, trigger=trigger, key=self.key)
        self.task = asyncio.ensure_future(self._run(stream))

    async def _run(self, stream: Any) -> None:
        async for event in self.trigger.filter_shared_stream(stream):
            seq = self.manager.bind_pending_event(trigger_id=self.trigger_id, key=self.key)
            assert seq is not None, "an event outside the turn it came from"
            self.events.append(event.payload)
            self.unconfirmed.append(seq)

    def persist(self) -> None:
        """The supervisor stored every event so far."""
        seqs, self.unconfirmed = self.unconfirmed, []
        self.manager.confirm_persisted(seqs)

    async def until(self, check: Any, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.task.done():
                self.task.result()
                raise AssertionError(f"the trigger ended before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; events: {self.events}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """The trigger cancelled and unsubscribed (what a triggerer's death does to its memory)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was until()'s to say
            await self.task
        await self.manager.unsubscribe(self.trigger_id, self.key)

    def kinds(self) -> list[tuple[str, str]]:
        return [(e["event"], e["outbox_fax_id"]) for e in self.events]


def manager(**kwargs: Any) -> Any:
    from airflow.triggers.shared_stream import SharedStreamManager

    return SharedStreamManager(**kwargs)


def watcher(ack: Any, store: FakeStore | None, **kwargs: Any) -> Any:
    trigger = ack.OutboxEventTrigger(poll_interval=kwargs.pop("poll_interval", 0.2), **kwargs)
    if store is not None:
        trigger.asset_state_store = store
    return trigger


def test_ack_mode_is_chosen_where_airflow_has_it(ack, monkeypatch):
    from airflow.triggers.shared_stream import _SharedStreamGroup

    from airflow_provider_faxplus.triggers import acked_cursor

    trigger = watcher(ack, None, report_existing=False)
    key = trigger.shared_stream_key()
    assert key is not None
    assert "faxplus.acked_cursor" in key
    assert trigger.shared_stream_key() == key  # stable for one trigger
    # Another trigger of the same kwargs has its own stream: Airflow acknowledges a turn for all
    # subscribers at once.
    assert key != watcher(ack, None, report_existing=False).shared_stream_key()
    assert key != watcher(ack, None, report_existing=False, events=["left"]).shared_stream_key()
    group = _SharedStreamGroup(
        key=key,
        trigger_class=type(trigger),
        kwargs=trigger.serialize()[1],
        on_poll_terminate=lambda group: None,
        max_subscriber_queue=8,
        ack_timeout=1.0,
        log=logging.getLogger("test"),  # type: ignore[arg-type]
    )
    assert group._is_ack_required()  # Airflow's own test of an overridden producer factory
    producer = type(trigger).create_shared_stream_producer(trigger.serialize()[1])
    assert isinstance(producer, acked_cursor.TurnProducer)
    assert producer.interval == 0.2
    monkeypatch.setattr(acked_cursor.AckedCursorTrigger, "ack_mode", False)  # the fallback: run()
    assert trigger.shared_stream_key() is None


@run_async
async def test_the_cursor_moves_only_once_airflow_confirmed_the_events_stored(faxplus_conn, control, ack):
    store = FakeStore()
    triggerer = manager()
    one = Subscribed(triggerer, watcher(ack, store, report_existing=False))
    try:
        await one.until(lambda: cursor(store, one.trigger) == {}, "the first (empty) cursor")
        fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await one.until(lambda: one.events, "the event")
        calls = list_calls(control)
        # Far longer than the old settle time (3 s at a 1 s interval, here 15 turns): still unconfirmed.
        await one.until(lambda: list_calls(control) >= calls + 15, "fifteen more turns")
        assert cursor(store, one.trigger) == {}
        assert one.kinds() == [("entered", fax_id)]  # this process does not report it again
        one.persist()
        await one.until(lambda: cursor(store, one.trigger), "the cursor once Airflow confirmed")
    finally:
        await one.stop()
    assert cursor(store, one.trigger) == {fax_id: {"status": "submitted", "reported": ["entered"]}}


@run_async
async def test_a_restart_repeats_only_what_airflow_never_confirmed(faxplus_conn, control, ack):
    """The triggerer dies with one event confirmed and one not: its successor reports the second again
    (redelivery), never the first."""
    store = FakeStore()
    first = Subscribed(manager(), watcher(ack, store, report_existing=False))
    try:
        await first.until(lambda: cursor(store, first.trigger) == {}, "the first (empty) cursor")
        stored = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await first.until(lambda: first.events, "the first event")
        first.persist()
        await first.until(lambda: stored in (cursor(store, first.trigger) or {}), "its cursor")
        unconfirmed = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await first.until(lambda: len(first.events) == 2, "the second event")
        writes = store.writes
    finally:
        await first.stop()  # the kill: the second event was yielded, never confirmed stored
    assert store.writes == writes
    assert set(cursor(store, first.trigger) or {}) == {stored}

    second = Subscribed(manager(), watcher(ack, store, report_existing=False))  # the same kwargs
    try:
        await second.until(lambda: second.events, "the redelivered event")
        second.persist()
        await second.until(lambda: len(cursor(store, second.trigger) or {}) == 2, "the cursor of both")
        calls = list_calls(control)
        await second.until(lambda: list_calls(control) >= calls + 3, "three more turns")
    finally:
        await second.stop()
    assert first.kinds() == [("entered", stored), ("entered", unconfirmed)]
    assert second.kinds() == [("entered", unconfirmed)]


@run_async
async def test_while_the_store_fails_nothing_is_reported_twice_and_the_write_lands_later(
    faxplus_conn, control, ack, caplog, monkeypatch
):
    """Finding 1 in ack mode: the confirmed state is retried with a growing back-off, between turns
    (never raising into Airflow, which would end the stream and restart the trigger from the old cursor)."""
    caplog.set_level(logging.WARNING)
    attempts: list[int] = []
    from airflow_provider_faxplus.triggers import acked_cursor

    real = acked_cursor.backoff_seconds

    def recorded(attempt: int, initial: float, retry_after: float | None = None) -> float:
        attempts.append(attempt)
        return min(real(attempt, initial, retry_after), 0.3)

    monkeypatch.setattr(acked_cursor, "backoff_seconds", recorded)
    store = FailingStore()
    one = Subscribed(manager(), watcher(ack, store, report_existing=False, poll_interval=0.1))
    try:
        await one.until(lambda: cursor(store, one.trigger) == {}, "the first (empty) cursor")
        store.fail_writes = 4
        fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await one.until(lambda: one.events, "the event")
        one.persist()
        await one.until(lambda: cursor(store, one.trigger), "the cursor written at last")
        calls = list_calls(control)
        await one.until(lambda: list_calls(control) >= calls + 3, "three more turns")
    finally:
        await one.stop()
    assert one.kinds() == [("entered", fax_id)]
    assert attempts[:4] == [1, 2, 3, 4]
    assert caplog.text.count("Could not store the cursor of the outbox watcher") == 4


@run_async
async def test_an_ack_timeout_leaves_the_cursor_at_the_last_confirmed_state(
    faxplus_conn, control, ack, caplog
):
    """Airflow fails the trigger whose events it did not confirm in time (``shared_stream_ack_timeout``);
    its later states hold those events, so none of them is written."""
    caplog.set_level(logging.WARNING)
    store = FakeStore()
    one = Subscribed(manager(ack_timeout=1.0), watcher(ack, store, report_existing=False, poll_interval=0.1))
    fax_id = ""
    try:
        await one.until(lambda: cursor(store, one.trigger) == {}, "the first (empty) cursor")
        fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
        with pytest.raises(Exception, match="did not finish processing event"):
            await one.until(lambda: False, "Airflow's ack timeout", timeout=30)
    finally:
        await one.stop()
    assert one.kinds() == [("entered", fax_id)]
    assert cursor(store, one.trigger) == {}
    assert "Airflow did not confirm the events of a turn" in caplog.text


@run_async
async def test_one_list_per_interval_serves_sensors_and_ack_mode_watchers_together(
    faxplus_conn, control, ack
):
    """Two watchers in ack mode (each its own shared-stream group, as in a triggerer) and three sensors
    of the same account, one interval: the account's poll sends one list request per interval for all
    five (unshared they would be five), and the sensors send no GET of their own."""
    from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger

    interval = 0.5
    faxes = [control.create_fax(lifecycle=ONE_HOUR)["id"] for _ in range(3)]
    triggerer = manager()
    store = FakeStore()
    watchers = [
        Subscribed(triggerer, watcher(ack, store, report_existing=True, events=[k], poll_interval=interval))
        for k in ("entered", "left")
    ]
    progress = {"started_at": time.time(), "ever_seen": True, "last_status": "submitted"}
    sensors = [
        asyncio.ensure_future(
            anext(OutboxFaxTrigger(outbox_fax_id=fax, poke_interval=interval, progress=progress).run())
        )
        for fax in faxes
    ]
    try:
        entered = watchers[0]
        await entered.until(lambda: len(entered.events) == 3, "the three entered events")
        entered.persist()
        calls, started = list_calls(control), time.monotonic()
        await entered.until(lambda: list_calls(control) >= calls + 10, "ten more list calls", timeout=60)
        elapsed = time.monotonic() - started
        more = list_calls(control) - calls
    finally:
        for sensor in sensors:
            sensor.cancel()
        for one in watchers:
            await one.stop()
        await asyncio.gather(*sensors, return_exceptions=True)
    gets = [e for e in control.requests() if e["method"] == "GET" and "/outbox/" in e["path"]]
    print(f"FAXPLUS-SHARED: {more} list calls in {elapsed:.2f} s at a {interval} s interval, 5 subscribers")
    # Ten calls take at least nine intervals: one list per interval (five subscribers unshared: 5 per).
    assert elapsed >= 9 * interval * 0.9, (more, elapsed)
    assert more <= elapsed / interval + 1, (more, elapsed)
    assert gets == []
    assert all(not sensor.done() or sensor.cancelled() for sensor in sensors)


SOURCE: list[str] = []  # what the minimal trigger below lists


def _minimal_trigger_class() -> Any:
    """The smallest trigger on acked_cursor: it lists SOURCE and reports each new item once; its cursor
    (the items reported) is kept in a FakeStore. What a second event trigger writes, with its own list."""
    from airflow.triggers.base import TriggerEvent

    from airflow_provider_faxplus.triggers.acked_cursor import AckedCursorTrigger

    class ItemsTrigger(AckedCursorTrigger):
        store = FakeStore()

        def __init__(self, poll_interval: float = 0.05) -> None:
            super().__init__()
            self.poll_interval = poll_interval
            self.known: list[str] | None = None
            self.changed = False

        def serialize(self) -> tuple[str, dict[str, Any]]:
            return "tests.ItemsTrigger", {"poll_interval": self.poll_interval}

        async def poll_turn(self, due: float) -> Any:
            if self.known is None:
                self.known = list(await self.store.aget("items", []))
            for item in [item for item in SOURCE if item not in self.known]:
                yield TriggerEvent(item)
                self.known = [*self.known, item]
                self.changed = True

        def take_cursor_state(self) -> Any:
            changed, self.changed = self.changed, False
            return self.known if changed else None

        async def save_cursor(self, state: Any) -> None:
            await self.store.aset("items", state)

    return ItemsTrigger


@run_async
async def test_a_second_trigger_needs_only_its_list_and_diff(ack):
    """The reusable part: a trigger that implements poll_turn, take_cursor_state and save_cursor gets
    the acknowledged cursor in ack mode and the settle fallback in run()."""
    items = _minimal_trigger_class()
    SOURCE[:] = ["a"]
    one = Subscribed(manager(), items())
    try:
        await one.until(lambda: one.events == ["a"], "the first item")
        SOURCE.append("b")
        await one.until(lambda: one.events == ["a", "b"], "the second item")
        assert "items" not in items.store.values  # yielded, not confirmed stored
        one.persist()
        await one.until(lambda: items.store.values.get("items") == '["a", "b"]', "the cursor")
    finally:
        await one.stop()
    SOURCE.append("c")
    running = items().run()  # settle mode (SETTLE_SECONDS is 3 s: the state waits)
    event = await anext(running)
    await running.aclose()
    assert event.payload == "c"
    assert items.store.values["items"] == '["a", "b"]'


def test_the_turn_stream_ends_when_cancelled_as_a_write_wakes_it():
    """Python 3.11's ``asyncio.wait_for`` swallows a cancel that arrives in the loop step its inner wait
    completes; the turn stream then outlived its trigger (seen once for 90 s, once for good)."""
    from airflow_provider_faxplus.triggers.acked_cursor import TurnProducer

    async def scenario() -> str:
        producer = TurnProducer(interval=3600)
        stream = producer.open_stream()
        await anext(stream)  # the first turn; the next pull waits an interval
        task = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)  # now waiting on its wake event
        producer._wake.set()  # an advance's write wakes it...
        task.cancel()  # ...in the same loop step as Airflow cancels the stream
        try:
            await asyncio.wait_for(asyncio.shield(task), 5)
        except asyncio.CancelledError:
            return "cancelled"
        except TimeoutError:
            task.cancel()
            return "still running"
        return f"yielded {task.result()!r}"

    assert asyncio.run(scenario()) == "cancelled"


async def _persisting(one: Subscribed, seconds: float) -> None:
    """The supervisor storing every event for ``seconds`` (the trigger must live through them)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if one.task.done():
            one.task.result()
            raise AssertionError("the trigger ended")
        one.persist()
        await asyncio.sleep(0.05)


@run_async
async def test_list_records_no_fax_can_be_are_skipped_never_events_never_parking(
    faxplus_conn, control, ack, caplog
):
    """One list answer with records whose id the client refuses (a path, 300 characters) or that are
    no Outbox: never an event, never in the cursor, one WARNING each; the watcher goes on (no GET for
    them, no parking) and reports the real fax that comes next."""
    caplog.set_level(logging.WARNING)
    hostile = ["../../accounts/x", "A" * 300]
    body = json.dumps(
        {"records": [{"id": fax_id, "status": "submitted"} for fax_id in hostile] + [{"id": "abc"}]}
    )
    store = FakeStore()
    one = Subscribed(manager(), watcher(ack, store, report_existing=False, poll_interval=0.1))
    try:
        await one.until(lambda: cursor(store, one.trigger) == {}, "the first (empty) cursor")
        control.add_fault(status=200, method="GET", path_endswith="/outbox", body=body, times=2)
        calls = list_calls(control)
        await one.until(lambda: list_calls(control) >= calls + 4, "the hostile answers and two more")
        real = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await one.until(lambda: ("entered", real) in one.kinds(), "the real fax")
        one.persist()
        await one.until(lambda: set(cursor(store, one.trigger) or {}) == {real}, "the cursor")
    finally:
        await one.stop()
    assert one.kinds() == [("entered", real)]
    assert one.trigger._parked is None
    gets = [e["path"] for e in control.requests() if e["method"] == "GET" and "/outbox/" in e["path"]]
    assert gets == []
    warned = [r.getMessage() for r in caplog.records if "skipped (not a fax" in r.getMessage()]
    assert len(warned) == 3, warned
    assert all(len(message) < 700 for message in warned)
    assert "A" * 81 not in caplog.text


@run_async
async def test_a_short_first_answer_invents_no_entered_event(faxplus_conn, control, ack):
    """report_existing=False, the first list answer empty although three faxes are in the outbox: they
    were submitted before the first start (the server's Date), so when they show up they count as
    existing; a fax submitted later is reported."""
    old = [control.create_fax(lifecycle=ONE_HOUR)["id"] for _ in range(3)]
    control.advance(5)  # the old faxes' submit_time is whole seconds before the first answer's Date
    control.add_fault(status=200, method="GET", path_endswith="/outbox", body='{"records": []}', times=1)
    store = FakeStore()
    one = Subscribed(manager(), watcher(ack, store, report_existing=False, poll_interval=0.1))
    try:
        await one.until(lambda: set(cursor(store, one.trigger) or {}) == set(old), "the old faxes known")
        control.advance(2)
        new = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await one.until(lambda: one.events, "the new fax")
        await _persisting(one, 1.0)
    finally:
        await one.stop()
    assert one.kinds() == [("entered", new)]


@run_async
async def test_a_slow_turn_stops_confirming_within_its_budget(faxplus_conn, control, ack, monkeypatch):
    """Ten known faxes missing from one answer, each confirming GET slow: the turn stops confirming
    after its budget (here 0.3 s) and so ends within Airflow's ack timeout (here 2 s); the watcher lives."""
    monkeypatch.setattr(ack, "CONFIRM_BUDGET_SECONDS", 0.3, raising=False)
    for _ in range(10):
        control.create_fax(lifecycle=ONE_HOUR)
    store = FakeStore()
    one = Subscribed(manager(ack_timeout=2.0), watcher(ack, store, report_existing=True, poll_interval=0.2))
    try:
        await one.until(lambda: len(one.events) == 10, "ten entered")
        one.persist()
        await one.until(lambda: len(cursor(store, one.trigger) or {}) == 10, "the cursor of ten")
        control.add_fault(status=200, method="GET", path_endswith="/outbox", body='{"records": []}', times=1)
        control.add_fault(delay=0.5, method="GET", path_contains="/outbox/", times=10)
        await _persisting(one, 6.0)
    finally:
        await one.stop()
    gets = [e for e in control.requests() if e["method"] == "GET" and "/outbox/" in e["path"]]
    assert 1 <= len(gets) < 10
    assert len(one.events) == 10  # no "left": the faxes are still there


@run_async
async def test_a_refusal_stays_with_its_own_watcher(faxplus_conn, control, ack, caplog):
    """Two watchers with the same kwargs (two assets) each have their own stream: the one whose events
    Airflow never confirms fails; the other's cursor keeps moving."""
    caplog.set_level(logging.WARNING)
    triggerer = manager(ack_timeout=1.0)
    store_a, store_b = FakeStore(), FakeStore()
    a = Subscribed(triggerer, watcher(ack, store_a, report_existing=False, poll_interval=0.1))
    b = Subscribed(triggerer, watcher(ack, store_b, report_existing=False, poll_interval=0.1))
    try:
        await a.until(
            lambda: cursor(store_a, a.trigger) == {} and cursor(store_b, b.trigger) == {}, "cursors"
        )
        first = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await a.until(lambda: a.events and b.events, "both see the fax")
        deadline = time.monotonic() + 10
        while not b.task.done() and time.monotonic() < deadline:
            a.persist()  # B's events are never confirmed
            await asyncio.sleep(0.05)
        assert b.task.done()
        second = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await a.until(lambda: ("entered", second) in a.kinds(), "A sees the second fax")
        a.persist()
        await a.until(lambda: set(cursor(store_a, a.trigger) or {}) == {first, second}, "A's cursor moves")
    finally:
        await a.stop()
        await b.stop()
    assert a.key != b.key


def test_poll_interval_is_finite_and_at_least_one_second():
    from airflow_provider_faxplus.triggers.outbox_events import OutboxEventTrigger

    for bad in (0.5, 0, -1, float("inf"), float("nan"), True, "5"):
        with pytest.raises(ValueError, match="poll_interval must be a finite number of seconds, at least 1"):
            OutboxEventTrigger(report_existing=False, poll_interval=bad)
    assert OutboxEventTrigger(report_existing=False, poll_interval=1).poll_interval == 1.0


@run_async
async def test_a_fax_in_the_outbox_between_two_polls_only_produces_no_event(faxplus_conn, control, ack):
    """List-based watching: a fax that enters and leaves between two list answers is in none of them and
    produces no event (the docs' limit). The sandbox clock moves the fax through its life at once."""
    store = FakeStore()
    one = Subscribed(manager(), watcher(ack, store, report_existing=False, poll_interval=2.0))
    try:
        await one.until(lambda: cursor(store, one.trigger) == {}, "the first (empty) cursor")
        calls = list_calls(control)
        await one.until(lambda: list_calls(control) > calls, "a list call")
        fax_id = control.create_fax(lifecycle=[{"status": "submitted", "seconds": 5}])["id"]
        control.advance(30)  # sent and gone before the next list call
        calls = list_calls(control)
        await one.until(lambda: list_calls(control) >= calls + 2, "two more list calls")
        one.persist()
        later = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await one.until(lambda: one.events, "the next fax")
    finally:
        await one.stop()
    assert one.kinds() == [("entered", later)]
    assert all(fax_id not in entry["path"] for entry in control.requests())
