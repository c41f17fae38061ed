from __future__ import annotations

import email.utils
import json
import re
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
        ("..", "change the request path"),
        (".", "change the request path"),
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


def test_408_is_transient_like_429_and_5xx():
    exc = protocol.error_from_response(CONFIG, CALL, 408, {"Retry-After": "2"}, b"")
    assert protocol.is_retryable(exc)
    assert not protocol.is_permanent(exc)
    assert exc.retry_after == 2


@pytest.mark.parametrize("attempt", [1024, 1025, 10**6, 10**30])
def test_backoff_is_total_for_any_attempt_number(attempt):
    assert MAX_BACKOFF / 2 <= backoff_seconds(attempt, 1.0) <= MAX_BACKOFF
    assert backoff_seconds(attempt, 0.0) == 0.0
    assert backoff_seconds(attempt, 3600.0) <= MAX_BACKOFF


def test_one_retry_after_can_impose_at_most_the_cap_and_says_so(caplog):
    from airflow_provider_faxplus.retry import MAX_RETRY_AFTER

    week = 7 * 24 * 3600.0
    with caplog.at_level("WARNING", logger="airflow_provider_faxplus.retry"):
        assert backoff_seconds(1, 1.0, retry_after=week) == MAX_RETRY_AFTER
    assert f"asked to wait {week:.0f} s (Retry-After); waiting at most {MAX_RETRY_AFTER:g} s" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="airflow_provider_faxplus.retry"):
        assert backoff_seconds(1, 1.0, retry_after=MAX_RETRY_AFTER) == MAX_RETRY_AFTER
    assert caplog.text == ""


@pytest.mark.parametrize("value", [".", ".."])
@pytest.mark.parametrize("field", ["outbox_fax_id", "user_id"])
def test_dot_segments_are_refused_as_ids(field, value):
    kwargs = {"outbox_fax_id": "f1", "user_id": "self", field: value}
    with pytest.raises(FaxPlusInputError, match=f"{field} '{re.escape(value)}' must not be"):
        protocol.get_outbox_fax_call(CONFIG, kwargs["outbox_fax_id"], kwargs["user_id"])


def _token_leaks(text: str, token: str, shortest: int = 4) -> list[str]:
    """Every piece of ``token`` of at least ``shortest`` characters that appears in ``text``."""
    return [
        token[start : start + length]
        for length in range(shortest, len(token) + 1)
        for start in range(len(token) - length + 1)
        if token[start : start + length] in text
    ]


LONG_TOKEN = "alohi_pat_" + "Zq8Kx3Vw9Ty2Lm4Np6Rs1Uv5Wx7Yz0AbCdEfGhIjKlMnOpQrStUvWx"[:60]


@pytest.mark.parametrize("limit_name", ["MAX_ERROR_CHARS", "MAX_DESCRIPTION_CHARS"])
def test_a_token_at_any_offset_around_the_cut_never_leaks_in_part(limit_name):
    limit = getattr(protocol, limit_name)
    config = FaxPlusConfig(base_url="https://api.example.com/v3", token=LONG_TOKEN)
    checked = 0
    for offset in range(limit - len(LONG_TOKEN) - 2, limit + 3):
        text = "x" * offset + LONG_TOKEN + " y" * 200
        bodies = []
        if limit_name == "MAX_ERROR_CHARS":
            # A non-JSON page (cut to MAX_ERROR_CHARS) and the JSON error field.
            bodies += [text.encode(), err({"error": text, "description": "d"})]
        else:
            bodies += [err({"error": "e", "description": text})]
        for body in bodies:
            exc = protocol.error_from_response(config, CALL, 403, {}, body)
            for part in (str(exc), exc.error or "", exc.description or ""):
                assert _token_leaks(part, LONG_TOKEN) == [], (offset, part[-80:])
            checked += 1
    assert checked > 60


def test_redaction_leaves_text_that_only_resembles_the_token_alone():
    assert protocol.redact_and_cut("short text", LONG_TOKEN, 200) == "short text"
    assert protocol.redact_and_cut("x" * 300, LONG_TOKEN, 200) == "x" * 200
    assert protocol.redact_and_cut("x" * 195 + LONG_TOKEN[:10], LONG_TOKEN, 200) == "x" * 195 + "***"


def test_certificate_failures_are_told_apart_from_other_tls_trouble():
    import ssl

    cert = ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
    wrapped = OSError("wrapper")
    wrapped.__cause__ = cert
    assert protocol.is_certificate_failure(cert)
    assert protocol.is_certificate_failure(wrapped)
    assert protocol.is_certificate_failure(Exception(Exception(cert)))
    assert not protocol.is_certificate_failure(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))
    assert not protocol.is_certificate_failure(ConnectionResetError())


def test_a_tls_error_is_permanent_and_names_the_ca_bundle_setting():
    from airflow_provider_faxplus.config import TlsSettings

    exc = protocol.tls_error(
        CALL, TlsSettings(True, "/etc/ca.pem", "the connection's extra 'ca_bundle'"), "x"
    )
    assert protocol.is_permanent(exc)
    assert not protocol.is_retryable(exc)
    assert "extra 'ca_bundle'" in str(exc)
    assert "'verify'" in str(exc)
