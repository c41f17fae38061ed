"""The record watcher's window and cursor without I/O (both Airflow lines), and the list pager."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from airflow_provider_faxplus import records
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusResponseError
from airflow_provider_faxplus.record_watch import (
    GONE_MAX,
    TRUNCATED,
    RecordWindow,
    diff,
    first_window,
    id_key,
    payload,
    read_event,
    refused_id,
)

T0 = int(datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp())


def rec(fax_id: str, at: int | None, status: str = "success") -> records.FaxRecord:
    body: dict[str, object] = {"id": fax_id, "status": status}
    if at is not None:
        body["start_time"] = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return records.parse_fax_record(body)


def k(*ids: str) -> set[str]:
    return {id_key(i) for i in ids}


def test_a_baseline_reports_nothing_and_later_records_are_new_once():
    window = first_window(T0, 600, report_existing=False)
    assert window.after() == "2026-12-07 11:50:00"
    fresh, window = diff(window, [rec("a", T0 - 5)], lookback=600, server_now=T0, first=True)
    assert fresh == []
    answer = [rec("b", T0 + 2), rec("a", T0 - 5), rec("c", T0 + 1)]
    fresh, window = diff(window, answer, lookback=600, server_now=T0 + 3)
    assert [r.id for r in fresh] == ["c", "b"]  # oldest first
    fresh, window = diff(window, answer, lookback=600, server_now=T0 + 4)
    assert fresh == []


def test_an_empty_first_answer_invents_nothing_records_before_the_start_are_the_starting_point():
    window = first_window(T0, 600, report_existing=False)
    fresh, window = diff(window, [], lookback=600, server_now=T0, first=True)
    # The next answer holds the records the first one left out: older than the start, not new.
    answer = [rec("old1", T0 - 100), rec("old2", T0 - 1), rec("untimed", None), rec("new", T0)]
    fresh, window = diff(window, answer, lookback=600, server_now=T0 + 60)
    assert [r.id for r in fresh] == ["new", "untimed"]
    fresh, _ = diff(window, answer, lookback=600, server_now=T0 + 120)
    assert fresh == []


def test_a_future_dated_record_is_reported_once_with_a_warning_and_does_not_move_the_horizon():
    window = first_window(T0, 600, report_existing=False)
    _, window = diff(window, [], lookback=600, server_now=T0, first=True)
    future = rec("glitch", T0 + 10 * 365 * 86400)
    fresh, window = diff(window, [future], lookback=600, server_now=T0 + 60)
    assert [r.id for r in fresh] == ["glitch"]
    assert "after the server's" in fresh[0].parse_warnings[-1]
    assert window.horizon == T0 - 540
    fresh, window = diff(window, [future, rec("real1", T0 + 61)], lookback=600, server_now=T0 + 70)
    assert [r.id for r in fresh] == ["real1"]
    # Long after: the glitch, still listed, is not new again and never moved the horizon.
    for step in range(1, 5):
        fresh, window = diff(window, [future], lookback=600, server_now=T0 + 3600 * step)
        assert fresh == []
    assert window.horizon == T0 + 61 - 600  # trails real1, the newest record not in the future


def test_report_existing_lists_everything_and_reports_it():
    window = first_window(T0, 600, report_existing=True)
    assert window.horizon is None
    assert window.after() is None
    fresh, window = diff(
        window, [rec("old", T0 - 86400), rec("new", T0)], lookback=600, server_now=T0, first=True
    )
    assert [r.id for r in fresh] == ["old", "new"]
    assert window.horizon == T0 - 600
    assert set(window.seen) == k("new")


def test_an_absence_from_one_answer_forgets_nothing():
    window = RecordWindow(T0 - 600, {id_key("a"): T0})
    fresh, after = diff(window, [], lookback=600, server_now=T0)
    assert fresh == []
    assert after.seen == {id_key("a"): T0}
    fresh, after = diff(after, [rec("a", T0)], lookback=600, server_now=T0)
    assert fresh == []


def test_ids_leave_the_cursor_only_when_the_horizon_passes_their_time():
    window = RecordWindow(T0 - 600, {id_key("a"): T0 - 500})
    _, after = diff(window, [rec("b", T0 + 200)], lookback=600, server_now=T0 + 300)
    assert after.horizon == T0 - 400
    assert after.seen == {id_key("b"): T0 + 200}
    assert after.gone == [id_key("a")]
    # An old record listed despite the horizon (an API that filters on another time) is never new.
    fresh, _ = diff(after, [rec("a", T0 - 500)], lookback=600, server_now=T0 + 300)
    assert fresh == []


def test_a_reported_record_whose_time_goes_missing_or_moves_is_not_reported_again():
    window = RecordWindow(T0 - 600)
    fresh, window = diff(window, [rec("x", None), rec("m", T0 - 10)], lookback=600, server_now=T0)
    assert sorted(r.id for r in fresh) == ["m", "x"]
    # The horizon passes both; then "x" is listed again (no time) and "m" with a later time.
    _, window = diff(window, [rec("z", T0 + 3000)], lookback=600, server_now=T0 + 3000)
    assert window.horizon == T0 + 2400
    fresh, window = diff(window, [rec("x", None), rec("m", T0 + 2900)], lookback=600, server_now=T0 + 3000)
    assert fresh == []


def test_a_record_late_within_the_lookback_is_new_and_a_repeat_on_two_pages_counts_once():
    window = RecordWindow(T0 - 600, {id_key("b"): T0})
    answer = [rec("late", T0 - 300), rec("late", T0 - 300), rec("b", T0)]
    fresh, _ = diff(window, answer, lookback=600, server_now=T0)
    assert [r.id for r in fresh] == ["late"]


def test_a_record_without_a_time_counts_as_listed_at_server_now():
    fresh, after = diff(
        RecordWindow(T0 - 600, {id_key("a"): T0}), [rec("x", None)], lookback=600, server_now=T0 + 5
    )
    assert [r.id for r in fresh] == ["x"]
    assert after.seen[id_key("x")] == T0 + 5


def test_the_cursor_round_trips_and_refuses_what_it_cannot_read(caplog):
    window = RecordWindow(T0, {id_key("a"): T0, id_key("b"): T0, id_key("c"): T0 + 1}, T0 + 5, [id_key("d")])
    value = json.loads(json.dumps(window.encode()))
    assert RecordWindow.decode(value) == window
    assert RecordWindow.decode(json.dumps(value)) == window
    assert RecordWindow.decode({"v": 1, "h": T0, "t": [[T0, ["a"]]]}) == RecordWindow(T0, {id_key("a"): T0})
    assert RecordWindow.decode(None) is None
    assert RecordWindow.decode({"v": 99}) is None
    assert RecordWindow.decode({"v": 1, "h": "x", "t": []}) is None
    assert "cannot read" in caplog.text


def test_the_cursor_of_a_busy_hour_stays_under_the_state_store_limit():
    window = RecordWindow(T0, {id_key(f"{n:032x}"): T0 + n % 3600 for n in range(1800)})
    assert window.size() < 65_535


def test_a_cursor_over_the_limit_sheds_gone_then_its_oldest_seconds(caplog):
    seen = {id_key(f"id-{n}"): T0 + n // 100 for n in range(6000)}
    window = RecordWindow(T0, seen, None, [id_key(f"g{n}") for n in range(GONE_MAX)])
    fitted = window.fit(65_535)
    assert fitted.size() <= 65_535
    assert fitted.gone == []
    assert fitted.horizon is not None
    assert fitted.horizon > T0
    assert all(at >= fitted.horizon for at in fitted.seen.values())
    assert {key for key, at in seen.items() if at >= fitted.horizon} == set(fitted.seen)
    assert "not reported" in caplog.text


def test_the_payload_is_json_safe_bounded_and_read_event_checks_it():
    event = payload(rec("a", T0), user_id="self", category="inbox", detected_at=datetime.now(UTC))
    assert json.loads(json.dumps(event)) == event
    assert read_event(event)["fax_id"] == "a"
    assert event["record"]["start_time"].endswith("+00:00")
    assert event["record"]["parse_warnings"] == list(rec("a", T0).parse_warnings)
    with pytest.raises(ValueError, match="lacks"):
        read_event({"status": "success", "result": {}})
    with pytest.raises(ValueError, match="category"):
        read_event({**event, "category": "spam"})
    big = records.parse_fax_record({"id": "big", "status": "success", "comment": "C" * 1_000_000})
    event = payload(big, user_id="self", category="inbox", detected_at=datetime.now(UTC))
    assert len(json.dumps(event)) < 16_384
    assert event["record"]["comment"].endswith(TRUNCATED)
    assert event["record"]["parse_warnings"][-1] == "record.comment (1,000,000 characters) truncated"


def test_ids_the_hook_would_refuse_are_named():
    assert refused_id("abc-123_x.y") is None
    for bad in ("../../esc/x", "..", "a b", "x\\y", " a"):
        assert refused_id(bad) is not None, bad


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
