from __future__ import annotations

import json
import logging
import pickle
import time
from urllib.parse import quote

import pendulum
import pytest

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
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.models import OutboxStatus
from airflow_provider_faxplus.sandbox import SandboxServer
from tests.conftest import TOKEN


def api_requests(control):
    return [entry for entry in control.requests() if entry["path"].startswith("/v3/")]


def test_get_returns_a_typed_record_with_utc_datetimes(hook, control):
    control.create_fax(id="fx1", tags=["urgent"], comment="first")
    record = hook.get_outbox_fax("fx1")
    assert record.id == "fx1"
    assert record.status is OutboxStatus.SUBMITTED
    assert record.comment.text == "first"
    assert record.comment.tags == ("urgent",)
    for value in (
        record.send_time,
        record.submit_time,
        record.last_updated_status_time,
        record.status_changes[0].at,
    ):
        assert isinstance(value, pendulum.DateTime)
        assert value.utcoffset().total_seconds() == 0
    assert abs((pendulum.now("UTC") - record.submit_time).total_seconds()) < 5
    assert json.loads(json.dumps(record.to_dict()))["id"] == "fx1"


def test_record_follows_the_lifecycle(hook, control):
    control.create_fax(
        id="fx2", lifecycle=[{"status": s, "seconds": 10} for s in ("submitted", "converting", "sending")]
    )
    assert hook.get_outbox_fax("fx2").status is OutboxStatus.SUBMITTED
    control.advance(10)
    record = hook.get_outbox_fax("fx2")
    assert record.status is OutboxStatus.CONVERTING
    assert [str(change.status) for change in record.status_changes] == ["submitted", "converting"]
    control.advance(20)
    with pytest.raises(FaxPlusNotFoundError, match="HTTP 404 fax_not_found"):
        hook.get_outbox_fax("fx2")


def test_update_sends_exactly_the_comment_and_bearer_token(hook, control):
    control.create_fax(id="fx3", tags=["keep"])
    control.requests(clear=True)
    hook.update_outbox_fax("fx3", comment='tag: "ops" ✓\nline two')
    [put] = api_requests(control)
    assert put["method"] == "PUT"
    assert put["path"] == "/v3/accounts/self/outbox/fx3"
    assert json.loads(put["body"]) == {"comment": 'tag: "ops" ✓\nline two'}
    assert put["headers"]["authorization"] == "Bearer <redacted>"
    assert put["headers"]["content-type"].startswith("application/json")
    assert "x-fax-clientid" not in put["headers"]
    assert put["status"] == 204
    assert control.fax("fx3")["comment"] == {"tags": ["keep"], "text": 'tag: "ops" ✓\nline two'}


def test_put_on_a_sending_fax_raises_conflict(hook, control):
    control.create_fax(id="fx4", lifecycle=[{"status": "sending", "seconds": 60}])
    with pytest.raises(FaxPlusConflictError, match="cannot be modified"):
        hook.update_outbox_fax("fx4", comment="late")


def test_one_keep_alive_connection_is_reused(hook, control):
    control.create_fax(id="fx5")
    control.requests(clear=True)
    for _ in range(5):
        hook.get_outbox_fax("fx5")
    hook.update_outbox_fax("fx5", comment="x")
    ports = {entry["client_port"] for entry in api_requests(control)}
    assert len(ports) == 1


def test_rides_out_two_503s_and_a_429_with_retry_after(hook, control, caplog):
    control.create_fax(id="fx6")
    control.add_fault(status=503, times=2)
    control.add_fault(status=429, retry_after="1")
    control.requests(clear=True)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        record = hook.get_outbox_fax("fx6")
    elapsed = time.monotonic() - started
    assert record.id == "fx6"
    assert [entry["status"] for entry in api_requests(control)] == [503, 503, 429, 200]
    assert elapsed >= 1.0  # Retry-After: 1 was honoured
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 3
    assert "attempt 3/5" in retries[-1].getMessage()


def test_retry_after_http_date_is_honoured(hook, control):
    control.create_fax(id="fx6b")
    control.add_fault(
        status=503, retry_after=time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    )
    started = time.monotonic()
    hook.get_outbox_fax("fx6b")
    assert time.monotonic() - started >= 0.9


def test_put_is_retried_too(hook, control):
    control.create_fax(id="fx7")
    control.add_fault(status=502, method="PUT")
    hook.update_outbox_fax("fx7", comment="after a 502")
    assert control.fax("fx7")["comment"]["text"] == "after a 502"


def test_gives_up_after_max_attempts_with_a_clear_message(sandbox, control, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(initial_backoff=0.01, max_attempts=3)
    )
    control.create_fax(id="fx8")
    control.add_fault(status=500, times=10)
    with pytest.raises(FaxPlusServerError, match=r"gave up after 3 attempt\(s\)") as info:
        FaxPlusHook().get_outbox_fax("fx8")
    assert info.value.status == 500
    assert len(api_requests(control)) == 3


def test_retry_after_beyond_the_time_budget_stops_instead_of_sleeping(sandbox, control, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(max_retry_seconds=2))
    control.create_fax(id="fx9")
    control.add_fault(status=429, retry_after="60")
    started = time.monotonic()
    with pytest.raises(FaxPlusRateLimitError, match="gave up after 1 attempt"):
        FaxPlusHook().get_outbox_fax("fx9")
    assert time.monotonic() - started < 2


def test_401_fails_fast_with_the_scope_in_the_message(sandbox, control, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps(
            {"conn_type": "faxplus", "host": sandbox.base_url, "password": "alohi_pat_wrong-token-4242"}
        ),
    )
    control.create_fax(id="fx10")
    with pytest.raises(
        FaxPlusAuthError, match=r"HTTP 401 invalid_token.*fax:all:read or fax:fax:read"
    ) as info:
        FaxPlusHook().get_outbox_fax("fx10")
    assert "alohi_pat_wrong-token-4242" not in str(info.value)
    assert len(api_requests(control)) == 1


def test_403_when_the_token_lacks_the_scope(monkeypatch):
    with SandboxServer(tokens={TOKEN: frozenset({"fax:fax:read"})}) as server:
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", server.connection_json())
        server.client.create_fax(id="fx11")
        hook = FaxPlusHook()
        assert hook.get_outbox_fax("fx11").id == "fx11"
        with pytest.raises(
            FaxPlusAuthError, match=r"HTTP 403 insufficient_scope.*fax:all:edit or fax:fax:edit"
        ):
            hook.update_outbox_fax("fx11", comment="x")


def test_client_id_is_sent_only_when_set(monkeypatch):
    with SandboxServer(token=TOKEN, client_id="APIK-42") as server:
        server.client.create_fax(id="fx12")
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", server.connection_json())
        with pytest.raises(FaxPlusAuthError, match="invalid_client"):
            FaxPlusHook().get_outbox_fax("fx12")
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", server.connection_json(client_id="APIK-42"))
        assert FaxPlusHook().get_outbox_fax("fx12").id == "fx12"
        headers = [entry["headers"] for entry in server.client.requests()]
        assert "x-fax-clientid" not in headers[0]
        assert headers[1]["x-fax-clientid"] == "APIK-42"


def test_not_found_as_400_is_understood(hook, control):
    control.settings(not_found_status=400)
    with pytest.raises(FaxPlusNotFoundError, match="HTTP 400 fax_not_found"):
        hook.get_outbox_fax("never-existed")


def test_invalid_user_is_a_plain_api_error(hook, control):
    control.create_fax(id="fx13")
    with pytest.raises(FaxPlusAPIError, match="HTTP 400 invalid_user_id") as info:
        hook.get_outbox_fax("fx13", user_id="stranger")
    assert not isinstance(info.value, FaxPlusNotFoundError)


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ({"status": 200, "body": "<html>oops</html>", "content_type": "text/html"}, "not JSON"),
        ({"status": 200, "body": '{"id": "fx14", "uid": "u"'}, "not JSON"),
        ({"status": 200, "body": '{"id": "fx14", "uid": "u"}'}, "status"),
    ],
)
def test_malformed_200_fails_fast_without_retry(hook, control, fault, match):
    control.create_fax(id="fx14")
    control.add_fault(**fault)
    with pytest.raises(FaxPlusResponseError, match=match):
        hook.get_outbox_fax("fx14")
    assert len(api_requests(control)) == 1


def test_dropped_connection_is_retried(hook, control):
    control.create_fax(id="fx15")
    control.add_fault(drop=True)
    assert hook.get_outbox_fax("fx15").id == "fx15"
    assert len(api_requests(control)) == 2


def test_read_timeout_is_retried_then_reported(sandbox, control, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        sandbox.connection_json(timeout=0.3, initial_backoff=0.01, max_attempts=2),
    )
    control.create_fax(id="fx16")
    control.add_fault(delay=1.0, times=1)
    assert FaxPlusHook().get_outbox_fax("fx16").id == "fx16"
    control.add_fault(delay=1.0, times=2)
    with pytest.raises(FaxPlusTransportError, match=r"no answer within 0.3 s.*gave up after 2"):
        FaxPlusHook().get_outbox_fax("fx16")


def test_connection_refused_is_a_transport_error(monkeypatch):
    with SandboxServer() as server:
        dead = server.connection_json(initial_backoff=0.01, max_attempts=2)
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", dead)
    with pytest.raises(FaxPlusTransportError, match="ConnectionError"):
        FaxPlusHook().get_outbox_fax("anything")


def test_redirect_is_not_followed_and_the_token_stays_home(hook, control):
    with SandboxServer(token=TOKEN) as elsewhere:
        control.add_fault(status=302, headers={"Location": elsewhere.base_url + "/accounts/self/outbox/x"})
        with pytest.raises(FaxPlusAPIError, match=r"Redirects are not followed.*127.0.0.1"):
            hook.get_outbox_fax("x")
        assert elsewhere.client.requests() == []


def test_bad_ids_are_refused_before_any_request(hook, control):
    for bad in ("", "a/b", "..", "a\nb"):
        with pytest.raises(FaxPlusInputError):
            hook.get_outbox_fax(bad)
        with pytest.raises(FaxPlusInputError):
            hook.update_outbox_fax("ok", comment="c", user_id=bad)
    with pytest.raises(FaxPlusInputError, match="comment must be a string"):
        hook.update_outbox_fax("ok", comment=None)
    assert api_requests(control) == []


def test_odd_but_valid_ids_are_encoded_on_the_wire(hook, control):
    control.requests(clear=True)
    for odd in ("a?b", "a#b", "a%2Fb", "fäx"):
        with pytest.raises(FaxPlusNotFoundError):
            hook.get_outbox_fax(odd)
    raw = [entry["raw_path"] for entry in api_requests(control)]
    assert raw == [
        f"/v3/accounts/self/outbox/{quote(odd, safe='')}" for odd in ("a?b", "a#b", "a%2Fb", "fäx")
    ]


def test_test_connection_proves_the_token(hook, monkeypatch, sandbox):
    ok, message = hook.test_connection()
    assert ok, message
    assert "accepted the API token" in message
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps({"conn_type": "faxplus", "host": sandbox.base_url, "password": "alohi_pat_nope"}),
    )
    ok, message = FaxPlusHook().test_connection()
    assert not ok
    assert "401" in message
    assert "alohi_pat_nope" not in message


def test_unknown_extra_fails_before_any_request(sandbox, control, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(headers={"X-A": "1"}))
    hook = FaxPlusHook()
    for use in (lambda: hook.config, lambda: hook.get_outbox_fax("f1"), lambda: hook.session):
        with pytest.raises(
            FaxPlusConfigError, match=r"connection 'faxplus_default'.*unknown extra.*'headers'"
        ):
            use()
    assert "faxplus_default" in repr(hook)
    assert control.requests() == []


def test_wrong_connection_type_is_refused(sandbox, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps({"conn_type": "http", "host": sandbox.base_url, "password": TOKEN}),
    )
    with pytest.raises(Exception, match="expected 'faxplus'"):
        FaxPlusHook().get_outbox_fax("f1")


@pytest.mark.parametrize(
    ("connection", "says"),
    [
        (
            {"password": ""},
            "This Fax.Plus connection: the API token is empty: put a Fax.Plus Personal Access",
        ),
        ({"password": TOKEN, "extra": {"timeout": "soon"}}, "extra 'timeout' must be a number"),
        ({"password": "alohi_pat_bad"}, "Check the API token of the connection"),
    ],
)
def test_test_connection_speaks_of_this_connection_not_its_temporary_id(
    sandbox, monkeypatch, connection, says
):
    # Airflow tests a form under a random id such as 'amNz2fne'.
    monkeypatch.setenv(
        "AIRFLOW_CONN_AMNZ2FNE", json.dumps({"conn_type": "faxplus", "host": sandbox.base_url, **connection})
    )
    ok, message = FaxPlusHook(faxplus_conn_id="amNz2fne").test_connection()
    assert not ok
    assert says in message
    assert "amNz2fne" not in message
    assert "password" not in message.replace("API token field (password)", "")


def test_uri_form_connection(sandbox, control, monkeypatch):
    uri = f"faxplus://:{quote(TOKEN, safe='')}@{quote(sandbox.base_url, safe='')}?max_attempts=2"
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_URI", uri)
    control.create_fax(id="fx17")
    hook = FaxPlusHook(faxplus_conn_id="faxplus_uri")
    assert hook.config.base_url == sandbox.base_url
    assert hook.config.max_attempts == 2
    assert hook.get_outbox_fax("fx17").id == "fx17"


def test_token_never_in_repr_logs_or_errors(hook, control, caplog):
    control.create_fax(id="fx18")
    control.add_fault(status=503)
    control.add_fault(status=400, body=json.dumps({"error": "echo", "description": f"got Bearer {TOKEN}"}))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(FaxPlusAPIError) as info:
            hook.get_outbox_fax("fx18")
        hook.get_outbox_fax("fx18")
    texts = [
        repr(hook),
        repr(hook.config),
        repr(hook.session),
        repr(hook.session.auth),
        str(info.value),
        repr(info.value),
        caplog.text,
        str(pickle.loads(pickle.dumps(info.value)).__dict__),
    ]
    for text in texts:
        assert TOKEN not in text
    assert "HTTP 200" in caplog.text  # the DEBUG request line was emitted


def test_exceptions_survive_pickling(hook, control):
    with pytest.raises(FaxPlusNotFoundError) as info:
        hook.get_outbox_fax("gone")
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is FaxPlusNotFoundError
    assert (clone.status, clone.outbox_fax_id, str(clone)) == (404, "gone", str(info.value))


def test_overrides_on_the_hook(faxplus_conn):
    hook = FaxPlusHook(timeout=2, max_attempts=1, max_retry_seconds=0)
    assert (hook.config.timeout, hook.config.max_attempts, hook.config.max_retry_seconds) == (2, 1, 0)
