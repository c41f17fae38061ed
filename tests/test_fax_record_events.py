"""FaxRecordEventTrigger against the real sandbox: received faxes and delivery outcomes as events, the
explicit choice for records already there, the cursor across a restart, a store that cannot be written,
answers that leave a record out or are not JSON. A fake store with async ``aget``/``aset`` stands in for
Airflow's asset state store (the deployment test, tests/test_inbound_deployment.py, uses Airflow's)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from airflow_provider_faxplus.record_watch import id_key
from tests.test_outbox_events import AIRFLOW_3, FakeStore, Running, run_async

LIST = "/v3/accounts/self/faxes"
# The triggers read connection faxplus_default (the sandbox) from the environment.
pytestmark = pytest.mark.usefixtures("faxplus_conn")


@pytest.mark.skipif(AIRFLOW_3, reason="Airflow 2 only")
def test_on_airflow_2_importing_the_trigger_says_it_needs_airflow_3():
    with pytest.raises(ImportError, match=r"needs Airflow 3\.0 or later.*this is Airflow 2\."):
        import airflow_provider_faxplus.triggers.fax_records  # noqa: F401


@pytest.fixture
def quick(monkeypatch):
    if not AIRFLOW_3:
        pytest.skip("asset watchers need Airflow 3")
    from airflow_provider_faxplus.triggers import acked_cursor, fax_records

    monkeypatch.setattr(acked_cursor, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(fax_records, "PARKED_RECHECK_SECONDS", 0.2)
    return fax_records


def make(quick, store: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("category", "inbox")
    trigger = quick.FaxRecordEventTrigger(poll_interval=kwargs.pop("poll_interval", 0.2), **kwargs)
    if store is not None:
        trigger.asset_state_store = store
    return trigger


def lists(control) -> int:
    return sum(1 for e in control.requests() if e["method"] == "GET" and e["path"].startswith(LIST))


def ids(running: Running) -> list[str]:
    return [event["fax_id"] for event in running.events]


async def _first_look(running: Running, control, count: int = 1) -> None:
    await running.until(lambda: lists(control) >= count, "the trigger's first list")


@run_async
async def test_received_faxes_are_events_once_and_those_already_there_are_the_starting_point(quick, control):
    control.receive_fax(id="before")
    store = FakeStore()
    running = Running(make(quick, store, report_existing=False))
    try:
        await running.until(lambda: store.writes >= 1, "the first cursor")
        control.receive_fax(id="r1", **{"from": "+4930123456"})
        control.receive_fax(id="r2")
        await running.until(lambda: len(running.events) >= 2, "two events")
        seen = lists(control)
        await running.until(lambda: lists(control) >= seen + 3, "three more lists")
    finally:
        await running.stop()
    assert sorted(ids(running)) == ["r1", "r2"]
    event = next(e for e in running.events if e["fax_id"] == "r1")
    assert set(event) == {"fax_id", "user_id", "category", "status", "record", "detected_at"}
    assert (event["category"], event["status"], event["user_id"]) == ("inbox", "success", "self")
    assert event["record"]["from_number"] == "+4930123456"
    assert event["detected_at"].endswith("+00:00")


@run_async
async def test_report_existing_reports_every_record_then_a_restart_reports_none_again(quick, control):
    control.receive_fax(id="old1")
    control.receive_fax(id="old2")
    store = FakeStore()
    first = Running(make(quick, store, report_existing=True))
    try:
        await first.until(lambda: len(first.events) == 2 and store.writes >= 1, "both old faxes")
    finally:
        await first.stop()
    control.receive_fax(id="while-stopped")
    second = Running(make(quick, store, report_existing=True))
    try:
        await second.until(lambda: second.events, "the fax received while stopped")
        seen = lists(control)
        await second.until(lambda: lists(control) >= seen + 3, "three more lists")
    finally:
        await second.stop()
    assert sorted(ids(first)) == ["old1", "old2"]
    assert ids(second) == ["while-stopped"]


@run_async
async def test_sent_records_are_delivery_outcomes_including_faxes_sent_outside_airflow(quick, control):
    store = FakeStore()
    running = Running(make(quick, store, category="sent", report_existing=False))
    try:
        await running.until(lambda: store.writes >= 1, "the first cursor")
        ok = control.create_fax(lifecycle=[{"status": "submitted", "seconds": 1}])["id"]
        failed = control.create_fax(lifecycle=[{"status": "submitted", "seconds": 1}])["id"]
        control.set_record_outcome(failed, "failed_user_busy")
        control.advance(2)
        await running.until(lambda: len(running.events) >= 2, "two outcomes")
    finally:
        await running.stop()
    outcomes = {e["record"]["id"]: e["status"] for e in running.events}
    assert len(outcomes) == 2
    assert sorted(outcomes.values()) == ["failed_user_busy", "success"]
    assert all(e["category"] == "sent" for e in running.events)
    records = {r["id"]: r for r in control.records()}
    assert {records[fax_id].get("outbox_fax_id") for fax_id in outcomes} == {ok, failed}


@run_async
async def test_a_list_that_leaves_a_record_out_or_is_not_json_loses_and_invents_nothing(quick, control):
    store = FakeStore()
    running = Running(make(quick, store, report_existing=False))
    try:
        await running.until(lambda: store.writes >= 1, "the first cursor")
        control.receive_fax(id="r1")
        await running.until(lambda: running.events, "r1")
        control.add_fault(
            status=200, method="GET", path_contains=LIST, body='{"data": {"records": []}}', times=2
        )
        control.add_fault(status=200, method="GET", path_contains=LIST, body="<html>proxy</html>", times=2)
        control.receive_fax(id="r2")
        await running.until(lambda: len(running.events) >= 2, "r2 after the faults")
        seen = lists(control)
        await running.until(lambda: lists(control) >= seen + 3, "three more lists")
    finally:
        await running.stop()
    assert ids(running) == ["r1", "r2"]


@run_async
async def test_more_records_than_a_page_are_all_reported(quick, control):
    control.record_settings(page_cap=7)
    store = FakeStore()
    running = Running(make(quick, store, report_existing=False))
    try:
        await running.until(lambda: store.writes >= 1, "the first cursor")
        for n in range(60):
            control.receive_fax(id=f"in-{n:02d}")
        await running.until(lambda: len(running.events) >= 60, "60 events")
        seen = lists(control)
        await running.until(lambda: lists(control) >= seen + 10, "more lists")
    finally:
        await running.stop()
    assert sorted(ids(running)) == [f"in-{n:02d}" for n in range(60)]


class FailingStore(FakeStore):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts: list[float] = []

    async def aset(self, key: str, value: Any) -> None:
        self.attempts.append(asyncio.get_running_loop().time())
        if self.failures:
            self.failures -= 1
            raise ConnectionError("api-server unreachable")
        await super().aset(key, value)


@run_async
async def test_a_store_that_cannot_be_written_causes_no_repeat_and_is_retried_with_backoff(quick, control):
    store = FailingStore(failures=4)
    running = Running(make(quick, store, report_existing=False, poll_interval=0.1))
    try:
        await _first_look(running, control)
        control.receive_fax(id="r1")
        await running.until(lambda: store.writes >= 1, "a write that succeeds", timeout=60)
        seen = lists(control)
        await running.until(lambda: lists(control) >= seen + 3, "three more lists")
    finally:
        await running.stop()
    assert ids(running) == ["r1"]
    gaps = [b - a for a, b in zip(store.attempts, store.attempts[1:], strict=False)][:4]
    assert gaps[-1] > gaps[0]  # the back-off grows


@run_async
async def test_in_ack_mode_the_cursor_moves_only_with_the_turns_airflow_acknowledged(quick, control):
    """Airflow 3.3's ack mode, driven as its shared-stream manager does: the trigger's producer yields
    turns, ``filter_shared_stream`` yields each turn's events, and only ``advance`` of a clean turn
    writes the cursor. A restart before that reports the unacknowledged record again, never a lost one."""
    if not quick.FaxRecordEventTrigger.ack_mode:
        pytest.skip("this Airflow has no ack mode")
    from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

    control.receive_fax(id="before")
    store = FakeStore()
    trigger = make(quick, store, report_existing=False)
    producer = type(trigger).create_shared_stream_producer(trigger.serialize()[1])
    turns: list[Any] = []

    async def stream() -> Any:
        async for raw, broker_payload in producer.open_stream():
            turns.append(broker_payload)
            yield raw

    running = Running(trigger)
    running.task.cancel()
    running.task = asyncio.ensure_future(_collect(trigger.filter_shared_stream(stream()), running.events))

    def holding(fax_id: str) -> list[Any]:
        return [t for t in turns if any(id_key(fax_id) in state.seen for _, state in t.held)]

    try:
        await running.until(lambda: holding("before"), "the first turn's state")
        assert store.writes == 0  # nothing acknowledged yet
        await producer.advance([AdvanceItem(holding("before")[0], AdvanceOutcome(acked=1, failed=0))])
        assert store.writes == 1
        control.receive_fax(id="r1")
        await running.until(lambda: holding("r1"), "r1's turn")
        assert [e["fax_id"] for e in running.events] == ["r1"]
        assert id_key("r1") not in json.dumps(store.values)  # its turn is not acknowledged
        restarted = FakeStore()  # a restart now: the store as it is
        restarted.values = dict(store.values)
        again = Running(make(quick, restarted, report_existing=False))
        try:
            await again.until(lambda: again.events, "r1 reported again")
        finally:
            await again.stop()
        assert [e["fax_id"] for e in again.events] == ["r1"]
        await producer.advance([AdvanceItem(holding("r1")[0], AdvanceOutcome(acked=1, failed=0))])
        assert id_key("r1") in json.dumps(store.values)
    finally:
        # A cancel can be lost inside the producer's wait (seen: the stream ran on for 90 s): repeat it.
        while not running.task.done():
            running.task.cancel()
            await asyncio.wait([running.task], timeout=1)


async def _collect(events: Any, into: list[dict[str, Any]]) -> None:
    async for event in events:
        into.append(event.payload)


def test_serialize_round_trips_and_the_choice_is_explicit(quick):
    trigger = quick.FaxRecordEventTrigger(category="sent", report_existing=False, poll_interval=5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_faxplus.triggers.fax_records.FaxRecordEventTrigger"
    again = quick.FaxRecordEventTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    with pytest.raises(TypeError):
        quick.FaxRecordEventTrigger(category="inbox")  # report_existing has no default
    with pytest.raises(ValueError, match="category"):
        quick.FaxRecordEventTrigger(category="spam", report_existing=False)
    with pytest.raises(ValueError, match="report_existing"):
        quick.FaxRecordEventTrigger(category="inbox", report_existing="yes")


def test_the_provider_registers_the_trigger_module():
    from airflow_provider_faxplus.get_provider_info import get_provider_info

    modules = [m for entry in get_provider_info()["triggers"] for m in entry["python-modules"]]
    # Listed on Airflow 3 only: Airflow 2 cannot import it.
    assert ("airflow_provider_faxplus.triggers.fax_records" in modules) == AIRFLOW_3


def _example() -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "example_dags" / "example_faxplus_inbound.py"
    spec = importlib.util.spec_from_file_location("example_inbound", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_inbound_example_is_a_dag_on_airflow_3_only_and_breaks_nothing_on_2():
    from pathlib import Path

    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3
    except ImportError:
        from airflow.models import DagBag  # type: ignore[attr-defined,no-redef]

    bag = DagBag(str(Path(__file__).resolve().parent.parent / "example_dags"))
    assert bag.import_errors == {}
    assert ("example_faxplus_inbound" in bag.dag_ids) is AIRFLOW_3


def test_the_inbound_example_takes_each_received_fax_once_and_skips_foreign_events(caplog):
    import logging
    from types import SimpleNamespace

    from airflow_provider_faxplus.record_watch import PAYLOAD_KEYS

    ours = dict.fromkeys(PAYLOAD_KEYS) | {"fax_id": "r1", "user_id": "self", "category": "inbox"}
    foreign = SimpleNamespace(extra={"payload": {"status": "success", "result": {}}})
    event = SimpleNamespace(extra={"payload": ours})
    context = {"triggering_asset_events": {"faxplus_inbox_received": [foreign, event, event]}}
    with caplog.at_level(logging.WARNING):
        assert _example().received(context) == [{"fax_id": "r1", "user_id": "self"}]
    assert "Skipping an event of faxplus_inbox_received: not a fax record event" in caplog.text


def _stored_ids(store: FakeStore) -> int:
    return sum(len(keys) for value in store.values.values() for _, keys in json.loads(value)["t"])


class StrictStore(FakeStore):
    """Refuses a value over 65,535 bytes, as Airflow 3.3's AssetStateStoreBody does."""

    async def aset(self, key: str, value: Any) -> None:
        size = len(value if isinstance(value, str) else json.dumps(value))
        if size > 65_535:
            raise ValueError(f"value exceeds max_value_storage_bytes (65535): {size}")
        await super().aset(key, value)


def test_the_sandbox_dates_its_answers_by_its_own_clock(control, sandbox):
    import urllib.error
    import urllib.request
    from email.utils import parsedate_to_datetime

    control.advance(7 * 86400)
    with pytest.raises(urllib.error.HTTPError) as refused:  # no token: a 401, dated all the same
        urllib.request.urlopen(sandbox.base_url + "/accounts/self/faxes")  # noqa: S310
    dated = parsedate_to_datetime(refused.value.headers["Date"]).timestamp()
    assert abs(dated - sandbox.state.clock.now()) < 5


@run_async
async def test_a_future_dated_record_is_reported_once_and_stops_nothing(quick, control, sandbox):
    store = FakeStore()
    running = Running(make(quick, store, report_existing=False))
    try:
        await running.until(lambda: store.writes >= 1, "the first cursor")
        glitch = {"id": "glitch", "status": "success", "start_time": "2036-12-04 12:00:00"}
        body = json.dumps({"data": {"records": [glitch]}})
        control.add_fault(status=200, method="GET", path_contains=LIST, body=body, times=1)
        await running.until(lambda: running.events, "the glitch")
        control.receive_fax(id="real1")
        control.receive_fax(id="real2")
        seen = lists(control)
        await running.until(lambda: lists(control) >= seen + 5, "five more lists")
    finally:
        await running.stop()
    assert sorted(ids(running)) == ["glitch", "real1", "real2"]
    assert "after the server's" in running.events[0]["record"]["parse_warnings"][-1]
    assert json.loads(next(iter(store.values.values())))["h"] < sandbox.state.clock.now()


@run_async
async def test_an_empty_first_answer_makes_no_record_already_there_new(quick, control):
    control.receive_fax(id="old1")
    control.receive_fax(id="old2")
    control.advance(1)  # before the start: a record of its very second, not in its first answer, is new
    control.add_fault(status=200, method="GET", path_contains=LIST, body='{"data": {"records": []}}', times=1)
    store = FakeStore()
    running = Running(make(quick, store, report_existing=False))
    try:
        await running.until(lambda: lists(control) >= 6, "six lists")
    finally:
        await running.stop()
    assert ids(running) == []


@run_async
async def test_a_triggerer_clock_hours_ahead_of_the_server_loses_nothing(quick, control, monkeypatch):
    from datetime import datetime as real
    from datetime import timedelta

    class Ahead(real):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return real.now(tz) + timedelta(hours=2)

    monkeypatch.setattr(quick, "datetime", Ahead)
    store = FakeStore()
    running = Running(make(quick, store, report_existing=False))
    try:
        await running.until(lambda: store.writes >= 1, "the first cursor")
        control.receive_fax(id="r1")
        seen = lists(control)
        await running.until(lambda: lists(control) >= seen + 5, "five more lists")
    finally:
        await running.stop()
    assert ids(running) == ["r1"]


@run_async
async def test_a_cursor_of_thousands_of_records_fits_the_store_and_a_restart_repeats_none(quick, control):
    store = StrictStore()
    first = Running(make(quick, store, report_existing=False))
    try:
        await first.until(lambda: store.writes >= 1, "the first cursor")
        for n in range(2100):
            control.receive_fax(id=f"{n:04d}-0123456789abcdef0123456789abcdef")
        await first.until(lambda: len(first.events) >= 2100, "2100 events", timeout=180)
        await first.until(lambda: _stored_ids(store) >= 2100, "the cursor holding them", timeout=60)
    finally:
        await first.stop()
    second = Running(make(quick, store, report_existing=False))
    try:
        seen = lists(control)
        await second.until(lambda: lists(control) >= seen + 60, "60 page lists", timeout=180)
    finally:
        await second.stop()
    assert len(set(ids(first))) == 2100
    assert ids(second) == []


@run_async
async def test_more_records_than_the_pager_takes_is_one_clear_error(quick, control, monkeypatch, caplog):
    from airflow_provider_faxplus import records

    monkeypatch.setitem(records.FaxListPager.__init__.__kwdefaults__, "max_records", 100)  # for 100,000
    for n in range(101):
        control.receive_fax(id=f"old{n:03d}")
    store = FakeStore()
    running = Running(make(quick, store, report_existing=True))
    try:
        await running.until(lambda: lists(control) >= 30, "three turns of 11 pages", timeout=60)
    finally:
        await running.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert "more than 100 inbox records to list" in errors[0]
    assert "report_existing=False" in errors[0]
    assert not [r for r in caplog.records if "Transient" in r.getMessage()]


@run_async
async def test_ids_the_hook_refuses_are_skipped_once_and_payloads_are_bounded(quick, control, caplog):
    store = FakeStore()
    running = Running(make(quick, store, report_existing=False))
    try:
        await running.until(lambda: store.writes >= 1, "the first cursor")
        for hostile in ("../../esc/x", "..", "a b"):
            control.receive_fax(id=hostile)
        control.receive_fax(id="bigc", comment="C" * 1_000_000)
        control.receive_fax(id="fine")
        await running.until(lambda: len(running.events) >= 2, "two events", timeout=60)
        seen = lists(control)
        await running.until(lambda: lists(control) >= seen + 4, "four more lists", timeout=60)
    finally:
        await running.stop()
    assert sorted(ids(running)) == ["bigc", "fine"]
    big = next(e for e in running.events if e["fax_id"] == "bigc")
    assert len(json.dumps(big)) < 64 * 1024
    assert "record.comment (1,000,000 characters) truncated" in big["record"]["parse_warnings"]
    warnings = [r.getMessage() for r in caplog.records if "the hook would refuse" in r.getMessage()]
    assert len(warnings) == 3
    assert any("'../../esc/x'" in w for w in warnings)


@pytest.mark.parametrize("name", ["lookback", "poll_interval"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, -1])
def test_lookback_and_poll_interval_must_be_finite_and_positive(quick, name, value):
    with pytest.raises(ValueError, match=name):
        quick.FaxRecordEventTrigger(category="inbox", report_existing=False, **{name: value})
