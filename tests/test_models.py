from __future__ import annotations

import json

import pendulum
import pytest

from airflow_provider_faxplus.models import (
    OutboxParseError,
    OutboxStatus,
    parse_outbox,
    parse_utc_datetime,
)

SPEC_EXAMPLE = {
    "comment": {"tags": [], "text": ""},
    "contact_name": "",
    "designated_src": "",
    "extra_info": {},
    "file_changes": [],
    "files": ["/transient-29362c0c-eeff-45c1-9f4e-4ef5865a41df"],
    "id": "13a4afb0585345639733857e8f36df8d",
    "initiated_from": {"from_id": "", "type": ""},
    "ip": "8.8.8.8",
    "last_updated_status_time": "2017-09-24 06:43:04",
    "options": {},
    "page_count": 0,
    "retry": {"count": 0, "delay": 0},
    "send_time": "2017-09-24 06:43:04 +0000",
    "should_enhance": False,
    "src": "+16699990000",
    "status": "submitted",
    "status_changes": [{"at": "2017-09-24 06:43:04", "status": "submitted"}],
    "submit_time": "2017-09-24 06:43:04 +0000",
    "to": ["+16699990000"],
    "uid": "53a1afb8585345a39033857e1f36bf8d",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-09-24 06:43:04", pendulum.datetime(2017, 9, 24, 6, 43, 4, tz="UTC")),
        ("2017-09-24 06:43:04 +0000", pendulum.datetime(2017, 9, 24, 6, 43, 4, tz="UTC")),
        ("2017-09-24 08:43:04 +0200", pendulum.datetime(2017, 9, 24, 6, 43, 4, tz="UTC")),
        ("2017-09-24 01:43:04 -0500", pendulum.datetime(2017, 9, 24, 6, 43, 4, tz="UTC")),
        ("2017-09-24T06:43:04Z", pendulum.datetime(2017, 9, 24, 6, 43, 4, tz="UTC")),
        ("2017-09-24 06:43:04.250000", pendulum.datetime(2017, 9, 24, 6, 43, 4, 250000, tz="UTC")),
    ],
)
def test_datetimes_of_both_spec_formats_parse_to_utc(text, expected):
    parsed = parse_utc_datetime(text)
    assert parsed == expected
    assert parsed.utcoffset().total_seconds() == 0
    assert parsed.timezone_name == "UTC"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "2017-13-01 00:00:00",
        "2017-02-30 10:00:00",
        "2017-09-24 06:43:04 +2500",
        "0001-01-01 00:30:00 +0100",
        "9999-12-31 23:30:00 -0100",
        1506235384,
        None,
    ],
)
def test_unparseable_datetimes_give_none(value):
    assert parse_utc_datetime(value) is None


def test_spec_example_parses_to_a_typed_record():
    record = parse_outbox(SPEC_EXAMPLE)
    assert record.id == SPEC_EXAMPLE["id"]
    assert record.status is OutboxStatus.SUBMITTED
    assert record.in_outbox_state
    assert record.send_time == pendulum.datetime(2017, 9, 24, 6, 43, 4, tz="UTC")
    assert record.submit_time.timezone_name == "UTC"
    assert record.last_updated_status_time == record.send_time
    assert record.status_changes[0].status is OutboxStatus.SUBMITTED
    assert record.status_changes[0].at == record.send_time
    assert record.retry.count == 0
    assert record.to == ("+16699990000",)
    assert record.parse_warnings == ()


def test_record_to_dict_is_json_safe_with_iso_utc_strings():
    data = parse_outbox({**SPEC_EXAMPLE, "comment": {"tags": ["a"], "text": "t"}}).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["send_time"] == "2017-09-24T06:43:04+00:00"
    assert data["status_changes"] == [{"status": "submitted", "at": "2017-09-24T06:43:04+00:00"}]
    assert data["comment"] == {"text": "t", "tags": ["a"]}
    assert data["status"] == "submitted"


def test_unknown_status_is_kept_not_a_crash():
    record = parse_outbox({**SPEC_EXAMPLE, "status": "teleporting"})
    assert record.status == "teleporting"
    assert not isinstance(record.status, OutboxStatus)
    assert not record.in_outbox_state
    assert record.to_dict()["status"] == "teleporting"


def test_bad_optional_fields_become_none_with_a_warning_and_raw_kept():
    body = {**SPEC_EXAMPLE, "send_time": "soon", "page_count": "three", "to": "nobody"}
    record = parse_outbox(body)
    assert record.send_time is None
    assert record.page_count is None
    assert record.to == ()
    assert record.raw["send_time"] == "soon"
    joined = " ".join(record.parse_warnings)
    assert "send_time" in joined
    assert "page_count" in joined
    assert "to:" in joined


@pytest.mark.parametrize(
    "body",
    [
        [],
        "text",
        None,
        {"uid": "u", "status": "submitted"},
        {"id": "x", "status": "submitted"},
        {"id": "x", "uid": "u"},
        {"id": 1, "uid": "u", "status": "submitted"},
    ],
)
def test_missing_or_wrong_required_fields_raise_parse_error(body):
    with pytest.raises(OutboxParseError):
        parse_outbox(body)


def test_a_datetime_pushed_past_the_calendar_by_its_offset_is_a_parse_warning():
    body = {
        **SPEC_EXAMPLE,
        "send_time": "0001-01-01 00:30:00 +0100",
        "submit_time": "9999-12-31 23:30:00 -0100",
    }
    record = parse_outbox(body)
    assert (record.send_time, record.submit_time) == (None, None)
    assert any("send_time" in warning for warning in record.parse_warnings)
    assert any("submit_time" in warning for warning in record.parse_warnings)
