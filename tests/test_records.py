"""Fax records: parsing (records.py), the sandbox's /faxes, /files and /report, and the hook's record
methods over real HTTP."""

from __future__ import annotations

import json
import logging
import os
import tracemalloc
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from airflow_provider_faxplus import records
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import (
    FaxPlusAuthError,
    FaxPlusInputError,
    FaxPlusNotFoundError,
    FaxPlusResponseError,
    FaxPlusTransportError,
)
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.records import FaxDirection, FaxStatus, parse_fax_record
from airflow_provider_faxplus.sandbox import SandboxServer
from tests.conftest import TOKEN

FULL = {
    "id": "f1",
    "owner_id": "u1",
    "pages": 2,
    "status": "success",
    "comment": "hello",
    "cost_details": {"multiplier": 1, "notification_cost": 0.5},
    "cost": 2,
    "description": "OK",
    "direction": "outgoing",
    "duration": 60,
    "file": "f1",
    "file_name": "f1.pdf",
    "from": "+16699990001",
    "to": "+16699990000",
    "header": "ACME",
    "is_read": True,
    "is_spam": False,
    "last_update": "2026-12-07 10:00:05",
    "max_retry": 1,
    "retry_delay": 5,
    "scheduled_time": "2026-12-07 09:59:00",
    "start_time": "2026-12-07 10:00:00",
    "submit_time": "2026-12-07 09:58:00 +0100",
    "cover_page": {"subject": "s"},
}


# Parsing -------------------------------------------------------------------------------------------


def test_every_field_of_the_sdk_fax_model_is_typed():
    from faxplus.models.fax import Fax  # the SDK is the reference for the wire format

    record = parse_fax_record(FULL)
    wire = set(Fax.attribute_map.values())
    assert wire - {"from"} <= set(records.FaxRecord.__dataclass_fields__)
    assert record.parse_warnings == ()
    assert record.status is FaxStatus.SUCCESS
    assert record.direction is FaxDirection.OUTGOING
    assert record.from_number == "+16699990001"
    assert record.cost_details == records.FaxCostDetails(1.0, 0.5)
    assert record.submit_time.isoformat() == "2026-12-07T08:58:00+00:00"  # the offset is converted to UTC
    assert record.start_time.tzinfo is not None
    assert record.outcome == "delivered"
    assert record.to_dict()["start_time"] == "2026-12-07T10:00:00+00:00"


def test_from_number_is_accepted_as_from_and_a_disagreement_is_a_warning():
    body = {**FULL}
    del body["from"]
    body["from_number"] = "+16699990002"
    assert parse_fax_record(body).from_number == "+16699990002"
    both = {**FULL, "from_number": "+16699990003"}
    record = parse_fax_record(both)
    assert record.from_number == "+16699990001"
    assert any("from_number" in warning for warning in record.parse_warnings)


def test_a_field_that_does_not_parse_is_named_and_kept_raw():
    record = parse_fax_record({**FULL, "pages": "two", "start_time": "yesterday", "cost_details": 3})
    assert record.pages is None
    assert record.start_time is None
    assert len(record.parse_warnings) == 3
    assert record.raw["pages"] == "two"
    with pytest.raises(records.FaxRecordParseError, match="id"):
        parse_fax_record({"status": "success"})


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("success", "delivered"),
        ("partially_sent", "partial"),
        ("failed", "failed"),
        ("insufficient_credit", "failed"),
        ("failed_no_answer", "failed"),
        ("failed_something_new", "failed"),
        ("queued_somewhere", "unknown"),
    ],
)
def test_outcomes(status, outcome):
    assert records.outcome(records.parse_fax_status(status)) == outcome


def test_an_unknown_status_is_kept_raw_and_logged_once(caplog):
    caplog.set_level(logging.WARNING, logger="airflow_provider_faxplus.records")
    for _ in range(3):
        record = parse_fax_record({**FULL, "status": "teleported_7"})
        assert record.status == "teleported_7"
        assert not isinstance(record.status, FaxStatus)
    assert sum("teleported_7" in message for message in caplog.messages) == 1


def test_the_sdk_status_enum_is_ours():
    from faxplus.models.fax_status import FaxStatus as SdkStatus

    sdk = {member.value for member in SdkStatus}
    assert len(sdk) == 23
    assert sdk == {status.value for status in FaxStatus}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"category": "outbox"}, "category"),
        ({"category": "inbox", "after": datetime(2026, 1, 1)}, "no time zone"),
        ({"category": "inbox", "after": "yesterday"}, "after"),
        ({"category": "inbox", "limit": 0}, "limit"),
        ({"category": "inbox", "limit": True}, "limit"),
        (
            {
                "category": "inbox",
                "after": datetime(2026, 2, 1, tzinfo=UTC),
                "before": datetime(2026, 1, 1, tzinfo=UTC),
            },
            "earlier",
        ),
    ],
)
def test_bad_list_arguments_fail_before_any_request(hook, control, kwargs, match):
    control.requests(clear=True)
    category = kwargs.pop("category")
    with pytest.raises(FaxPlusInputError, match=match):
        hook.list_faxes(category, **kwargs)
    assert control.requests() == []


# Sandbox: sent records from the outbox -------------------------------------------------------------


def _leave(control, fax_id, **outcome):
    control.create_fax(id=fax_id, lifecycle=[{"status": "sending", "polls": 1}], comment=f"c {fax_id}")
    if outcome:
        control.set_record_outcome(fax_id, **outcome)
    requests.get(  # one look moves it out of the outbox
        f"{control.root_url}/v3/accounts/self/outbox/{fax_id}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )


def test_an_outbox_fax_that_leaves_becomes_a_sent_record_with_the_same_id(hook, control):
    _leave(control, "out-1")
    record = hook.get_fax("out-1")
    assert record.status is FaxStatus.SUCCESS
    assert record.direction is FaxDirection.OUTGOING
    assert record.comment == "c out-1"
    assert [r.id for r in hook.list_faxes("sent")] == ["out-1"]
    assert hook.list_faxes("inbox") == []


def test_id_policy_new_gives_the_sent_record_an_id_of_its_own(hook, control):
    control.record_settings(id_policy="new")
    _leave(control, "out-2")
    (sent,) = hook.list_faxes("sent")
    assert sent.id != "out-2"
    assert [r["outbox_fax_id"] for r in control.records()] == ["out-2"]
    with pytest.raises(FaxPlusNotFoundError):
        hook.get_fax("out-2")


@pytest.mark.parametrize("status", ["failed_no_answer", "partially_sent", "insufficient_credit"])
def test_the_outcome_is_set_per_fax(hook, control, status):
    _leave(control, "out-3", status=status, description="why")
    record = hook.get_fax("out-3")
    assert record.status == status
    assert record.description == "why"


def test_a_default_outcome_applies_to_every_fax_that_leaves(hook, control):
    control.record_settings(default_outcome={"status": "failed_user_busy"})
    _leave(control, "out-4")
    assert hook.get_fax("out-4").outcome == "failed"


def test_a_cancelled_fax_gets_no_sent_record(hook, control):
    control.create_fax(id="gone", lifecycle=[{"status": "submitted", "seconds": 3600}])
    hook.cancel_outbox_fax("gone")
    assert hook.list_faxes("sent") == []


# Hook: list, get, update, delete -------------------------------------------------------------------


def _receive(control, count, **spec):
    return [control.receive_fax(id=f"in-{n:04d}", **spec) for n in range(count)]


def test_list_pages_one_second_by_offset_each_page_overlapping_the_last_by_one(hook, control):
    control.set_pace(0)
    _receive(control, 120)
    control.requests(clear=True)
    found = hook.list_faxes("inbox")
    assert sorted(r.id for r in found) == [f"in-{n:04d}" for n in range(120)]
    queries = [e["query"] for e in control.requests() if e["path"].endswith("/faxes")]
    assert [q.split("offset=")[1] for q in queries] == ["0", "49", "98", "119"]


def test_list_pages_by_time_below_the_oldest_record_listed(hook, control):
    _spread(control, 120, 1)
    control.requests(clear=True)
    found = hook.list_faxes("inbox")
    assert [r.id for r in found] == [f"in-{n:04d}" for n in range(119, -1, -1)]
    queries = [e["query"] for e in control.requests() if e["path"].endswith("/faxes")]
    times = {r.id: records.format_api_time("t", r.start_time + timedelta(seconds=1)) for r in found}
    befores = [urllib.parse.parse_qs(q).get("before", [None])[0] for q in queries]
    assert befores == [None, times["in-0070"], times["in-0021"], times["in-0000"]]
    assert [q.split("offset=")[1] for q in queries] == ["0", "0", "0", "0"]


def test_a_server_that_caps_its_pages_below_the_size_asked_loses_nothing(hook, control):
    control.record_settings(page_cap=30)
    _receive(control, 100)
    assert len(hook.list_faxes("inbox")) == 100


def test_limit_bounds_the_result(hook, control):
    _receive(control, 70)
    control.requests(clear=True)
    assert len(hook.list_faxes("inbox", limit=60)) == 60
    queries = [e["query"] for e in control.requests() if e["path"].endswith("/faxes")]
    assert ["limit=50" in queries[0], "limit=11" in queries[1]] == [True, True]  # 10 and the overlap
    assert len(queries) == 2


def test_more_than_the_bound_without_limit_is_an_error_not_a_truncated_list(hook, control, monkeypatch):
    monkeypatch.setattr(records, "MAX_LIST_RECORDS", 60)
    _receive(control, 70)
    with pytest.raises(FaxPlusInputError, match=r"more than 60 inbox fax records.*narrow"):
        hook.list_faxes("inbox")


def _spread(control, count, per_second):
    """``count`` received faxes, ``per_second`` of them in each second (ties span pages when large)."""
    control.set_pace(0)
    for n in range(count):
        if n and n % per_second == 0:
            control.advance(1)
        control.receive_fax(id=f"in-{n:04d}")
    control.advance(5)


@pytest.mark.parametrize("per_second", [1, 7, 120], ids=["distinct", "ties", "one-second"])
@pytest.mark.parametrize("listed", [3, 40, 49])
def test_a_record_deleted_between_pages_hides_no_other(hook, control, per_second, listed):
    _spread(control, 120, per_second)
    newest_first = [r.id for r in hook.list_faxes("inbox")]
    gone = newest_first[listed]
    control.record_settings(between_pages={"after": 1, "delete": [gone]})
    found = {r.id for r in hook.list_faxes("inbox")}
    assert found - {gone} == set(newest_first) - {gone}


@pytest.mark.parametrize("per_second", [1, 120], ids=["distinct", "one-second"])
def test_faxes_arriving_between_pages_neither_fail_the_list_nor_hide_a_record(hook, control, per_second):
    _spread(control, 120, per_second)
    control.record_settings(between_pages={"after": 1, "receive": 50})
    found = [r.id for r in hook.list_faxes("inbox")]
    assert len(found) == len(set(found))
    assert {f"in-{n:04d}" for n in range(120)} <= set(found)


def test_a_list_that_changes_under_every_try_is_an_error_not_a_short_list():
    config = FaxPlusConfig(token=TOKEN, base_url="https://fax.test/v3")
    pager = records.FaxListPager(config, "inbox")

    def page(*ids):
        return json.dumps({"data": {"records": [{"id": i, "status": "success"} for i in ids]}}).encode()

    def feed_forever() -> None:
        for n in range(2 * records.FaxListPager.MAX_RESTARTS + 4):
            call = pager.call()
            pager.feed(call, 200, {}, page(f"{n}a", f"{n}b"))  # never the anchor the last page ended on

    with pytest.raises(FaxPlusResponseError, match="changed under each of"):
        feed_forever()
    assert pager.restarts == records.FaxListPager.MAX_RESTARTS + 1
    assert not pager.done


def test_a_server_that_ignores_offset_is_an_error(hook, control):
    body = '{"data": {"records": [{"id": "a", "status": "success"}, {"id": "b", "status": "success"}]}}'
    control.add_fault(path_endswith="/faxes", status=200, body=body, times=5)
    with pytest.raises(FaxPlusResponseError, match="does not page by offset"):
        hook.list_faxes("inbox")


def test_after_and_before_select_a_window(hook, control):
    control.set_pace(0)
    _receive(control, 2)
    start = datetime.now(UTC)
    control.advance(3600)
    control.receive_fax(id="late")
    later = hook.list_faxes("inbox", after=start + timedelta(minutes=30))
    assert [r.id for r in later] == ["late"]
    earlier = hook.list_faxes("inbox", before=(start + timedelta(minutes=30)).strftime("%Y-%m-%d %H:%M:%S"))
    assert sorted(r.id for r in earlier) == ["in-0000", "in-0001"]


def test_received_faxes_are_records_of_the_inbox_and_spam(hook, control):
    control.receive_fax(id="r1", **{"from": "+4930123456"})
    control.receive_fax(id="s1", category="spam")
    control.record_settings(from_field="from_number")  # apidoc's spelling: read all the same
    control.receive_fax(id="r2", **{"from": "+4930999999"})
    inbox = {r.id: r for r in hook.list_faxes("inbox")}
    assert inbox["r1"].from_number == "+4930123456"
    assert inbox["r2"].from_number == "+4930999999"
    assert inbox["r1"].direction is FaxDirection.INCOMING
    assert inbox["r1"].is_read is False
    assert [r.id for r in hook.list_faxes("spam")] == ["s1"]


def test_update_and_delete(hook, control):
    control.receive_fax(id="r1")
    hook.update_fax("r1", is_read=True)
    hook.update_fax("r1", comment="ingested")
    record = hook.get_fax("r1")
    assert (record.is_read, record.comment) == (True, "ingested")
    bodies = [e["body"] for e in control.requests() if e["method"] == "PUT"]
    assert bodies == ['{"is_read": true}', '{"comment": "ingested"}']
    with pytest.raises(FaxPlusInputError, match="nothing to modify"):
        hook.update_fax("r1")
    hook.delete_fax("r1")
    with pytest.raises(FaxPlusNotFoundError) as raised:
        hook.get_fax("r1")
    message = str(raised.value)
    for part in ("Get a fax record", "'r1'", "HTTP 404", "fax_not_found"):
        assert part in message
    assert raised.value.fax_id == "r1"
    assert raised.value.status == 404
    assert TOKEN not in message


def test_a_token_without_the_scope_is_told_which_scopes(monkeypatch, tmp_path):
    with SandboxServer(tokens={"edit-only": frozenset({"fax:fax:edit"})}) as server:
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", server.connection_json())
        server.client.receive_fax(id="r1")
        hook = FaxPlusHook()
        with pytest.raises(FaxPlusAuthError, match="fax:all:read or fax:fax:read") as raised:
            hook.download_fax("r1", tmp_path)
        assert "r1" in str(raised.value)
        assert "edit-only" not in str(raised.value)


# Downloads -----------------------------------------------------------------------------------------


def test_download_a_pdf_and_a_tiff_into_a_directory(hook, control, tmp_path):
    control.receive_fax(id="r1")
    written = hook.download_fax("r1", tmp_path)
    assert written == str(tmp_path / "r1.pdf")
    data = Path(written).read_bytes()
    assert data.startswith(b"%PDF-1.4")
    assert data.rstrip().endswith(b"%%EOF")
    tif = hook.download_fax("r1", str(tmp_path / "copy.tif"), format="tiff")
    assert Path(tif).read_bytes()[:4] == b"II*\x00"
    assert sorted(os.listdir(tmp_path)) == ["copy.tif", "r1.pdf"]
    with pytest.raises(FaxPlusInputError, match="format"):
        hook.download_fax("r1", tmp_path, format="png")


def test_the_confirmation_report_of_a_sent_fax(hook, control, tmp_path):
    _leave(control, "out-9", status="failed_no_answer")
    written = hook.download_fax_report("out-9", tmp_path)
    assert written == str(tmp_path / "out-9-report.pdf")
    assert b"failed_no_answer" in Path(written).read_bytes()
    control.receive_fax(id="r1")
    with pytest.raises(FaxPlusNotFoundError, match="report_not_found"):
        hook.download_fax_report("r1", tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["out-9-report.pdf"]


def test_a_download_is_streamed_not_held_in_memory(hook, control, tmp_path):
    size = 24 * 1024 * 1024
    control.settings(log_response_bodies=False)
    control.receive_fax(id="big", file_size=size)
    tracemalloc.start()
    try:
        written = hook.download_fax("big", tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert Path(written).stat().st_size > size - 2048  # the sandbox pads its PDF to about that size
    assert peak < size / 4, f"peak {peak:,} bytes for a {size:,}-byte file"


def test_a_download_cut_off_leaves_no_file(control, tmp_path, monkeypatch, sandbox):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(max_attempts=1))
    control.receive_fax(id="r1", file_size=2 * 1024 * 1024)
    target = tmp_path / "r1.pdf"
    target.write_bytes(b"the previous version")
    control.add_fault(path_contains="/files/r1", cut_after=1024 * 1024)
    with pytest.raises(FaxPlusTransportError, match="fax record 'r1'"):
        FaxPlusHook().download_fax("r1", target)
    assert os.listdir(tmp_path) == ["r1.pdf"]  # no temporary file left
    assert target.read_bytes() == b"the previous version"  # and the old file untouched


def test_a_cut_off_download_is_retried_whole(hook, control, tmp_path):
    control.receive_fax(id="r1", file_size=300_000)
    control.add_fault(path_contains="/files/r1", cut_after=200_000)
    written = hook.download_fax("r1", tmp_path)
    assert Path(written).read_bytes().rstrip().endswith(b"%%EOF")
    assert os.listdir(tmp_path) == ["r1.pdf"]


def test_download_to_object_storage(hook, control, tmp_path):
    control.receive_fax(id="r1")
    written = hook.download_fax("r1", f"file://{tmp_path}/")
    assert type(written).__name__ == "ObjectStoragePath"
    assert str(written).endswith("/r1.pdf")
    assert (tmp_path / "r1.pdf").read_bytes().startswith(b"%PDF")
    assert os.listdir(tmp_path) == ["r1.pdf"]


def test_a_destination_directory_that_does_not_exist_is_an_error(hook, control, tmp_path):
    control.receive_fax(id="r1")
    control.requests(clear=True)
    with pytest.raises(FaxPlusInputError, match="does not exist"):
        hook.download_fax("r1", tmp_path / "missing" / "r1.pdf")
    assert control.requests() == []


def test_download_to_an_object_storage_path_object(hook, control, tmp_path):
    from airflow_provider_faxplus.files import object_storage_path

    control.receive_fax(id="r1")
    target = object_storage_path(f"file://{tmp_path}/named.tif")
    written = hook.download_fax("r1", target, format="tiff")
    assert written == target
    assert (tmp_path / "named.tif").read_bytes()[:4] == b"II*\x00"
    assert os.listdir(tmp_path) == ["named.tif"]


def test_a_download_to_object_storage_cut_off_leaves_no_object(control, tmp_path, monkeypatch, sandbox):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(max_attempts=1))
    control.receive_fax(id="r1", file_size=2 * 1024 * 1024)
    control.add_fault(path_contains="/files/r1", cut_after=1024 * 1024)
    with pytest.raises(FaxPlusTransportError):
        FaxPlusHook().download_fax("r1", f"file://{tmp_path}/")
    assert os.listdir(tmp_path) == []
