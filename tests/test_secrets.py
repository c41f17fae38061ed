"""Secrets and hostile input (issue 21): one test, or a few, per finding of the security review, each
over real HTTP where a real part can reach. Redaction, proxies and loopback rules are exercised through the
paths users hit: the hook, the trigger, the token endpoint, the faxplus-oauth CLI and the sandbox."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import quote, quote_plus

import pytest
import requests

from airflow_provider_faxplus import oauth
from airflow_provider_faxplus.config import (
    FaxPlusConfig,
    config_from_connection,
    is_loopback,
    normalize_base_url,
)
from airflow_provider_faxplus.exceptions import (
    FaxPlusAPIError,
    FaxPlusAuthError,
    FaxPlusConfigError,
    FaxPlusInputError,
    FaxPlusResponseError,
)
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger
from tests.conftest import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI
from tests.test_oauth import collect, oauth_cli, seen_trigger, use_oauth

SECRET = "alohi_pat_PASTED-sentinel-7c1e"  # what a person pastes into the wrong field


def encodings(secret: str) -> list[str]:
    """The forms a leak takes: as is, percent-encoded, base64 and a prefix."""
    return [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        base64.b64encode(secret.encode()).decode(),
        secret[:12],
    ]


def assert_none_of(text: str, *secrets: str) -> None:
    for secret in secrets:
        for form in encodings(secret):
            assert form not in text, (form, text)


# 1. faxplus-oauth follows the hook's proxy rule ------------------------------------------------------


class FakeProxy:
    """A TCP listener that records what a client sends it (a proxy must see nothing) and answers 502."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.seen.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def proxy_env(variable: str, url: str) -> dict[str, str]:
    """Our environment with ``variable`` the only proxy setting, and the client secret."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    return {**env, variable: url, "FAXPLUS_CLIENT_SECRET": CLIENT_SECRET}


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
def test_cli_sends_the_client_secret_through_no_environment_proxy(oauth_sandbox, control, variable):
    proxy = FakeProxy()
    try:
        code = control.mint_code(CLIENT_ID, REDIRECT_URI)
        done = oauth_cli(oauth_sandbox.token_url, stdin=code + "\n", env=proxy_env(variable, proxy.url))
    finally:
        proxy.close()
    assert proxy.seen == []
    assert done.returncode == 0, done.stderr
    assert [entry["grant_type"] for entry in control.token_requests()] == ["authorization_code"]


@pytest.mark.parametrize("variable", ["ALL_PROXY", "all_proxy", "HTTPS_PROXY"])
def test_cli_opens_no_proxy_tunnel_to_an_https_loopback_token_url(variable):
    proxy = FakeProxy()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: a refused connection, quickly
    port = closed.getsockname()[1]
    try:
        token_url = f"https://127.0.0.1:{port}/token"
        done = oauth_cli(token_url, stdin="code-123\n", env=proxy_env(variable, proxy.url))
    finally:
        proxy.close()
        closed.close()
    assert proxy.seen == []  # no CONNECT: loopback is never proxied
    assert done.returncode == 1
    assert "refused" in done.stderr.lower() or "connection" in done.stderr.lower(), done.stderr
    assert CLIENT_SECRET not in done.stderr


def test_cli_warns_that_a_code_on_the_command_line_is_visible(oauth_sandbox, control):
    code = control.mint_code(CLIENT_ID, REDIRECT_URI)
    done = oauth_cli(oauth_sandbox.token_url, "--code", code)
    assert done.returncode == 0, done.stderr
    assert "--code is visible" in done.stderr


# 2. Loopback is a name, never a DNS answer -------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost.", "LOCALHOST.", "localhost.localdomain", "127.0.0.1.nip.io"])
def test_a_name_that_dns_resolves_is_not_loopback(host):
    assert not is_loopback(host)
    for what in ("base URL", "token URL"):
        with pytest.raises(FaxPlusConfigError, match="plain http"):
            normalize_base_url(f"http://{host}:8080/v3", what=what)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "[::1]"])
def test_literal_loopback_and_localhost_exactly_may_be_plain_http(host):
    assert normalize_base_url(f"http://{host}:8080/v3") == f"http://{host}:8080/v3"


def test_trigger_refuses_a_dns_loopback_name_as_a_config_event(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps({"conn_type": "faxplus", "host": "http://localhost.:1/v3", "password": SECRET}),
    )
    [event] = asyncio.run(asyncio.wait_for(collect(OutboxFaxTrigger(outbox_fax_id="f1")), 30))
    assert (event["status"], event["kind"]) == ("error", "config")
    assert "plain http" in event["message"]
    assert_none_of(event["message"], SECRET)


# 3. Access tokens echoed by the API ---------------------------------------------------------------------


def _echoing_401(control, token: str) -> None:
    description = (
        f"token {token} refused; b64 {base64.b64encode(token.encode()).decode()}; url {quote(token, safe='')}"
    )
    body = json.dumps({"error": "invalid_token", "description": description})
    control.add_fault(status=401, times=4, path_contains="/outbox/", body=body)


def test_an_access_token_echoed_by_the_api_is_redacted_in_hook_errors(
    oauth_sandbox, control, refresh_token, monkeypatch
):
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="f1")
    hook = FaxPlusHook()
    hook.get_outbox_fax("f1")
    [issued] = list(oauth_sandbox.state.oauth.access_tokens)
    _echoing_401(control, issued)
    with pytest.raises(FaxPlusAuthError) as info:
        hook.get_outbox_fax("f1")
    assert "refused" in str(info.value)  # the description is there, its token is not
    ok, message = FaxPlusHook().test_connection()
    assert not ok
    for text in (str(info.value), info.value.description or "", message):
        assert_none_of(text, *oauth_sandbox.state.oauth.access_tokens, refresh_token, CLIENT_SECRET)
    hook.close()


def test_an_access_token_echoed_by_the_api_is_redacted_in_the_trigger_event(
    oauth_sandbox, control, refresh_token, monkeypatch
):
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="f1")
    hook = FaxPlusHook()
    hook.get_outbox_fax("f1")
    hook.close()
    [issued] = list(oauth_sandbox.state.oauth.access_tokens)
    _echoing_401(control, issued)
    trigger = seen_trigger("f1", poke_interval=0.1)
    trigger.shared_poll = False
    [event] = asyncio.run(asyncio.wait_for(collect(trigger), 60))
    assert (event["status"], event["kind"]) == ("error", "auth")
    assert "refused" in event["message"]
    assert_none_of(json.dumps(event), *oauth_sandbox.state.oauth.access_tokens, refresh_token)


# 4. Token-endpoint errors: encoded secrets --------------------------------------------------------------

ODD_REFRESH = "rt/+=Q9-sentinel~refresh.token_8842"


def test_token_endpoint_errors_redact_encoded_secrets():
    config = FaxPlusConfig(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=ODD_REFRESH,
        token_url="https://accounts.example/token",
    )
    call = oauth.refresh_call(config, ODD_REFRESH)
    basic = call.headers["Authorization"]
    form = call.body.decode()
    assert quote_plus(ODD_REFRESH) in form  # the echo below is what was really sent
    echoes = {
        "basic": f"bad header {basic}",
        "form": f"could not parse {form}",
        "prefix": f"refresh token {ODD_REFRESH[:14]}... is unknown",
        "json-escaped": json.dumps({"got": ODD_REFRESH})[1:-1],
        "base64": base64.b64encode(f"refresh_token={ODD_REFRESH}".encode()).decode(),
    }
    for name, echo in echoes.items():
        for body in (json.dumps({"error": "invalid_request", "error_description": echo}), echo):
            with pytest.raises(FaxPlusAuthError) as info:
                oauth.parse_token_response(call, 400, {}, body.encode())
            for text in (str(info.value), info.value.description or ""):
                assert_none_of(text, ODD_REFRESH, CLIENT_SECRET)
                assert basic.split()[1] not in text, name
                assert quote_plus(ODD_REFRESH) not in text, name
                assert ODD_REFRESH[:10] not in text, name


def test_encoded_secrets_are_registered_with_the_masker(oauth_sandbox, refresh_token, monkeypatch):
    try:
        from airflow.sdk.log import redact
    except ImportError:  # Airflow 2.11
        from airflow.utils.log.secrets_masker import redact
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    FaxPlusHook().close()
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    masked = redact(f"Authorization: Basic {basic}; refresh_token={quote(refresh_token, safe='')}")
    assert basic not in masked
    assert refresh_token not in masked


def test_the_redactor_catches_fragments_and_leaves_other_text_alone():
    from airflow_provider_faxplus.redaction import Redactor

    redact = Redactor([ODD_REFRESH], [(CLIENT_ID, CLIENT_SECRET)])
    assert redact("HTTP 400 invalid_grant") == "HTTP 400 invalid_grant"
    assert ODD_REFRESH[5:20] not in redact(f"x {ODD_REFRESH[5:20]} y")
    assert redact("x" * 300, 200) == "x" * 200
    # A cut that leaves the first characters of a secret at the end.
    assert redact("x" * 195 + ODD_REFRESH[:6], 200) == "x" * 195 + "***"
    assert repr(redact).startswith("Redactor(")
    assert ODD_REFRESH not in repr(redact)


# 5. Access tokens with control characters ---------------------------------------------------------------


def test_an_access_token_with_control_characters_is_a_clear_error(
    oauth_sandbox, control, refresh_token, monkeypatch
):
    bad = "oauth_access_BAD\x01\r\nX-Injected:1"  # no space: that alone was refused already
    control.add_fault(
        status=200,
        path_contains="/token",
        times=5,
        body=json.dumps({"access_token": bad, "token_type": "Bearer", "expires_in": 3600}),
        content_type="application/json",
    )
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    hook = FaxPlusHook()
    with pytest.raises(FaxPlusResponseError, match="without a usable access_token") as info:
        hook.get_outbox_fax("f1")
    assert "oauth_access_BAD" not in str(info.value)
    assert [entry["path"] for entry in control.requests()] == ["/token"]  # the API never saw it
    hook.close()


# 6. The sandbox's request log on the fault path ---------------------------------------------------------


@pytest.mark.parametrize("fault", [{"status": 503}, {"drop": True}, {"status": 200, "body": "{}"}])
def test_the_sandbox_log_never_keeps_a_refresh_token_even_when_a_fault_answers(
    oauth_sandbox, control, refresh_token, monkeypatch, fault
):
    control.add_fault(path_contains="/token", times=1, **fault)
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    hook = FaxPlusHook()
    with pytest.raises(Exception):  # noqa: B017, PT011 - the fault's answer, whatever it is
        hook.get_outbox_fax("nope")
    hook.close()
    entries = control.token_requests()
    assert entries
    assert entries[0].get("fault")
    assert "grant_type=refresh_token" in entries[0]["body"]  # the log keeps the form, not the secret
    assert_none_of(json.dumps(control.requests()), refresh_token, CLIENT_SECRET)


# 7. The sandbox's control API on a network address ------------------------------------------------------


def test_a_sandbox_on_a_network_address_needs_a_control_token():
    with pytest.raises(ValueError, match="control token"):
        SandboxServer(host="0.0.0.0")  # noqa: S104 - the case under test


def test_the_control_token_guards_every_control_request_but_health():
    control_token = "ctl-sentinel-5b1f0a"
    with SandboxServer(host="0.0.0.0", control_token=control_token) as server:  # noqa: S104
        root = server.root_url
        session = requests.Session()
        session.trust_env = False
        for method, path in (
            ("GET", "/faxes"),
            ("POST", "/oauth/refresh_tokens"),
            ("GET", "/requests"),
            ("POST", "/reset"),
        ):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": control_token}):
                answer = session.request(method, f"{root}/_sandbox{path}", headers=headers, timeout=10)
                assert answer.status_code == 401, (method, path, headers)
                assert control_token not in answer.text
        assert session.get(f"{root}/_sandbox/health", timeout=10).status_code == 200
        assert server.client is not None
        server.client.create_fax(id="f1")  # the in-process client carries the token
        assert [fax["id"] for fax in server.client.faxes()] == ["f1"]
        answer = session.get(
            f"{server.base_url}/accounts/self/outbox/f1",
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=10,
        )
        assert answer.status_code == 200  # the API itself is unchanged
        session.close()


def _sandbox_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_faxplus.sandbox.cli", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sandbox_cli_refuses_a_network_address_without_a_control_token_and_a_token_in_argv():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAXPLUS_SANDBOX_")}
    for args, message in (
        (("--host", "0.0.0.0"), "FAXPLUS_SANDBOX_CONTROL_TOKEN"),  # noqa: S104
        (("--token", SECRET), "--token is not accepted"),
    ):
        proc = _sandbox_cli(*args, env=env)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()  # a sandbox that started after all must not outlive the test
            proc.communicate()
        assert proc.returncode == 2, (args, out, err)
        assert message in err
        assert SECRET not in out + err


def test_sandbox_cli_reads_its_tokens_from_the_environment_and_files(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("sbx-file-token-91d2\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAXPLUS_SANDBOX_")},
        "FAXPLUS_SANDBOX_CONTROL_TOKEN": "ctl-env-token-44ab",
    }
    proc = _sandbox_cli("--host", "0.0.0.0", "--token-file", str(token_file), "--seed", "1", env=env)  # noqa: S104
    try:
        lines: list[str] = []
        while not any(line.startswith("seeded outbox fax") for line in lines):
            line = proc.stdout.readline() if proc.stdout else ""
            assert line, f"the sandbox exited early: {lines}"
            lines.append(line.strip())
        [listening] = [line for line in lines if line.startswith("Fax.Plus sandbox listening on ")]
        base_url = listening.rsplit(" ", 1)[1]
        root = base_url.rsplit("/v3", 1)[0]
        fax_id = lines[-1].rsplit(" ", 1)[1]
        session = requests.Session()
        session.trust_env = False
        assert session.get(f"{root}/_sandbox/faxes", timeout=10).status_code == 401
        listed = session.get(
            f"{root}/_sandbox/faxes", headers={"Authorization": "Bearer ctl-env-token-44ab"}, timeout=10
        )
        assert [fax["id"] for fax in listed.json()] == [fax_id]
        answer = session.get(
            f"{base_url}/accounts/self/outbox/{fax_id}",
            headers={"Authorization": "Bearer sbx-file-token-91d2"},
            timeout=10,
        )
        assert answer.status_code == 200
        session.close()
        assert not any("ctl-env-token-44ab" in line or "sbx-file-token-91d2" in line for line in lines)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# 8. A secret pasted into the wrong field is never echoed ------------------------------------------------


def _config(host: str | None = None, **extra: object) -> FaxPlusConfig:
    return config_from_connection(
        conn_id="c", host=host, password="tok-123456", login=None, schema=None, port=None, extra=extra
    )


@pytest.mark.parametrize(
    ("host", "extra", "field"),
    [
        (None, {"timeout": SECRET}, "'timeout'"),
        (None, {"max_attempts": SECRET}, "'max_attempts'"),
        (None, {"initial_backoff": SECRET}, "'initial_backoff'"),
        (None, {"verify": SECRET}, "'verify'"),
        (None, {"ca_bundle": SECRET}, "'ca_bundle'"),
        (None, {"token_url": SECRET}, "token URL"),
        (f"https://restapi.fax.plus:{SECRET}/v3", {}, "base URL"),
        (f"https://restapi.fax.plus:{SECRET}", {}, "base URL"),
        (SECRET, {}, "base URL"),
        (
            None,
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": "rt-1234567",
                "token_url": f"https://accounts.fax.plus:{SECRET}/token",
            },
            "token URL",
        ),
    ],
)
def test_a_secret_in_the_wrong_field_is_named_never_echoed(host, extra, field):
    with pytest.raises(FaxPlusConfigError) as info:
        _config(host, **extra)
    message = str(info.value)
    assert field in message
    assert_none_of(message, SECRET)


def test_numbers_are_still_shown():
    with pytest.raises(FaxPlusConfigError, match="got -5"):
        _config(timeout="-5")


# 9. Bad input gets a clear error ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([1, 2], "must be a JSON object, got a list"),
        ("not json {", "is not valid JSON"),
        ('"a string"', "must be a JSON object, got a string"),
    ],
)
def test_an_extra_that_is_no_json_object_is_a_clear_error(monkeypatch, extra, message):
    # A JSON connection keeps a string extra as is (Airflow's extra_dejson then gives {} and logs it).
    raw = json.dumps({"conn_type": "faxplus", "password": SECRET, "extra": extra})
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", raw)
    hook = FaxPlusHook()
    with pytest.raises(FaxPlusConfigError, match=message) as info:
        hook.get_outbox_fax("f1")
    assert_none_of(str(info.value), SECRET)
    ok, text = hook.test_connection()
    assert not ok
    assert message in text


def test_a_trigger_reports_a_non_object_extra_as_a_config_event(monkeypatch):
    raw = json.dumps({"conn_type": "faxplus", "password": SECRET, "extra": [1]})
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", raw)
    [event] = asyncio.run(asyncio.wait_for(collect(OutboxFaxTrigger(outbox_fax_id="f1")), 30))
    assert (event["status"], event["kind"]) == ("error", "config")
    assert "must be a JSON object" in event["message"]


def test_a_lone_surrogate_is_an_input_error_before_any_request(hook, control):
    for call in (
        lambda: hook.get_outbox_fax("f\udcff"),
        lambda: hook.get_outbox_fax("f1", user_id="\udcff"),
        lambda: hook.update_outbox_fax("f1", comment="bad \udcff comment"),
        lambda: hook.cancel_outbox_fax("\udcff"),
        lambda: hook.send_fax("+15551234567", ["/transient-1"], comment="\udcff"),
    ):
        with pytest.raises(FaxPlusInputError, match="lone surrogate"):
            call()
    assert control.requests() == []


# Also seen: answers are read up to a size limit per operation --------------------------------------------


def test_an_oversized_api_answer_is_refused_by_the_hook_and_the_trigger(hook, control, faxplus_conn):
    from airflow_provider_faxplus.protocol import MAX_ANSWER_BYTES

    control.create_fax(id="f1")
    huge = json.dumps({"id": "f1", "padding": "x" * (MAX_ANSWER_BYTES + 10)})
    control.add_fault(status=200, path_contains="/outbox/f1", times=2, body=huge)
    with pytest.raises(FaxPlusResponseError, match=f"larger than {MAX_ANSWER_BYTES} bytes"):
        hook.get_outbox_fax("f1")
    trigger = OutboxFaxTrigger(outbox_fax_id="f1", poke_interval=0.1, shared_poll=False)
    [event] = asyncio.run(asyncio.wait_for(collect(trigger), 30))
    assert (event["status"], event["kind"]) == ("error", "api")
    assert f"larger than {MAX_ANSWER_BYTES} bytes" in event["message"]
    assert hook.get_outbox_fax("f1").id == "f1"  # the limit is per answer; a normal one still reads


def test_an_oversized_token_answer_is_refused(oauth_sandbox, control, refresh_token, monkeypatch):
    huge = json.dumps({"access_token": "a" * (oauth.MAX_TOKEN_ANSWER_BYTES + 10), "token_type": "Bearer"})
    control.add_fault(status=200, path_contains="/token", times=1, body=huge)
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    hook = FaxPlusHook()
    with pytest.raises(FaxPlusResponseError, match=f"larger than {oauth.MAX_TOKEN_ANSWER_BYTES} bytes"):
        hook.get_outbox_fax("f1")
    hook.close()


# Also seen: allowed_roots for files chosen by whoever triggers the DAG ----------------------------------


def test_allowed_roots_refuse_paths_outside_them_symlinks_and_dot_dots_included(tmp_path):
    from airflow_provider_faxplus.files import file_source

    inside = tmp_path / "faxes"
    inside.mkdir()
    (inside / "ok.pdf").write_bytes(b"%PDF-1.4 ok")
    outside = tmp_path / "secret.pdf"
    outside.write_bytes(b"%PDF-1.4 secret")
    (inside / "link.pdf").symlink_to(outside)
    roots = [str(inside)]
    assert file_source(str(inside / "ok.pdf"), allowed_roots=roots).size == len(b"%PDF-1.4 ok")
    assert file_source(b"%PDF", "a.pdf", allowed_roots=roots).size == 4  # bytes are no path
    for refused in (outside, inside / "link.pdf", inside / ".." / "secret.pdf", "s3://bucket/x.pdf"):
        with pytest.raises(FaxPlusInputError, match="outside allowed_roots"):
            file_source(str(refused), allowed_roots=roots)
    assert file_source(str(outside)).size > 0  # without allowed_roots nothing changes


def test_send_operator_with_allowed_roots_fails_before_any_request(tmp_path, faxplus_conn, control):
    from types import SimpleNamespace

    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_faxplus.operators.send import SendFaxOperator

    outside = tmp_path / "secret.pdf"
    outside.write_bytes(b"%PDF-1.4 secret")
    (tmp_path / "faxes").mkdir()
    operator = SendFaxOperator(
        task_id="send", to="+15551234567", files=[str(outside)], allowed_roots=[str(tmp_path / "faxes")]
    )
    # The check runs before the task state store is read: a bare task instance is enough.
    ti = SimpleNamespace(dag_id="d", task_id="send", run_id="r", map_index=-1)
    with pytest.raises(AirflowFailException, match="outside allowed_roots"):
        operator.execute({"ti": ti})
    assert control.requests() == []
    with pytest.raises(ValueError, match="allowed_roots must be a list"):
        SendFaxOperator(task_id="s2", to="+1", files=[], allowed_roots="/data")


# Review 21 -------------------------------------------------------------------------------------------------
# r2. A 200 from the token endpoint whose token_type / expires_in echo what the call sent.


@pytest.mark.parametrize("field", ["token_type", "expires_in"])
def test_a_token_answer_200_echoing_the_call_s_secrets_is_redacted(caplog, field):
    config = FaxPlusConfig(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=ODD_REFRESH,
        token_url="https://accounts.example/token",
    )
    call = oauth.refresh_call(config, ODD_REFRESH)
    basic = call.headers["Authorization"].split()[1]
    code = "code-sentinel-55aa"
    exchange = oauth.authorization_code_call(call.url, CLIENT_ID, CLIENT_SECRET, code, REDIRECT_URI)
    for echo in (f"refresh_token={ODD_REFRESH}", f"client {CLIENT_ID}:{CLIENT_SECRET}", f"Basic {basic}"):
        for each, secrets in ((call, (ODD_REFRESH, CLIENT_SECRET)), (exchange, (code, CLIENT_SECRET))):
            answer: dict[str, object] = {"access_token": "oauth_access_0123", "token_type": "Bearer"}
            answer[field] = f"{echo} {code}"
            caplog.clear()
            if field == "token_type":
                with pytest.raises(FaxPlusResponseError, match="is not Bearer") as info:
                    oauth.parse_token_response(each, 200, {}, json.dumps(answer).encode())
                text = str(info.value)
            else:
                oauth.parse_token_response(each, 200, {}, json.dumps(answer).encode())
                text = caplog.text
                assert "expires_in" in text
            assert_none_of(text, *secrets)
            assert basic not in text


# r4. A transport error that quotes a token right where the message is cut.


class EchoingServer:
    """Answers every request with ``pad`` filler bytes and the Bearer token it was sent: a broken status
    line that the client library quotes in its error."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.pad = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    request = conn.recv(65536)
                    token = request.split(b"Authorization: Bearer ", 1)[1].split(b"\r\n", 1)[0]
                    conn.sendall(b"X" * self.pad + token + b"\r\n\r\n")
                except (OSError, IndexError):
                    pass

    def close(self) -> None:
        self.sock.close()


def test_a_transport_error_cut_never_leaves_the_start_of_a_token(monkeypatch):
    token = "alohi_pat_Q7wErTy9UiOp3AsDfGhJkL2zXcVbNm"
    server = EchoingServer()
    extra = {"max_attempts": 1, "timeout": 5}
    value = {"conn_type": "faxplus", "host": f"http://127.0.0.1:{server.port}/v3", "password": token}
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", json.dumps({**value, "extra": extra}))
    cut = 0
    try:
        for pad in range(200, 300):
            server.pad = pad
            hook = FaxPlusHook()
            with pytest.raises(Exception) as info:  # noqa: PT011 - whichever transport error
                hook.get_outbox_fax("f1")
            hook.close()
            text = str(info.value)
            cut += "..." in text
            for length in range(3, len(token) + 1):
                assert token[:length] not in text, (pad, text)
    finally:
        server.close()
    assert cut  # some of the offsets did meet the cut


# r5. The sandbox's request log while a late fault waits, and Authorization values of any shape.


def test_the_sandbox_log_redacts_a_token_request_before_a_late_fault_answers(
    oauth_sandbox, control, refresh_token
):
    control.add_fault(path_endswith="/token", late=True, delay=5)
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    session = requests.Session()
    session.trust_env = False
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    post = threading.Thread(
        target=session.post,
        args=(oauth_sandbox.token_url,),
        kwargs={"data": form, "headers": {"Authorization": f"Basic {basic}"}, "timeout": 30},
    )
    post.start()
    try:
        # Wait for the body to be logged: the fault then holds the request for its delay.
        for _ in range(500):
            entries = control.requests()
            if entries and entries[0]["body"]:
                break
            threading.Event().wait(0.01)
        [entry] = entries
        assert entry["status"] is None  # still waiting: what a reader sees meanwhile
        assert "grant_type=refresh_token" in entry["body"]
        assert_none_of(json.dumps(entries), refresh_token, CLIENT_SECRET)
        assert basic not in json.dumps(entries)
    finally:
        post.join()
    assert_none_of(json.dumps(control.requests()), refresh_token, CLIENT_SECRET)


def test_the_sandbox_log_redacts_an_authorization_value_of_any_shape(oauth_sandbox, control):
    token = oauth_sandbox.token
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    session = requests.Session()
    session.trust_env = False
    url = oauth_sandbox.base_url + "/accounts/self/outbox/x"
    for value in (token, f"Bearer\t{token}", f"{token} x", f"Basic\t{basic}", f"Token {token}"):
        session.get(url, headers={"Authorization": value}, timeout=10)
    session.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    logged = [entry["headers"]["authorization"] for entry in control.requests()]
    assert logged == ["<redacted>"] * 5 + ["Bearer <redacted>"]
    assert_none_of(json.dumps(control.requests()), token)
    assert basic not in json.dumps(control.requests())


# r8, r12. URLs of another scheme, unknown extras that are values, control characters in a URL.


@pytest.mark.parametrize(
    ("host", "extra", "named"),
    [
        (f"ftp://restapi.fax.plus/{SECRET}", {}, "base URL (scheme 'ftp', the rest not shown)"),
        (f"file://localhost/{SECRET}", {}, "base URL (scheme 'file', the rest not shown)"),
        (f"http:///{SECRET}", {}, "base URL (http:// without a host)"),
        (None, {"token_url": f"ftp://x/{SECRET}"}, "token URL (scheme 'ftp', the rest not shown)"),
        (None, {SECRET: "1"}, "unknown extra field(s) 1 not shown"),
        (None, {f"password={SECRET}": "1"}, "unknown extra field(s) 1 not shown"),
        (None, {"X-Debug": "1", SECRET: "1"}, "unknown extra field(s) 'X-Debug' and 1 more not shown"),
    ],
)
def test_a_secret_in_a_url_path_or_an_extra_s_name_is_never_echoed(host, extra, named):
    with pytest.raises(FaxPlusConfigError) as info:
        _config(host, **extra)
    message = str(info.value)
    assert named in message
    assert_none_of(message, SECRET)


@pytest.mark.parametrize(
    ("host", "token_url"),
    [
        ("http://127.0.0.\t1/v3", None),  # urlsplit would drop the tab: 127.0.0.1, loopback
        ("http://1\t27.0.0.1:8080/v3", None),
        ("http://127.0.0.1:8080/v\n3", None),
        ("https://restapi.fax.plus/v3", "http://127.0.0.\t1/token"),
    ],
)
def test_a_control_character_in_a_url_is_a_clear_config_error(host, token_url):
    extra = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": "rt-1234567"}
    with pytest.raises(FaxPlusConfigError, match="contains a tab, a line break or another control") as info:
        _config(host, **(extra | {"token_url": token_url} if token_url else {}))
    assert ("token URL" if token_url else "base URL") in str(info.value)


def test_a_trigger_reports_a_tab_in_the_host_as_a_config_event(monkeypatch):
    value = {"conn_type": "faxplus", "host": "http://127.0.0.\t1:9/v3", "password": SECRET}
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", json.dumps(value))
    trigger = OutboxFaxTrigger(outbox_fax_id="f1", poke_interval=0.1)
    trigger.shared_poll = False
    [event] = asyncio.run(asyncio.wait_for(collect(trigger), 60))
    assert (event["status"], event["kind"]) == ("error", "config")
    assert "control character" in event["message"]


# r3. Texts made from a successful answer: parse warnings, a list record's id, an unknown status, an upload.


def _record(**fields: object) -> str:
    return json.dumps({"id": "f1", "uid": "u1", "status": "submitted", **fields})


def test_texts_made_from_a_successful_answer_are_redacted_in_hook_logs_and_errors(
    sandbox, hook, control, caplog
):
    token = sandbox.token
    echo = f"Bearer {token}"
    ok = {"status": 200, "content_type": "application/json", "times": 1}
    control.add_fault(path_contains="/outbox/f1", body=_record(send_time=echo), **ok)
    caplog.set_level("INFO", logger="airflow_provider_faxplus")
    hook.get_outbox_fax("f1")
    control.add_fault(
        path_endswith="/outbox", method="GET", body=json.dumps({"records": [{"id": token}]}), **ok
    )
    with pytest.raises(FaxPlusResponseError, match=r"record #0 \(id '\*\*\*'\) is not an Outbox") as info:
        hook.list_outbox_faxes()
    control.add_fault(path_endswith="/files", method="POST", body=json.dumps({"path": f"/t-{token}"}), **ok)
    hook.upload_file(b"%PDF-1.4 test", file_name="a.pdf")
    assert "did not parse" in caplog.text
    assert "Uploaded a.pdf" in caplog.text
    assert_none_of(caplog.text + str(info.value), token)


def test_an_unknown_status_echoing_the_token_is_redacted_in_the_checkpoint_and_next_kwargs(
    sandbox, control, faxplus_conn, caplog
):
    token = sandbox.token
    record = _record(status=f"unauthorized {token}", comment=f"token {token}")
    control.add_fault(
        status=200, content_type="application/json", times=1, body=record, path_contains="/outbox/f1"
    )
    progress = {"started_at": time.time(), "ever_seen": False}
    trigger = OutboxFaxTrigger(outbox_fax_id="f1", poke_interval=0.1, shared_poll=False, progress=progress)
    caplog.set_level("INFO", logger="airflow_provider_faxplus")
    [event] = asyncio.run(asyncio.wait_for(collect(trigger), 60))
    assert event["status"] == "checkpoint", event
    assert "which the API spec does not know" in event["message"]
    assert event["progress"]["last_status"] == "unauthorized ***"
    following = OutboxFaxTrigger(
        outbox_fax_id="f1", progress=event["progress"], deferred_at=event["deferred_at"]
    )
    for text in (json.dumps(event), json.dumps(following.serialize()[1]), caplog.text):
        assert_none_of(text, token)


# r1. Encodings of a whole token in an API error: every byte percent-encoded, \u-escaped, upper-cased, hex.


def _echo_forms(token: str) -> dict[str, str]:
    raw = token.encode()
    return {
        "percent, upper": "".join(f"%{byte:02X}" for byte in raw),
        "percent, lower": "".join(f"%{byte:02x}" for byte in raw),
        "json \\u": "".join(f"\\u{ord(char):04x}" for char in token),
        "upper-cased": token.upper(),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
    }


@pytest.mark.parametrize("form", list(_echo_forms("x")))
def test_an_api_error_echoing_a_token_in_another_encoding_is_redacted(sandbox, hook, control, form):
    token = sandbox.token
    echo = _echo_forms(token)[form]
    # Raw JSON text, so the \u escapes reach the client as written.
    body = '{"error": "invalid_token", "description": "token ' + echo.replace("\\", "\\\\") + ' refused"}'
    control.add_fault(
        status=400, times=1, path_contains="/outbox/", body=body, content_type="application/json"
    )
    with pytest.raises(FaxPlusAPIError) as info:
        hook.get_outbox_fax("f1")
    text = str(info.value)
    assert "refused" in text
    assert echo not in text
    for other in _echo_forms(token).values():
        assert other[:16] not in text, (form, text)


def test_normalizing_leaves_other_text_and_short_fragments_alone():
    from airflow_provider_faxplus.redaction import Redactor

    redact = Redactor([ODD_REFRESH], [(CLIENT_ID, CLIENT_SECRET)])
    text = "HTTP 400 invalid_grant: %41%42 \\u0041 REFRESH TOKEN unknown"
    assert redact(text) == text
    assert (
        redact(f"x {ODD_REFRESH[:7].upper()} y") == f"x {ODD_REFRESH[:7].upper()} y"
    )  # below 8: out of scope
    assert redact(f"x {ODD_REFRESH[8:16].upper()} y") == "x *** y"


# r11. A redirect whose Location host echoes the token (urlsplit lower-cases a host).


def test_a_redirect_host_echoing_the_token_is_redacted(sandbox, hook, control):
    token = sandbox.token
    location = f"https://{token}.redirect.example/v3"
    control.add_fault(status=302, times=1, path_contains="/outbox/", headers={"Location": location})
    with pytest.raises(FaxPlusAPIError, match="Redirects are not followed") as info:
        hook.get_outbox_fax("f1")
    assert "redirect.example" in str(info.value)
    assert_none_of(str(info.value), token, token.lower())
