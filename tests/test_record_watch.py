"""The record watcher's window and cursor without I/O (both Airflow lines), and the list pager."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from airflow_provider_faxplus import records
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusResponseError
from airflow_provider_faxplus.record_watch import RecordWindow, diff, first_window, payload, read_event

T0 = int(datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp())


def rec(fax_id: str, at: int | None, status: str = "success") -> records.FaxRecord:
    body: dict[str, object] = {"id": fax_id, "status": status}
    if at is not None:
        body["start_time"] = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return records.parse_fax_record(body)


def test_a_baseline_reports_nothing_and_later_records_are_new_once():
    window = first_window(datetime.fromtimestamp(T0, UTC), 600, report_existing=False)
    assert window.after() == "2026-12-07 11:50:00"
    fresh, window = diff(window, [rec("a", T0 - 5)], lookback=600, baseline=True)
    assert fresh == []
    fresh, window = diff(window, [rec("b", T0 + 2), rec("a", T0 - 5), rec("c", T0 + 1)], lookback=600)
    assert [r.id for r in fresh] == ["c", "b"]  # oldest first
    fresh, window = diff(window, [rec("b", T0 + 2), rec("a", T0 - 5), rec("c", T0 + 1)], lookback=600)
    assert fresh == []


def test_report_existing_lists_everything_and_reports_it():
    window = first_window(datetime.fromtimestamp(T0, UTC), 600, report_existing=True)
    assert window.horizon is None
    assert window.after() is None
    fresh, window = diff(window, [rec("old", T0 - 86400), rec("new", T0)], lookback=600)
    assert [r.id for r in fresh] == ["old", "new"]
    assert window.horizon == T0 - 600
    assert set(window.seen) == {"new"}


def test_an_absence_from_one_answer_forgets_nothing():
    window = RecordWindow(T0 - 600, {"a": T0})
    fresh, after = diff(window, [], lookback=600)
    assert fresh == []
    assert after.seen == {"a": T0}
    fresh, after = diff(after, [rec("a", T0)], lookback=600)
    assert fresh == []


def test_ids_leave_the_cursor_only_when_the_horizon_passes_their_time():
    window = RecordWindow(T0 - 600, {"a": T0 - 500})
    _, after = diff(window, [rec("b", T0 + 200)], lookback=600)
    assert after.horizon == T0 - 400
    assert after.seen == {"b": T0 + 200}
    # An old record listed despite the horizon (an API that filters on another time) is never new.
    fresh, _ = diff(after, [rec("a", T0 - 500)], lookback=600)
    assert fresh == []


def test_a_record_late_within_the_lookback_is_new_and_a_repeat_on_two_pages_counts_once():
    window = RecordWindow(T0 - 600, {"b": T0})
    fresh, _ = diff(window, [rec("late", T0 - 300), rec("late", T0 - 300), rec("b", T0)], lookback=600)
    assert [r.id for r in fresh] == ["late"]


def test_a_record_without_a_time_counts_as_the_newest():
    fresh, after = diff(RecordWindow(T0 - 600, {"a": T0}), [rec("x", None)], lookback=600)
    assert [r.id for r in fresh] == ["x"]
    assert after.seen["x"] == T0


def test_the_cursor_round_trips_and_refuses_what_it_cannot_read(caplog):
    window = RecordWindow(T0, {"a": T0, "b": T0, "c": T0 + 1})
    value = json.loads(json.dumps(window.encode()))
    assert RecordWindow.decode(value) == window
    assert RecordWindow.decode(json.dumps(value)) == window
    assert RecordWindow.decode(None) is None
    assert RecordWindow.decode({"v": 99}) is None
    assert RecordWindow.decode({"v": 1, "h": "x", "t": []}) is None
    assert "cannot read" in caplog.text


def test_the_cursor_of_a_busy_hour_stays_under_the_state_store_limit():
    window = RecordWindow(T0, {f"{n:032x}": T0 + n % 3600 for n in range(1000)})
    assert window.size() < 65_535


def test_the_payload_is_json_safe_and_read_event_checks_it():
    event = payload(rec("a", T0), user_id="self", category="inbox", detected_at=datetime.now(UTC))
    assert json.loads(json.dumps(event)) == event
    assert read_event(event)["fax_id"] == "a"
    assert event["record"]["start_time"].endswith("+00:00")
    with pytest.raises(ValueError, match="lacks"):
        read_event({"status": "success", "result": {}})
    with pytest.raises(ValueError, match="category"):
        read_event({**event, "category": "spam"})


def _page(ids: list[str]) -> bytes:
    return json.dumps({"data": {"records": [{"id": i, "status": "success"} for i in ids]}}).encode()


def test_the_pager_reads_past_capped_and_shifted_pages_each_overlapping_the_last():
    config = FaxPlusConfig(token="t", base_url="https://x.test/v3")
    pager = records.FaxListPager(config, "inbox", after="2026-12-07 12:00:00")
    call = pager.call()
    assert "after=2026-12-07+12%3A00%3A00" in call.url
    assert "offset=0" in call.url
    pager.feed(call, 200, {}, _page(["a", "b"]))  # a capped page: not the last
    assert not pager.done
    call = pager.call()
    assert "offset=1" in call.url  # b again: the overlap
    pager.feed(call, 200, {}, _page(["new", "b", "c"]))  # shifted by a new fax: b once, c after it
    call = pager.call()
    assert "offset=3" in call.url
    pager.feed(call, 200, {}, _page(["c"]))  # nothing past the overlap: the end
    assert pager.done
    assert list(pager.found) == ["a", "b", "c"]


def test_the_pager_refuses_a_server_that_ignores_offset_and_a_malformed_page():
    config = FaxPlusConfig(token="t", base_url="https://x.test/v3")
    pager = records.FaxListPager(config, "sent")
    pager.feed(pager.call(), 200, {}, _page(["a", "b"]))
    pager.feed(pager.call(), 200, {}, _page(["a", "b"]))  # b to the right: asked again where it is
    with pytest.raises(FaxPlusResponseError, match="does not page by offset"):
        pager.feed(pager.call(), 200, {}, _page(["a", "b"]))
    with pytest.raises(FaxPlusResponseError, match="not JSON"):
        records.FaxListPager(config, "sent").feed(pager.call(), 200, {}, b"<html>proxy</html>")
