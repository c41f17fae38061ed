"""OutboxEventTrigger against the real sandbox: entered/left events, the option for faxes already there,
the cursor across a restart, errors. Airflow's asset state store lives in the triggerer's supervisor,
which no unit test has: a fake store with its async ``aget``/``aset`` stands in for it here (the
deployment test, tests/test_asset_events.py, uses Airflow's own)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

import pytest
from airflow import __version__ as airflow_version

AIRFLOW_3 = int(airflow_version.split(".")[0]) >= 3
LIST = "/v3/accounts/self/outbox"
ONE_HOUR = [{"status": "submitted", "seconds": 3600}]


@pytest.mark.skipif(AIRFLOW_3, reason="Airflow 2 only")
def test_on_airflow_2_importing_the_trigger_says_it_needs_airflow_3():
    with pytest.raises(ImportError, match=r"needs Airflow 3\.0 or later.*this is Airflow 2\."):
        import airflow_provider_faxplus.triggers.outbox_events  # noqa: F401


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test run in its own event loop (pytest sees the same fixtures)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class FakeStore:
    """Stands in for Airflow's asset state store accessor: JSON values, async access, counted writes."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.writes = 0

    async def aget(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.dumps(value)
        self.writes += 1


class Running:
    """A trigger's run() in a task, its event payloads collected."""

    def __init__(self, trigger: Any) -> None:
        self.trigger = trigger
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for event in self.trigger.run():
            self.events.append(event.payload)

    async def until(self, check: Callable[[], object], what: str, timeout: float = 30) -> None:
        async def wait() -> None:
            while not check():
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"run() ended before {what}")
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; events: {self.events}") from None

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def kinds(self) -> list[tuple[str, str]]:
        return [(e["event"], e["outbox_fax_id"]) for e in self.events]


@pytest.fixture
def quick(monkeypatch):
    """The trigger module (Airflow 3 only), its waits shortened."""
    if not AIRFLOW_3:
        pytest.skip("asset watchers need Airflow 3")
    from airflow_provider_faxplus.triggers import acked_cursor, outbox_events

    monkeypatch.setattr(acked_cursor, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(outbox_events, "PARKED_RECHECK_SECONDS", 0.2)
    # Test-only: the sandbox answers in milliseconds (Fax.Plus itself needs at least 1 s).
    monkeypatch.setattr(outbox_events.OutboxEventTrigger, "min_poll_interval", 0.01, raising=False)
    return outbox_events


def make(quick, store: FakeStore | None, **kwargs: Any) -> Any:
    trigger = quick.OutboxEventTrigger(poll_interval=kwargs.pop("poll_interval", 0.2), **kwargs)
    if store is not None:
        trigger.asset_state_store = store
    return trigger


def cursor(store: FakeStore, trigger: Any) -> dict[str, Any] | None:
    from airflow_provider_faxplus.triggers.outbox_events import decode_cursor

    return decode_cursor(store.values, trigger.cursor_key)


def list_calls(control) -> int:
    return sum(1 for entry in control.requests() if entry["method"] == "GET" and entry["path"] == LIST)


async def _entered_and_left(quick, control, report_existing: bool) -> Running:
    existing = control.create_fax(lifecycle=ONE_HOUR)["id"]
    store = FakeStore()
    trigger = make(quick, store, report_existing=report_existing)
    running = Running(trigger)
    try:
        await running.until(lambda: cursor(store, trigger) is not None, "the first cursor")
        new = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await running.until(lambda: ("entered", new) in running.kinds(), "the new fax entering")
        control.advance(3600)  # both leave
        await running.until(lambda: len([k for k, _ in running.kinds() if k == "left"]) == 2, "two left")
        await running.until(lambda: cursor(store, trigger) == {}, "the cursor after they left")
    finally:
        await running.stop()
    expected = [("entered", new), ("left", existing), ("left", new)]
    if report_existing:
        expected.insert(0, ("entered", existing))
    assert sorted(running.kinds()) == sorted(expected)
    return running


@run_async
async def test_faxes_entering_and_leaving_are_reported_once_each(faxplus_conn, control, quick):
    running = await _entered_and_left(quick, control, report_existing=False)
    [entered] = [e for e in running.events if e["event"] == "entered"]
    assert entered["status"] == "submitted"
    assert entered["record"]["id"] == entered["outbox_fax_id"]
    assert entered["user_id"] == "self"
    for payload in running.events:
        assert json.loads(json.dumps(payload)) == payload  # JSON-safe as it is
        detected = datetime.fromisoformat(payload["detected_at"])
        assert detected.utcoffset() == timedelta(0)
    left = [e for e in running.events if e["event"] == "left"]
    assert all(e["status"] == "submitted" and e["record"]["status"] == "submitted" for e in left)


@run_async
async def test_faxes_already_in_the_outbox_are_reported_only_when_asked(faxplus_conn, control, quick):
    await _entered_and_left(quick, control, report_existing=True)


@run_async
async def test_only_the_chosen_events(faxplus_conn, control, quick):
    store = FakeStore()
    trigger = make(quick, store, report_existing=True, events=["left"])
    fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
    running = Running(trigger)
    try:
        await running.until(lambda: cursor(store, trigger), "the first cursor")
        control.advance(3600)
        await running.until(lambda: running.events, "the left event")
    finally:
        await running.stop()
    assert running.kinds() == [("left", fax_id)]


@run_async
async def test_the_cursor_carries_across_a_restart(faxplus_conn, control, quick):
    """What a stopped triggerer reported is not reported again; what happened while none ran is."""
    store = FakeStore()
    stays = control.create_fax(lifecycle=[{"status": "submitted", "seconds": 7200}])["id"]
    goes = control.create_fax(lifecycle=ONE_HOUR)["id"]
    first = Running(make(quick, store, report_existing=True))
    try:
        await first.until(lambda: len(cursor(store, first.trigger) or {}) == 2, "both faxes reported")
    finally:
        await first.stop()
    assert sorted(first.kinds()) == sorted([("entered", stays), ("entered", goes)])

    control.advance(3600)  # while no trigger runs: one leaves, one comes
    comes = control.create_fax(lifecycle=ONE_HOUR)["id"]
    second = Running(make(quick, store, report_existing=True))  # rebuilt from the same kwargs
    try:
        await second.until(lambda: len(second.events) >= 2, "the changes made during the stop")
        await second.until(lambda: set(cursor(store, second.trigger) or {}) == {stays, comes}, "the cursor")
        before = list_calls(control)
        await second.until(lambda: list_calls(control) >= before + 3, "three more polls")
    finally:
        await second.stop()
    assert sorted(second.kinds()) == sorted([("left", goes), ("entered", comes)])
    [left] = [e for e in second.events if e["event"] == "left"]
    assert left["status"] == "submitted"  # from the cursor; this process never saw its record
    assert left["record"] is None


@run_async
async def test_without_a_state_store_the_cursor_is_kept_in_memory(faxplus_conn, control, quick, caplog):
    """A memory cursor cannot tell a first start from a triggerer restart, so faxes already in the outbox
    count as known even with report_existing=True (said in a warning): a restart reports nothing again."""
    caplog.set_level(logging.WARNING)
    existing = control.create_fax(lifecycle=ONE_HOUR)["id"]
    trigger = make(quick, None, report_existing=True, user_id="self", faxplus_conn_id="faxplus_default")
    quick._MEMORY.values.pop(trigger.cursor_key, None)
    first = Running(trigger)
    try:
        await first.until(lambda: trigger.cursor_key in quick._MEMORY.values, "the cursor in memory")
        new = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await first.until(lambda: first.events, "the new fax entering")
    finally:
        await first.stop()
    assert "kept in memory" in caplog.text
    assert "report_existing=True needs the asset state store" in caplog.text
    assert first.kinds() == [("entered", new)]
    # Airflow starts a watcher's run() again in the same process: nothing is reported twice.
    again = Running(make(quick, None, report_existing=True))
    try:
        before = list_calls(control)
        await again.until(lambda: list_calls(control) >= before + 3, "three polls")
    finally:
        await again.stop()
    assert again.events == []
    # A triggerer restart: the memory is gone; the faxes there are not reported again.
    quick._MEMORY.values.pop(trigger.cursor_key, None)
    restarted = Running(make(quick, None, report_existing=True))
    try:
        before = list_calls(control)
        await restarted.until(lambda: list_calls(control) >= before + 3, "three polls")
    finally:
        await restarted.stop()
        quick._MEMORY.values.pop(trigger.cursor_key, None)
    assert restarted.events == [], existing


@run_async
async def test_transient_errors_back_off_and_then_report(faxplus_conn, control, quick):
    control.add_fault(status=503, retry_after="0", times=2, method="GET", path_contains=LIST)
    fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
    running = Running(make(quick, FakeStore(), report_existing=True))
    try:
        await running.until(lambda: running.events, "the event after two 503s")
    finally:
        await running.stop()
    assert running.kinds() == [("entered", fax_id)]
    statuses = [e["status"] for e in control.requests() if e["path"] == LIST]
    assert statuses[:3] == [503, 503, 200]


@pytest.mark.parametrize("status", [401, 403])
@run_async
async def test_a_refused_token_logs_one_error_and_stops_polling(
    faxplus_conn, control, quick, caplog, status, sandbox
):
    caplog.set_level(logging.INFO)
    control.add_fault(status=status, times=1000, method="GET", path_contains=LIST)
    store = FakeStore()
    running = Running(make(quick, store, report_existing=True))
    try:
        await running.until(lambda: "stops polling" in caplog.text, "the error")
        calls = list_calls(control)
        await asyncio.sleep(2.0)  # ten poll intervals, several re-reads of the connection
    finally:
        await running.stop()
    assert list_calls(control) == calls <= 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert f"HTTP {status}" in errors[0].getMessage() or str(status) in errors[0].getMessage()
    assert sandbox.token not in caplog.text
    assert running.events == []
    assert store.values == {}


@run_async
async def test_a_refused_token_polls_again_once_the_connection_changes(
    faxplus_conn, control, quick, caplog, sandbox, monkeypatch
):
    caplog.set_level(logging.INFO)
    control.add_fault(status=401, times=1, method="GET", path_contains=LIST)
    fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
    running = Running(make(quick, FakeStore(), report_existing=True))
    try:
        await running.until(lambda: "stops polling" in caplog.text, "the error")
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(initial_backoff=0.06))
        await running.until(lambda: running.events, "the event after the connection changed")
    finally:
        await running.stop()
    assert running.kinds() == [("entered", fax_id)]


def test_kwargs_are_fixed_and_checked(quick):
    trigger = quick.OutboxEventTrigger(report_existing=False, events=["left", "entered"], poll_interval=5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_faxplus.triggers.outbox_events.OutboxEventTrigger"
    assert kwargs == {
        "report_existing": False,
        "user_id": "self",
        "faxplus_conn_id": "faxplus_default",
        "events": ["entered", "left"],
        "poll_interval": 5.0,
    }
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert quick.OutboxEventTrigger(**kwargs).serialize() == (classpath, kwargs)  # same hash, same row
    with pytest.raises(TypeError):
        quick.OutboxEventTrigger()  # report_existing is a required, explicit choice
    for bad, message in [
        ({"report_existing": "yes"}, "report_existing"),
        ({"report_existing": True, "events": "entered"}, "not the string"),
        ({"report_existing": True, "events": ["sent"]}, "events must be"),
        ({"report_existing": True, "events": []}, "events must be"),
        ({"report_existing": True, "poll_interval": 0}, "poll_interval"),
        ({"report_existing": True, "user_id": ""}, "user_id"),
    ]:
        with pytest.raises(ValueError, match=message):
            quick.OutboxEventTrigger(**bad)


def test_the_example_dag_folder_imports_on_both_lines():
    """On Airflow 3 the event-driven examples parse; on Airflow 2 the file defines no DAG, and breaks none."""
    from pathlib import Path

    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3
    except ImportError:
        from airflow.models import DagBag  # type: ignore[attr-defined,no-redef]

    bag = DagBag(str(Path(__file__).resolve().parent.parent / "example_dags"))  # examples off: conftest
    assert bag.import_errors == {}
    new = {"example_faxplus_tag_new_faxes", "example_faxplus_faxes_left"}
    assert (new <= set(bag.dag_ids)) is AIRFLOW_3
    assert "example_faxplus_tag_and_wait" in bag.dag_ids


@run_async
async def test_a_record_that_does_not_parse_is_skipped_and_a_malformed_answer_is_retried(
    faxplus_conn, control, quick, caplog
):
    """A record that does not parse as an Outbox is no fax this watcher can follow: skipped with one
    WARNING, never an event (nor its "left" when the next answer lacks it); an answer that is not JSON
    is transient (a proxy in between), not a reason to stop: the real fax after them is reported."""
    caplog.set_level(logging.WARNING)
    body = json.dumps({"records": [{"id": "broken", "uid": 7}]})
    control.add_fault(status=200, method="GET", path_contains=LIST, body="<html>proxy</html>", times=1)
    control.add_fault(status=200, method="GET", path_contains=LIST, body=body, times=1)
    running = Running(make(quick, FakeStore(), report_existing=True))
    try:
        await running.until(lambda: list_calls(control) >= 3, "the faulted answers and one more")
        fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await running.until(lambda: running.events, "the event")
    finally:
        await running.stop()
    assert running.kinds() == [("entered", fax_id)]
    assert caplog.text.count("list record with id 'broken' skipped") == 1


@run_async
async def test_two_watchers_of_one_account_share_its_list_calls(faxplus_conn, control, quick):
    """An entered and a left watcher of the same account: one list call per interval serves both."""
    fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
    store = FakeStore()
    entered = Running(make(quick, store, report_existing=True, events=["entered"], poll_interval=0.3))
    left = Running(make(quick, store, report_existing=True, events=["left"], poll_interval=0.3))
    try:
        await entered.until(lambda: entered.events, "the entered event")
        await left.until(lambda: cursor(store, left.trigger), "the left watcher's cursor")
        control.advance(3600)
        await left.until(lambda: left.events, "the left event")
        calls = list_calls(control)
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(3.0)
        elapsed = asyncio.get_running_loop().time() - started
        more = list_calls(control) - calls
    finally:
        await entered.stop()
        await left.stop()
    assert entered.kinds() == [("entered", fax_id)]
    assert left.kinds() == [("left", fax_id)]
    # Unshared, two watchers would send about 2 * elapsed / 0.3 calls.
    print(f"list calls in {elapsed:.1f} s: {more}")
    assert 1 <= more <= elapsed / 0.3 + 2, (more, elapsed)


@run_async
async def test_the_cursor_is_written_after_the_events_never_before(faxplus_conn, control, quick, monkeypatch):
    """Airflow takes a yielded event on its next sync (about a second): the cursor follows it, so a
    triggerer stopped in between reports the fax again rather than never."""
    monkeypatch.setattr("airflow_provider_faxplus.triggers.acked_cursor.SETTLE_SECONDS", 0.5)
    store = FakeStore()
    trigger = make(quick, store, report_existing=False)
    running = Running(trigger)
    try:
        await running.until(lambda: cursor(store, trigger) == {}, "the first (empty) cursor")
        fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await running.until(lambda: running.events, "the event")
        assert cursor(store, trigger) == {}  # yielded, not yet recorded
        await running.until(lambda: cursor(store, trigger), "the cursor after the settling time")
    finally:
        await running.stop()
    assert cursor(store, trigger) == {fax_id: {"status": "submitted", "reported": ["entered"]}}
    assert store.writes == 2


def test_an_asset_event_that_is_not_the_watchers_is_refused_by_name(quick):
    read_event = quick.read_event

    ours = {
        "outbox_fax_id": "f1",
        "user_id": "self",
        "event": "left",
        "status": "sending",
        "record": None,
        "detected_at": "2026-01-01T00:00:00+00:00",
    }
    assert read_event(ours) is ours
    # What the demo once found on its left asset: a sensor trigger's event under a reused trigger id.
    with pytest.raises(
        ValueError, match=r"not an OutboxEventTrigger event: the payload lacks \['outbox_fax_id'"
    ):
        read_event({"status": "success", "result": {"id": "f1"}})
    with pytest.raises(ValueError, match="event 'gone' is none of"):
        read_event({**ours, "event": "gone"})
    with pytest.raises(ValueError, match="the payload is NoneType"):
        read_event(None)


def test_the_example_dag_skips_a_foreign_asset_event_with_a_warning(quick, caplog):
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    path = Path(__file__).resolve().parent.parent / "example_dags" / "example_faxplus_tag_new_faxes.py"
    spec = importlib.util.spec_from_file_location("example_tag", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ours = dict.fromkeys(quick.PAYLOAD_KEYS) | {"outbox_fax_id": "f1", "event": "left"}
    foreign = SimpleNamespace(extra={"payload": {"status": "success", "result": {}}})
    context = {
        "triggering_asset_events": {
            "faxplus_outbox_left": [foreign, SimpleNamespace(extra={"payload": ours})]
        }
    }
    with caplog.at_level(logging.WARNING):
        assert module._payloads(context, "left") == [ours]
    assert "Skipping an event of faxplus_outbox_left: not an OutboxEventTrigger event" in caplog.text


class FailingStore(FakeStore):
    """A state store whose writes (or reads) fail the first ``times`` calls, as an unreachable API server."""

    def __init__(self, *, writes: int = 0, reads: int = 0) -> None:
        super().__init__()
        self.fail_writes, self.fail_reads = writes, reads
        self.attempts = 0

    async def aset(self, key: str, value: Any) -> None:
        self.attempts += 1
        if self.fail_writes:
            self.fail_writes -= 1
            raise ConnectionError("the API server is unreachable")
        await super().aset(key, value)

    async def aget(self, key: str, default: Any = None) -> Any:
        if self.fail_reads:
            self.fail_reads -= 1
            raise ConnectionError("the API server is unreachable")
        return await super().aget(key, default)


@run_async
async def test_a_failing_cursor_write_reports_nothing_twice_and_backs_off(
    faxplus_conn, control, quick, caplog, monkeypatch
):
    """Finding 1: while the store refuses writes, what was reported is not reported again; the write is
    retried with a growing back-off (1 s, 2 s... with jitter), and lands once the store is back."""
    caplog.set_level(logging.WARNING)
    waits: list[float] = []
    real = quick.backoff_seconds

    def recorded(attempt: int, initial: float, retry_after: float | None = None) -> float:
        waits.append(attempt)
        return min(real(attempt, initial, retry_after), 0.3)  # the test's patience, same growth

    monkeypatch.setattr("airflow_provider_faxplus.triggers.acked_cursor.backoff_seconds", recorded)
    store = FailingStore(writes=4)
    trigger = make(quick, store, report_existing=True, poll_interval=0.1)
    fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
    running = Running(trigger)
    try:
        await running.until(lambda: cursor(store, trigger), "the cursor written at last")
        calls = list_calls(control)
        await running.until(lambda: list_calls(control) >= calls + 3, "three more polls")
    finally:
        await running.stop()
    assert running.kinds() == [("entered", fax_id)]
    assert waits[:4] == [1, 2, 3, 4]  # the write back-off grows while the store fails
    assert caplog.text.count("Could not store the cursor of the outbox watcher") == 4


@run_async
async def test_a_failing_cursor_read_backs_off_inside_run(faxplus_conn, control, quick, caplog):
    """Finding 13: an ``aget`` failure does not escape run() (Airflow would restart it at once)."""
    caplog.set_level(logging.ERROR)
    store = FailingStore(reads=2)
    trigger = make(quick, store, report_existing=True, poll_interval=0.1)
    fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
    running = Running(trigger)
    try:
        await running.until(lambda: running.events, "the event after two failed reads", timeout=60)
    finally:
        await running.stop()
    assert running.kinds() == [("entered", fax_id)]
    assert caplog.text.count("ConnectionError: the API server is unreachable") == 2


@run_async
async def test_a_fax_missing_from_one_list_answer_has_not_left(faxplus_conn, control, quick):
    """Finding 2: one answer without the fax is confirmed with a GET: no false left, no second entered."""
    store = FakeStore()
    trigger = make(quick, store, report_existing=True)
    fax_id = control.create_fax(lifecycle=ONE_HOUR)["id"]
    running = Running(trigger)
    try:
        await running.until(lambda: cursor(store, trigger), "the fax known")
        control.add_fault(status=200, method="GET", path_endswith="/outbox", body='{"records": []}', times=1)
        calls = list_calls(control)
        await running.until(lambda: list_calls(control) >= calls + 3, "three more polls")
        control.advance(3600)
        await running.until(lambda: len(running.events) >= 2, "the real left")
    finally:
        await running.stop()
    assert running.kinds() == [("entered", fax_id), ("left", fax_id)]
    confirmations = [e for e in control.requests() if e["path"].endswith(f"/outbox/{fax_id}")]
    assert [e["status"] for e in confirmations] == [200, 404]


@run_async
async def test_the_polls_go_on_while_events_settle(faxplus_conn, control, quick, monkeypatch):
    """Finding 6: the cursor waits for Airflow to take the events; the next list does not."""
    monkeypatch.setattr("airflow_provider_faxplus.triggers.acked_cursor.SETTLE_SECONDS", 60.0)
    store = FakeStore()
    trigger = make(quick, store, report_existing=False, poll_interval=0.1)
    running = Running(trigger)
    try:
        await running.until(lambda: cursor(store, trigger) == {}, "the first (empty) cursor")
        first = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await running.until(lambda: running.events, "the first event")
        calls = list_calls(control)
        await running.until(
            lambda: list_calls(control) >= calls + 3, "three polls while it settles", timeout=20
        )
        second = control.create_fax(lifecycle=ONE_HOUR)["id"]
        await running.until(lambda: len(running.events) == 2, "the second event", timeout=20)
    finally:
        await running.stop()
    assert running.kinds() == [("entered", first), ("entered", second)]
    assert cursor(store, trigger) == {}  # neither has settled yet


@run_async
async def test_a_backward_wall_clock_step_does_not_stop_the_polls(faxplus_conn, control, quick, monkeypatch):
    """Finding 7: schedules run on the monotonic clock."""
    import time as time_module

    store = FakeStore()
    trigger = make(quick, store, report_existing=False, poll_interval=0.1)
    running = Running(trigger)
    try:
        await running.until(lambda: cursor(store, trigger) == {}, "the first look")
        real = time_module.time
        monkeypatch.setattr(time_module, "time", lambda: real() - 60)
        calls = list_calls(control)
        await running.until(
            lambda: list_calls(control) >= calls + 3, "three polls after the step", timeout=20
        )
    finally:
        await running.stop()


def test_a_later_state_is_never_stored_before_the_events_it_holds_have_settled(quick, monkeypatch):
    """Settle mode: a state without events of its own (a status change) that follows an event not yet
    settled holds that event too: it is stored only once that event has settled."""
    from airflow_provider_faxplus.triggers import acked_cursor

    clock = [1000.0]
    monkeypatch.setattr(acked_cursor.time, "monotonic", lambda: clock[0])
    written: list[dict[str, Any]] = []

    async def save(state: dict[str, Any]) -> None:
        written.append(state)

    pending = acked_cursor.AckedCursor(save, "a test cursor")
    a = {"a": ("submitted", ("entered",))}
    pending.settle(a, 3.0)  # settles at 1003
    clock[0] = 1001.0
    b = {**a, "b": ("submitted", ("entered",))}
    pending.settle(b, 3.0)  # settles at 1004
    clock[0] = 1001.5
    b_sending = {**b, "b": ("sending", ("entered",))}
    pending.settle(b_sending, 0.0)  # holds b's event: not before 1004
    clock[0] = 1003.5
    asyncio.run(pending.write_due())
    assert written == [a]
    clock[0] = 1004.0
    asyncio.run(pending.write_due())
    assert written == [a, b_sending]


BIG_OUTBOX = 10_000


def _values_bytes(store: FakeStore) -> list[int]:
    """Each stored value's size as Airflow measures it against max_value_storage_bytes (its JSON)."""
    return [len(value) for value in store.values.values()]


async def _first_cursor_of(quick, control, store: FakeStore, count: int) -> Running:
    """Run a trigger over the ``count`` faxes of the outbox until their cursor is stored, one tick more."""
    trigger = make(quick, store, report_existing=True, poll_interval=0.5)
    ticks = [0]
    compare = trigger.compare

    async def counted(*args: Any) -> Any:
        ticks[0] += 1
        return await compare(*args)

    def counted_sync(*args: Any) -> Any:  # the version before the fix compared in one go
        ticks[0] += 1
        return compare(*args)

    trigger.compare = counted if asyncio.iscoroutinefunction(compare) else counted_sync
    running = Running(trigger)
    try:
        # Checked without the sandbox's request log or decoding the cursor: the loop probe counts them.
        await running.until(
            lambda: len(running.events) == count and len(trigger.stored or ()) == count,
            f"the cursor of {count} faxes stored",
            timeout=120,
        )
        done = ticks[0]
        await running.until(lambda: ticks[0] > done, "one steady tick", timeout=60)
    finally:
        await running.stop()
    assert len(running.events) == count
    return running


@run_async
async def test_the_cursor_of_10000_faxes_stays_under_the_state_store_limit(faxplus_conn, control, quick):
    """Finding 5: at Airflow's default max_value_storage_bytes (65,535) each stored value of the cursor
    of a 10,000-fax outbox fits (it was one 840 KB value), and it reads back whole."""
    store = FakeStore()
    control.create_faxes([{"lifecycle": ONE_HOUR}] * BIG_OUTBOX)
    running = await _first_cursor_of(quick, control, store, BIG_OUTBOX)
    sizes = _values_bytes(store)
    print(f"cursor of {BIG_OUTBOX} faxes: {len(sizes)} values, largest {max(sizes)} B, all {sum(sizes)} B")
    assert max(sizes) <= 65_535, sizes
    known = cursor(store, running.trigger)
    assert known is not None
    assert set(known) == {fax_id for _, fax_id in running.kinds()}
    assert all(entry == {"status": "submitted", "reported": ["entered"]} for entry in known.values())


@run_async
async def test_a_10000_fax_outbox_never_holds_the_loop_100_ms(faxplus_conn, control, quick):
    """Finding 5: the first tick over 10,000 faxes (10,000 records parsed and compared, 10,000 events,
    the cursor encoded) hands the loop back every few ms; it held it 0.5-1.4 s. The probe counts the loop
    thread's CPU time between two of its turns: what ran without a turn for anyone else, whatever else
    the machine does. The garbage collector is off meanwhile: its full passes grow with everything the
    process holds, not with one trigger's work (docs/benchmarks.md measures them)."""
    import gc
    import time

    longest = [0.0, 0.0]  # loop-thread CPU, wall time between two turns of the probe
    stop = asyncio.Event()

    async def probe() -> None:
        cpu, wall = time.thread_time(), time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0)
            now_cpu, now_wall = time.thread_time(), time.perf_counter()
            longest[0] = max(longest[0], now_cpu - cpu)
            longest[1] = max(longest[1], now_wall - wall)
            cpu, wall = now_cpu, now_wall

    control.create_faxes([{"lifecycle": ONE_HOUR}] * BIG_OUTBOX)  # before the probe: a blocking call
    gc.collect()
    gc.disable()
    prober = asyncio.ensure_future(probe())
    try:
        await _first_cursor_of(quick, control, FakeStore(), BIG_OUTBOX)
    finally:
        stop.set()
        await prober
        gc.enable()
    print(f"longest hold of the loop: {longest[0] * 1000:.0f} ms CPU ({longest[1] * 1000:.0f} ms wall)")
    assert longest[0] < 0.1, f"the loop was held {longest[0] * 1000:.0f} ms (CPU)"


@run_async
async def test_a_cursor_of_the_old_format_is_read_and_rewritten(faxplus_conn, control, quick):
    """Finding 5: a cursor stored by the previous version ({"v": 1, "known": ...}) still counts after an
    upgrade: what it knows is not reported again, what left meanwhile is; then it is stored anew."""
    stays = control.create_fax(lifecycle=ONE_HOUR)["id"]
    store = FakeStore()
    trigger = make(quick, store, report_existing=True)
    old = {
        stays: {"status": "submitted", "reported": ["entered"]},
        "gone-while-upgrading": {"status": "sending", "reported": ["entered"]},
    }
    store.values[trigger.cursor_key] = json.dumps({"v": 1, "known": old})
    running = Running(trigger)
    try:
        await running.until(lambda: "parts" in store.values[trigger.cursor_key], "the cursor rewritten")
    finally:
        await running.stop()
    assert running.kinds() == [("left", "gone-while-upgrading")]
    assert running.events[0]["status"] == "sending"
    assert cursor(store, trigger) == {stays: {"status": "submitted", "reported": ["entered"]}}


def test_the_cursor_is_split_as_it_grows_and_joined_as_it_shrinks(quick, monkeypatch):
    """The parts follow the configured limit; the first value names them and is written last, so a stop
    half way leaves the previous cursor whole; parts no longer named are deleted."""
    monkeypatch.setenv("AIRFLOW__STATE_STORE__MAX_VALUE_STORAGE_BYTES", "4000")
    store = FakeStore()
    store.adelete = lambda key: _delete(store, key)  # type: ignore[attr-defined]
    trigger = make(quick, store, report_existing=False)
    big = {f"{index:032x}": ("sending", ("entered",)) for index in range(1000)}
    asyncio.run(trigger._store(store, big))
    first = json.loads(store.values[trigger.cursor_key])
    assert first == {"v": 2, "parts": 32}
    assert max(_values_bytes(store)) <= 4000
    assert len(store.values) == 33
    assert cursor(store, trigger) == {k: {"status": "sending", "reported": ["entered"]} for k in big}
    # One fax changes: one part is written again, not all of them.
    writes = store.writes
    changed = {**big, f"{0:032x}": ("sent", ("entered",))}
    asyncio.run(trigger._store(store, changed))
    assert store.writes == writes + 1
    # Twice as many faxes: new parts under new keys; a stop half way leaves the stored cursor whole.
    bigger = {**changed, **{f"{index:032x}": ("sending", ()) for index in range(1000, 2000)}}
    store.aset = _failing_after(store, 10)  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        asyncio.run(trigger._store(store, bigger))
    assert json.loads(store.values[trigger.cursor_key]) == {"v": 2, "parts": 32}
    assert cursor(store, trigger) == {k: {"status": v[0], "reported": list(v[1])} for k, v in changed.items()}
    del store.aset
    asyncio.run(trigger._store(store, bigger))
    assert json.loads(store.values[trigger.cursor_key]) == {"v": 2, "parts": 64}
    assert len(store.values) == 65  # the 32 parts no longer named are deleted
    # A part deleted by hand: read as empty, and the whole cursor queued to be written again.
    missing = trigger.part_key(64, 3)
    lost = json.loads(store.values.pop(missing))
    again = make(quick, store, report_existing=False)
    asyncio.run(again._load(store))
    assert again._layout is None
    assert again._changed  # to be written whole again
    assert len(again._known) == len(bigger) - sum(len(group[2]) for group in lost["g"])
    asyncio.run(again._store(store, bigger))
    assert missing in store.values
    # Back to ten faxes: one value again.
    small = dict(list(big.items())[1:11])
    asyncio.run(trigger._store(store, small))
    assert list(store.values) == [trigger.cursor_key]
    assert cursor(store, trigger) == {k: {"status": "sending", "reported": ["entered"]} for k in small}


def _failing_after(store: FakeStore, writes: int) -> Any:
    real = store.aset
    left = [writes]

    async def aset(key: str, value: Any) -> None:
        if not left[0]:
            raise ConnectionError("the API server is unreachable")
        left[0] -= 1
        await real(key, value)

    return aset


async def _delete(store: FakeStore, key: str) -> None:
    store.values.pop(key, None)
