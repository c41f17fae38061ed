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


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=pendulum.datetime(1, 1, 1).naive(), max_value=pendulum.datetime(9999, 12, 31).naive()
    ),
    st.sampled_from(["", " +0000", "Z"]) | st.from_regex(r"\A [+-][0-2][0-9][0-5][0-9]\Z"),
)
def test_any_datetime_at_any_edge_of_the_calendar_gives_utc_or_none(moment, zone):
    test_any_datetime_value_gives_utc_or_none.hypothesis.inner_test(
        moment.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0") + zone
    )


extra_values = (
    st.integers()
    | st.integers(min_value=10**15, max_value=10**400)
    | st.floats()
    | st.text(max_size=30)
    | st.from_regex(r"\A-?[0-9]{1,400}(\.[0-9]+)?(e[+-]?[0-9]{1,4})?\Z")
    | st.booleans()
    | st.none()
    | st.lists(st.integers(), max_size=2)
)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(
        ["timeout", "max_attempts", "max_retry_seconds", "initial_backoff", "verify", "client_id"]
    ),
    extra_values,
)
def test_any_extra_value_gives_a_config_or_a_config_error(name, value):
    from airflow_provider_faxplus.config import config_from_connection
    from airflow_provider_faxplus.exceptions import FaxPlusConfigError

    try:
        config = config_from_connection(
            conn_id="fx",
            host=None,
            password="alohi_pat_x",
            login=None,
            schema=None,
            port=None,
            extra={name: value},
        )
    except FaxPlusConfigError as exc:
        message = str(exc)
    else:
        message = name
        assert config.timeout <= 3600
        assert config.max_attempts <= 100
    assert name in message


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=-(10**6), max_value=10**40),
    st.floats(min_value=0, max_value=3600),
    st.none() | st.floats(min_value=0, allow_infinity=False),
)
def test_backoff_is_a_bounded_number_for_any_attempt(attempt, initial, retry_after):
    from airflow_provider_faxplus.retry import MAX_BACKOFF, MAX_RETRY_AFTER, backoff_seconds

    wait = backoff_seconds(attempt, initial, retry_after)
    assert 0 <= wait <= max(MAX_BACKOFF, MAX_RETRY_AFTER)
