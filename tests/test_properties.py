"""Property-based tests of the pure parts: arbitrary input gives a result or the documented error, never
another exception."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pendulum
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_faxplus import protocol
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusInputError, FaxPlusRequestError, FaxPlusResponseError
from airflow_provider_faxplus.models import OutboxFax, OutboxParseError, parse_outbox, parse_utc_datetime

CONFIG = FaxPlusConfig(base_url="https://api.example.com/v3", token="alohi_pat_x")
CALL = protocol.get_outbox_fax_call(CONFIG, "f1")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
outbox_like = st.fixed_dictionaries(
    {"id": st.text(max_size=8), "uid": st.text(max_size=8), "status": st.text(max_size=12)},
    optional={
        name: json_values
        for name in (
            "comment",
            "send_time",
            "submit_time",
            "last_updated_status_time",
            "status_changes",
            "page_count",
            "retry",
            "to",
            "files",
            "file_changes",
            "should_enhance",
            "options",
            "extra_info",
            "cover_page",
        )
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, outbox_like))
def test_any_json_gives_a_record_or_a_parse_error(body):
    try:
        record = parse_outbox(body)
    except OutboxParseError:
        return
    assert isinstance(record, OutboxFax)
    assert json.loads(json.dumps(record.to_dict())) == record.to_dict()


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200) | outbox_like.map(lambda d: json.dumps(d).encode()),
    st.sampled_from([200, 400, 404, 503]),
)
def test_any_response_gives_a_record_or_a_provider_error(body, status):
    error = None
    try:
        record = protocol.parse_get_response(CONFIG, CALL, status, {}, body)
    except (FaxPlusResponseError, FaxPlusRequestError) as exc:
        error = exc
    if error is not None:
        assert "alohi_pat_x" not in str(error)
        return
    assert status == 200
    assert isinstance(record, OutboxFax)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_any_path_parameter_is_refused_or_encoded_as_one_segment(value):
    try:
        call = protocol.get_outbox_fax_call(CONFIG, value)
    except FaxPlusInputError:
        return
    segment = call.path.rsplit("/", 1)[1]
    assert not set("/?#") & set(segment)
    assert unquote(segment) == value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.integers() | st.none())
def test_any_datetime_value_gives_utc_or_none(value):
    parsed = parse_utc_datetime(value)
    assert parsed is None or (
        isinstance(parsed, pendulum.DateTime) and parsed.utcoffset().total_seconds() == 0
    )


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=pendulum.datetime(1971, 1, 1).naive(), max_value=pendulum.datetime(2200, 1, 1).naive()
    ),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
def test_datetimes_round_trip_through_both_spec_formats(moment, offset_minutes):
    moment = moment.replace(microsecond=0)
    assert parse_utc_datetime(moment.strftime("%Y-%m-%d %H:%M:%S")).naive() == moment
    sign = "+" if offset_minutes >= 0 else "-"
    local = moment + pendulum.duration(minutes=offset_minutes)
    text = (
        local.strftime("%Y-%m-%d %H:%M:%S")
        + f" {sign}{abs(offset_minutes) // 60:02d}{abs(offset_minutes) % 60:02d}"
    )
    assert parse_utc_datetime(text).naive() == moment


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_retry_after_gives_non_negative_seconds_or_none(value):
    seconds = protocol.parse_retry_after(value)
    assert seconds is None or seconds >= 0
