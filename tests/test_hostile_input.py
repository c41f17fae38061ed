"""Hostile input: every value gets a correct request (shown by the sandbox's request log) or a clear error
before any request. Connection extras and base URLs are in test_config.py."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_faxplus.exceptions import FaxPlusInputError, FaxPlusNotFoundError
from airflow_provider_faxplus.operators.outbox import UpdateOutboxCommentOperator
from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor

REFUSED_IDS = {
    "empty": ("", "is empty"),
    "whitespace": ("   ", "is empty"),
    "padded": (" f1", "leading or trailing whitespace"),
    "slash": ("a/b", "must not contain"),
    "backslash": ("a\\b", "must not contain"),
    "dot": (".", "must not be '.' or '..'"),
    "dot-dot": ("..", "must not be '.' or '..'"),
    "traversal": ("../../accounts", "must not contain"),
    "nul": ("a\x00b", "control characters"),
    "newline": ("a\nb", "control characters"),
    "del": ("a\x7fb", "control characters"),
    "10000-chars": ("x" * 10_000, "10000 characters long; at most 256"),
    "int": (42, "must be a string, got int"),
    "none": (None, "must be a string, got NoneType"),
    "bytes": (b"f1", "must be a string, got bytes"),
    "list": (["f1"], "must be a string, got list"),
}
# Valid as one path segment: sent percent-encoded, so the server sees exactly this id.
ENCODED_IDS = {
    "question-mark": "a?b",
    "hash": "a#b",
    "encoded-slash": "a%2Fb",
    # Percent-encoded dots are sent as "%252e": no client or server decodes them into a dot segment.
    "encoded-dot": "%2e",
    "encoded-dot-dot": "%2e%2e",
    "encoded-dot-dot-upper": "%2E%2E",
    "dot-encoded-dot": ".%2e",
    "three-dots-apart": ".a.",
    "non-ascii": "fäx",
    "emoji": "fax📠",
    "256-chars": "y" * 256,
}
COMMENTS = {
    "empty": "",
    "multi-line": "line one\nline two\r\nline three",
    "quotes-and-emoji": 'He said "fax it" — it\'s 📠 ✓ {"json": true} </script>',
    "1-MB": "0123456789abcdef" * 65_536,
}


@pytest.mark.parametrize("field", ["outbox_fax_id", "user_id"])
@pytest.mark.parametrize(("value", "message"), REFUSED_IDS.values(), ids=REFUSED_IDS.keys())
def test_bad_ids_are_refused_before_any_request(hook, control, field, value, message):
    get_args = {"outbox_fax_id": "f1", "user_id": "self", field: value}
    with pytest.raises(FaxPlusInputError, match=field) as info:
        hook.get_outbox_fax(**get_args)
    assert message in str(info.value)
    with pytest.raises(FaxPlusInputError, match=message.split(";")[0]):
        hook.update_outbox_fax(comment="c", **get_args)
    assert len(str(info.value)) < 400  # a 10,000-character id is not echoed whole
    assert control.requests() == []


@pytest.mark.parametrize("value", ENCODED_IDS.values(), ids=ENCODED_IDS.keys())
def test_odd_ids_reach_the_server_exactly(hook, control, value):
    with pytest.raises(FaxPlusNotFoundError):
        hook.get_outbox_fax(value)
    with pytest.raises(FaxPlusNotFoundError):
        hook.update_outbox_fax(value, comment="c")
    with pytest.raises(FaxPlusInputError):  # the user id is checked the same way; this one is unknown
        hook.get_outbox_fax("f1", user_id=value + "/")
    log = control.requests()
    assert [entry["raw_path"] for entry in log] == [f"/v3/accounts/self/outbox/{quote(value, safe='')}"] * 2
    assert [entry["path"] for entry in log] == [f"/v3/accounts/self/outbox/{value}"] * 2


@pytest.mark.parametrize("comment", COMMENTS.values(), ids=COMMENTS.keys())
def test_comments_arrive_exactly_as_given(hook, control, comment):
    control.create_fax(id="f1", tags=["keep"])
    hook.update_outbox_fax("f1", comment=comment)
    [put] = control.requests()
    assert put["headers"]["content-type"] == "application/json; charset=utf-8"
    assert json.loads(put["body"]) == {"comment": comment}
    assert control.fax("f1")["comment"] == {"tags": ["keep"], "text": comment}


@pytest.mark.parametrize("comment", [None, 42, 4.2, True, b"bytes", ["a"], {"text": "a"}])
def test_non_string_comments_are_refused_before_any_request(hook, control, comment):
    with pytest.raises(FaxPlusInputError, match=f"comment must be a string, got {type(comment).__name__}"):
        hook.update_outbox_fax("f1", comment=comment)
    assert control.requests() == []


@pytest.mark.parametrize("value", ["../x", "x" * 10_000, "a\nb"], ids=["traversal", "10000-chars", "newline"])
def test_sensor_and_operator_fail_at_once_on_a_bad_id(faxplus_conn, control, value):
    sensor = OutboxFaxSensor(task_id="wait", outbox_fax_id=value, poke_interval=1, timeout=10)
    with pytest.raises(AirflowFailException, match="outbox_fax_id"):
        sensor.poke({})
    operator = UpdateOutboxCommentOperator(task_id="tag", outbox_fax_id=value, comment="c")
    with pytest.raises(AirflowFailException, match="outbox_fax_id"):
        operator.execute({})
    assert control.requests() == []


@pytest.mark.parametrize("value", ENCODED_IDS.values(), ids=ENCODED_IDS.keys())
def test_odd_ids_reach_the_server_exactly_from_the_trigger_too(faxplus_conn, control, value):
    """aiohttp (yarl) must send the same bytes as requests: a dot segment or an encoded one never
    collapses the path."""
    import asyncio

    from airflow_provider_faxplus.config import config_from_connection
    from airflow_provider_faxplus.triggers.outbox import fetch_outbox_fax, shared_session

    conn = json.loads(faxplus_conn)
    config = config_from_connection(
        conn_id="c",
        host=conn["host"],
        password=conn["password"],
        login=None,
        schema=None,
        port=None,
        extra={},
    )

    async def fetch() -> None:
        async with shared_session(config) as lease:
            with pytest.raises(FaxPlusNotFoundError):
                await fetch_outbox_fax(lease, config, value, "self")

    asyncio.run(fetch())
    [entry] = control.requests()
    assert entry["raw_path"] == f"/v3/accounts/self/outbox/{quote(value, safe='')}"
    assert entry["path"] == f"/v3/accounts/self/outbox/{value}"


@pytest.mark.parametrize("value", [".", ".."])
def test_dot_ids_are_refused_by_the_trigger_before_any_request(faxplus_conn, control, value):
    import asyncio

    from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger

    async def first_event():
        async for event in OutboxFaxTrigger(outbox_fax_id=value, poke_interval=0.1).run():
            return event.payload
        return None

    event = asyncio.run(first_event())
    assert event["status"] == "error"
    assert event["kind"] == "input"
    assert "must not be '.' or '..'" in event["message"]
    assert control.requests() == []
