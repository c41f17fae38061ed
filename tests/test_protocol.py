from __future__ import annotations

import email.utils
import json
import time

import pytest

from airflow_provider_faxplus import protocol
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import (
    FaxPlusAPIError,
    FaxPlusAuthError,
    FaxPlusConfigError,
    FaxPlusConflictError,
    FaxPlusInputError,
    FaxPlusNotFoundError,
    FaxPlusRateLimitError,
    FaxPlusResponseError,
    FaxPlusServerError,
    FaxPlusTransportError,
)
from airflow_provider_faxplus.retry import MAX_BACKOFF, backoff_seconds

TOKEN = "alohi_pat_secret-value"
CONFIG = FaxPlusConfig(base_url="https://api.example.com/v3", token=TOKEN)


def err(body: dict | str) -> bytes:
    return (json.dumps(body) if isinstance(body, dict) else body).encode()


def test_get_call_builds_url_and_headers_without_token():
    call = protocol.get_outbox_fax_call(CONFIG, "abc123")
    assert call.method == "GET"
    assert call.url == "https://api.example.com/v3/accounts/self/outbox/abc123"
    assert call.body is None
    assert "x-fax-clientid" not in call.headers
    assert TOKEN not in repr(call)


def test_client_id_header_only_when_configured():
    call = protocol.get_outbox_fax_call(FaxPlusConfig(token=TOKEN, client_id="APIK-9"), "abc")
    assert call.headers["x-fax-clientid"] == "APIK-9"


def test_update_call_sends_exactly_the_comment():
    call = protocol.update_outbox_fax_call(CONFIG, "abc", 'multi\nline "quoted" ✓', user_id="member-1")
    assert call.method == "PUT"
    assert call.path == "/accounts/member-1/outbox/abc"
    assert json.loads(call.body) == {"comment": 'multi\nline "quoted" ✓'}


@pytest.mark.parametrize("comment", [None, 3, ["a"], b"bytes"])
def test_update_call_refuses_non_string_comments(comment):
    with pytest.raises(FaxPlusInputError, match="comment must be a string"):
        protocol.update_outbox_fax_call(CONFIG, "abc", comment)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (" abc", "whitespace"),
        ("a/b", "'/'"),
        ("..", "'/'"),
        ("a..b", "'/'"),
        ("a\\b", "'/'"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("x" * 257, "at most 256"),
        (12, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_bad_path_parameters_are_refused_before_any_request(value, message):
    with pytest.raises(FaxPlusInputError, match=message):
        protocol.get_outbox_fax_call(CONFIG, value)
    with pytest.raises(FaxPlusInputError, match=message):
        protocol.get_outbox_fax_call(CONFIG, "abc", user_id=value)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [("a?b", "a%3Fb"), ("a#b", "a%23b"), ("a%2Fb", "a%252Fb"), ("fäx", "f%C3%A4x"), ("a b", "a%20b")],
)
def test_path_parameters_are_percent_encoded(value, encoded):
    assert protocol.get_outbox_fax_call(CONFIG, value).path == f"/accounts/self/outbox/{encoded}"


CALL = protocol.get_outbox_fax_call(CONFIG, "abc")


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, {"error": "invalid_token", "description": "bad"}, FaxPlusAuthError),
        (403, {"error": "insufficient_scope"}, FaxPlusAuthError),
        (404, {"error": "fax_not_found"}, FaxPlusNotFoundError),
        (400, {"error": "fax_not_found"}, FaxPlusNotFoundError),
        (400, {"error": "invalid_user_id", "description": "Invalid user id given"}, FaxPlusAPIError),
        (409, {"error": "fax_not_modifiable"}, FaxPlusConflictError),
        (429, "", FaxPlusRateLimitError),
        (500, {"error": "internal_server_error"}, FaxPlusServerError),
        (503, "<html>Service Unavailable</html>", FaxPlusServerError),
        (302, "", FaxPlusAPIError),
        (418, "", FaxPlusAPIError),
    ],
)
def test_error_mapping(status, body, kind):
    exc = protocol.error_from_response(CONFIG, CALL, status, {}, err(body))
    assert type(exc) is kind
    assert exc.status == status
    assert exc.operation == "Get outgoing fax"
    assert exc.path == "/accounts/self/outbox/abc"
    assert f"HTTP {status}" in str(exc)
    assert "'abc'" in str(exc)
    if isinstance(body, dict) and "error" in body:
        assert exc.error == body["error"]
        assert body["error"] in str(exc)


def test_auth_errors_name_the_scopes_the_operation_needs():
    get = protocol.error_from_response(CONFIG, CALL, 403, {}, b"")
    assert "fax:all:read or fax:fax:read" in str(get)
    put = protocol.update_outbox_fax_call(CONFIG, "abc", "c")
    assert "fax:all:edit or fax:fax:edit" in str(protocol.error_from_response(CONFIG, put, 401, {}, b""))


def test_a_body_echoing_the_token_is_redacted_in_the_error():
    exc = protocol.error_from_response(
        CONFIG, CALL, 400, {}, err({"error": "bad", "description": f"token {TOKEN} rejected"})
    )
    assert TOKEN not in str(exc)
    assert TOKEN not in exc.description


def test_redirect_error_names_target_host_only():
    exc = protocol.error_from_response(CONFIG, CALL, 302, {"Location": "https://evil.example/x?k=v"}, b"")
    assert "evil.example" in str(exc)
    assert "k=v" not in str(exc)


def test_retry_after_seconds_and_http_date():
    assert protocol.parse_retry_after("3") == 3
    assert protocol.parse_retry_after(" 1.5 ") == 1.5
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= protocol.parse_retry_after(date, now=now) <= 31
    assert protocol.parse_retry_after(email.utils.formatdate(now - 30, usegmt=True)) == 0
    assert protocol.parse_retry_after("soon") is None
    assert protocol.parse_retry_after("nan") is None
    assert protocol.parse_retry_after(None) is None
    exc = protocol.error_from_response(CONFIG, CALL, 429, {"Retry-After": "7"}, b"")
    assert exc.retry_after == 7


def test_get_response_parsing():
    body = err({"id": "abc", "uid": "u", "status": "sending"})
    assert protocol.parse_get_response(CONFIG, CALL, 200, {}, body).status == "sending"
    with pytest.raises(FaxPlusResponseError, match="not JSON"):
        protocol.parse_get_response(CONFIG, CALL, 200, {"Content-Type": "text/html"}, b"<html>")
    with pytest.raises(FaxPlusResponseError, match="status"):
        protocol.parse_get_response(CONFIG, CALL, 200, {}, err({"id": "abc", "uid": "u"}))
    with pytest.raises(FaxPlusNotFoundError):
        protocol.parse_get_response(CONFIG, CALL, 404, {}, b"")


def test_retry_decisions():
    retryable = [protocol.error_from_response(CONFIG, CALL, s, {}, b"") for s in (429, 500, 502, 503, 504)]
    assert all(protocol.is_retryable(exc) for exc in retryable)
    assert protocol.is_retryable(protocol.transport_error(CALL, "reset"))
    never = [protocol.error_from_response(CONFIG, CALL, s, {}, b"") for s in (400, 401, 403, 404, 409, 501)]
    assert not any(protocol.is_retryable(exc) for exc in never)
    assert isinstance(protocol.transport_error(CALL, "x"), FaxPlusTransportError)


def test_permanent_errors_are_the_ones_no_retry_can_fix():
    def answer(status, body=b""):
        return protocol.error_from_response(CONFIG, CALL, status, {}, body)

    permanent = [answer(s) for s in (302, 400, 401, 403, 405, 409, 422)]
    permanent += [FaxPlusInputError("bad id"), FaxPlusConfigError("bad extra")]
    assert all(protocol.is_permanent(exc) for exc in permanent)
    passing = [answer(s) for s in (429, 500, 501, 503)] + [
        answer(404),
        answer(400, err({"error": "fax_not_found"})),
    ]
    passing += [protocol.transport_error(CALL, "reset")]
    passing += [protocol._malformed(CALL, 200, "not JSON")]
    assert not any(protocol.is_permanent(exc) for exc in passing)


def test_a_2xx_other_than_200_to_a_get_is_malformed():
    for status in (201, 204):
        with pytest.raises(FaxPlusResponseError, match=f"HTTP {status}.*expected HTTP 200"):
            protocol.parse_get_response(CONFIG, CALL, status, {}, b"")


def test_backoff_grows_is_jittered_capped_and_yields_to_retry_after():
    for attempt in range(1, 12):
        step = min(MAX_BACKOFF, 2 ** (attempt - 1))
        waits = {backoff_seconds(attempt, 1.0) for _ in range(20)}
        assert all(step / 2 <= wait <= step for wait in waits)
        assert len(waits) > 1
    assert backoff_seconds(1, 1.0, retry_after=9) == 9
