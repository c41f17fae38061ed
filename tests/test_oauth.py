"""OAuth2 against the sandbox's token endpoint over real HTTP: refresh, single flight, rotation, errors,
the faxplus-oauth command, and a rotated PAT picked up by a waiting hook or trigger."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_faxplus import oauth
from airflow_provider_faxplus.config import FaxPlusConfig, config_from_connection
from airflow_provider_faxplus.exceptions import (
    FaxPlusAuthError,
    FaxPlusConfigError,
    FaxPlusServerError,
)
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.send import FaxPlusSendUncertainError
from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor
from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger
from tests.conftest import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI


def use_oauth(
    monkeypatch, sandbox: SandboxServer, refresh: str, secret: str = CLIENT_SECRET, **extra
) -> None:
    extra.setdefault("initial_backoff", 0.05)
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.oauth_connection_json(CLIENT_ID, secret, refresh, **extra)
    )


def issued_tokens(sandbox: SandboxServer) -> list[str]:
    return list(sandbox.state.oauth.access_tokens)


def assert_no_secret(text: str, sandbox: SandboxServer, *secrets: str) -> None:
    for secret in (*secrets, CLIENT_SECRET, *issued_tokens(sandbox)):
        assert secret not in text


# Configuration --------------------------------------------------------------------------------------


def conn(**extra):
    return config_from_connection(
        conn_id="c",
        host=None,
        password=extra.pop("password", None),
        login=None,
        schema=None,
        port=None,
        extra=extra,
    )


def test_with_a_refresh_token_the_access_token_is_optional_and_secrets_stay_out_of_repr():
    config = conn(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token="rt-SENTINEL")
    assert config.uses_oauth_refresh
    assert config.token == ""
    assert config.token_url == "https://accounts.fax.plus/token"
    assert CLIENT_SECRET not in repr(config)
    assert "rt-SENTINEL" not in repr(config)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"client_id": CLIENT_ID, "refresh_token": "rt"}, "extra 'client_secret' is not"),
        ({"client_secret": "s", "refresh_token": "rt"}, "extra 'client_id' is not"),
        ({"client_id": CLIENT_ID, "client_secret": "s", "password": "pat"}, "'refresh_token' is not"),
        (
            {
                "client_id": CLIENT_ID,
                "client_secret": "s",
                "refresh_token": "rt",
                "token_url": "http://x.example/t",
            },
            "refusing to send OAuth2 secrets over plain http://",
        ),
        (
            {"client_id": CLIENT_ID, "client_secret": "s", "refresh_token": "rt", "token_url": "ftp://x/t"},
            r"the token URL \(scheme 'ftp', the rest not shown\) must start with https://",
        ),
        (
            {"client_id": CLIENT_ID, "client_secret": "s", "refresh_token": "r t"},
            "extra 'refresh_token' contains",
        ),
    ],
)
def test_incomplete_or_unsafe_oauth_settings_are_named(extra, message):
    with pytest.raises(FaxPlusConfigError, match=message) as info:
        conn(**extra)
    assert "r t" not in str(info.value)


def test_loopback_token_url_may_be_plain_http():
    config = conn(
        client_id=CLIENT_ID, client_secret="s", refresh_token="rt", token_url="http://127.0.0.1:9/token"
    )
    assert config.token_url == "http://127.0.0.1:9/token"


# Sans-I/O token calls ---------------------------------------------------------------------------------


def test_refresh_call_is_a_form_with_basic_client_auth():
    config = FaxPlusConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token="rt-1")
    call = oauth.refresh_call(config, "rt-1")
    assert call.url == "https://accounts.fax.plus/token"
    assert call.body == b"grant_type=refresh_token&refresh_token=rt-1"
    assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    import base64

    assert (
        call.headers["Authorization"]
        == "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    )
    assert CLIENT_SECRET not in repr(call)
    assert "rt-1" not in repr(call)


def test_token_answers_map_to_grants_and_errors():
    call = oauth.authorization_code_call(
        "https://t.example/token", CLIENT_ID, CLIENT_SECRET, "the-code", REDIRECT_URI
    )
    grant = oauth.parse_token_response(
        call,
        200,
        {},
        b'{"access_token": "at", "token_type": "bearer", "expires_in": 5, "refresh_token": "rt2"}',
    )
    assert (grant.access_token, grant.expires_in, grant.refresh_token) == ("at", 5.0, "rt2")
    echo = json.dumps(
        {"error": "invalid_client", "error_description": f"bad {CLIENT_SECRET} for the-code"}
    ).encode()
    with pytest.raises(FaxPlusAuthError) as info:
        oauth.parse_token_response(call, 401, {}, echo)
    assert "client_id and client_secret" in str(info.value)
    assert CLIENT_SECRET not in str(info.value)
    assert "the-code" not in str(info.value)
    with pytest.raises(FaxPlusServerError) as server:
        oauth.parse_token_response(call, 503, {"Retry-After": "3"}, b"")
    assert server.value.retry_after == 3
    assert oauth.authorization_url(CLIENT_ID, REDIRECT_URI) == (
        "https://accounts.fax.plus/login?response_type=code&client_id=APIK-oauth-client-7"
        "&redirect_uri=https%3A%2F%2Fairflow.example%2Foauth%2Fcallback&scope=all"
    )


# Sandbox token endpoint -------------------------------------------------------------------------------


def test_sandbox_token_endpoint_speaks_rfc_6749(oauth_sandbox, control, refresh_token):
    import requests

    url = oauth_sandbox.token_url
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    ok = requests.post(url, data=form, auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)
    assert ok.status_code == 200
    assert ok.headers["cache-control"] == "no-store"
    assert ok.json()["token_type"] == "Bearer"
    assert ok.json()["expires_in"] == 3600
    bad_client = requests.post(url, data=form, auth=(CLIENT_ID, "wrong"), timeout=10)
    assert (bad_client.status_code, bad_client.json()["error"]) == (401, "invalid_client")
    assert bad_client.headers["www-authenticate"].startswith("Basic")
    assert control.revoke(refresh_token) is True
    revoked = requests.post(url, data=form, auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)
    assert (revoked.status_code, revoked.json()["error"]) == (400, "invalid_grant")
    other = requests.post(url, data={"grant_type": "password"}, auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)
    assert (other.status_code, other.json()["error"]) == (400, "unsupported_grant_type")
    log = control.token_requests()
    assert [entry["grant_type"] for entry in log] == ["refresh_token"] * 3 + ["password"]
    assert refresh_token not in json.dumps(log)  # the log redacts the form


def test_expired_access_token_is_401_invalid_token(oauth_sandbox, control, refresh_token):
    import requests

    control.oauth_settings(access_token_lifetime=5)
    control.create_fax(id="f1")
    answer = requests.post(
        oauth_sandbox.token_url,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=10,
    ).json()
    headers = {"Authorization": f"Bearer {answer['access_token']}", "x-fax-clientid": CLIENT_ID}
    url = oauth_sandbox.base_url + "/accounts/self/outbox/f1"
    assert requests.get(url, headers=headers, timeout=10).status_code == 200
    control.advance(5)
    expired = requests.get(url, headers=headers, timeout=10)
    assert expired.status_code == 401
    assert expired.json()["error"] == "invalid_token"
    assert expired.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


# Hook -------------------------------------------------------------------------------------------------


def test_hook_refreshes_once_and_retries_once_after_a_401(oauth_sandbox, control, refresh_token, monkeypatch):
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 100_000}])
    hook = FaxPlusHook()
    for _ in range(3):
        assert hook.get_outbox_fax("f1").status.value == "sending"
    assert len(control.token_requests()) == 1  # one token for all three calls
    control.advance(3600)  # the sandbox expires the token before the hook expects it
    assert hook.get_outbox_fax("f1").status.value == "sending"
    statuses = [(entry["path"].rsplit("/", 1)[-1], entry["status"]) for entry in control.requests()]
    assert statuses == [("token", 200), *[("f1", 200)] * 3, ("f1", 401), ("token", 200), ("f1", 200)]
    api = [entry for entry in control.requests() if entry["path"].endswith("/f1")]
    assert all(entry["headers"]["x-fax-clientid"] == CLIENT_ID for entry in api)
    hook.close()


@pytest.mark.parametrize("problem", ["wrong_secret", "revoked"])
def test_refused_client_or_refresh_token_is_one_request_and_fails_the_poke(
    oauth_sandbox, control, refresh_token, monkeypatch, caplog, problem
):
    if problem == "revoked":
        control.revoke(refresh_token)
    use_oauth(
        monkeypatch,
        oauth_sandbox,
        refresh_token,
        secret="csecret-wrong-77" if problem == "wrong_secret" else CLIENT_SECRET,
    )
    control.create_fax(id="f1")
    with pytest.raises(AirflowFailException) as info:
        OutboxFaxSensor(task_id="wait", outbox_fax_id="f1", poke_interval=0.1).poke({})
    message = str(info.value)
    expected = "invalid_client" if problem == "wrong_secret" else "invalid_grant"
    assert expected in message
    assert "token_url" in message
    assert "/token" in message
    assert ("client_secret" if problem == "wrong_secret" else "refresh_token") in message
    assert len(control.requests()) == 1  # one token request, no retry loop, no API call
    assert_no_secret(message + caplog.text, oauth_sandbox, refresh_token, "csecret-wrong-77")


def test_a_wrong_token_url_fails_the_poke_and_never_counts_as_the_fax_leaving(
    oauth_sandbox, control, refresh_token, monkeypatch
):
    use_oauth(monkeypatch, oauth_sandbox, refresh_token, token_url=oauth_sandbox.root_url + "/oauth/token")
    control.create_fax(id="f1")
    with pytest.raises(AirflowFailException, match=r"HTTP 404 .*Check the connection's token_url"):
        OutboxFaxSensor(task_id="wait", outbox_fax_id="f1", poke_interval=0.1).poke({})
    assert len(control.requests()) == 0  # only /token and /v3 are logged: no API call was made


def test_transient_token_endpoint_errors_retry_like_api_calls(
    oauth_sandbox, control, refresh_token, monkeypatch
):
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="f1")
    control.add_fault(status=503, times=2, path_contains="/token")
    assert FaxPlusHook().get_outbox_fax("f1").id == "f1"
    assert [entry["status"] for entry in control.token_requests()] == [503, 503, 200]


def test_a_rotated_refresh_token_is_used_for_later_refreshes(
    oauth_sandbox, control, refresh_token, monkeypatch
):
    control.oauth_settings(rotate_refresh_tokens=True)
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 100_000}])
    hook = FaxPlusHook()
    for _ in range(3):
        hook.get_outbox_fax("f1")
        control.advance(3600)
    hook.get_outbox_fax("f1")
    # Each refresh revoked the refresh token before it: only the rotated one can have worked.
    assert [entry["status"] for entry in control.token_requests()] == [200] * 4
    hook.close()


def test_hooks_on_many_threads_share_one_refresh(oauth_sandbox, control, refresh_token, monkeypatch):
    """Poke sensors in one worker process: one token, one refresh in flight, whatever the threads."""
    from concurrent.futures import ThreadPoolExecutor

    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 100_000}])
    control.add_fault(delay=0.5, path_contains="/token")  # a slow token endpoint: all threads ask meanwhile
    hooks = [FaxPlusHook() for _ in range(16)]
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda hook: hook.get_outbox_fax("f1").id, hooks))
    assert ids == ["f1"] * 16
    assert len(control.token_requests()) == 1
    for hook in hooks:
        hook.close()


def test_hook_rereads_a_rotated_pat_after_a_401(monkeypatch):
    with SandboxServer(tokens={"alohi_pat_new": None}) as server:
        assert server.client is not None
        server.client.create_fax(id="f1")
        old = json.dumps({"conn_type": "faxplus", "host": server.base_url, "password": "alohi_pat_old"})
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", old)
        hook = FaxPlusHook()
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", old.replace("alohi_pat_old", "alohi_pat_new"))
        assert hook.get_outbox_fax("f1").id == "f1"
        assert [entry["status"] for entry in server.client.requests()] == [401, 200]
        hook.close()


# Sending with OAuth2 -------------------------------------------------------------------------------

PDF = b"%PDF-1.4\n% tiny\n%%EOF\n"


def test_an_upload_and_a_send_refused_with_401_are_made_once_more_after_a_refresh(
    oauth_sandbox, control, refresh_token, monkeypatch
):
    """A 401 is the API refusing the request unprocessed: after one refresh, even a send is made once
    more; the streamed upload body is built again for the new attempt."""
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    hook = FaxPlusHook()
    hook.list_outbox_faxes()  # the first access token
    control.advance(3600)  # the sandbox expires it before the hook expects it
    path = hook.upload_file(PDF, file_name="a.pdf").path
    control.advance(3600)
    sent = hook.send_fax("+16699990001", [path])
    posts = [(e["path"].rsplit("/", 1)[-1], e["status"]) for e in control.requests() if e["method"] == "POST"]
    assert posts == [
        ("token", 200),
        ("files", 401),
        ("token", 200),
        ("files", 200),
        ("outbox", 401),
        ("token", 200),
        ("outbox", 201),
    ]
    [outbox_id] = sent.outbox_fax_ids.values()
    assert [fax["id"] for fax in control.faxes()] == [outbox_id]  # one fax, sent once
    uploads = oauth_sandbox.state.uploads
    again = hook.upload_file(PDF, file_name="a.pdf").path
    assert uploads[path][2] == uploads[again][2]  # the attempt after the 401 sent the whole body
    hook.close()


def test_a_send_that_gets_no_access_token_is_certainly_not_sent(
    oauth_sandbox, control, refresh_token, monkeypatch
):
    """The token endpoint failing before a send is a plain error: no send request was made, so the
    fax certainly does not exist (never the "may have reached Fax.Plus" error)."""
    use_oauth(monkeypatch, oauth_sandbox, refresh_token, max_attempts=2)
    control.add_fault(status=503, retry_after="0", times=10, path_contains="/token")
    hook = FaxPlusHook()
    with pytest.raises(FaxPlusServerError) as caught:
        hook.send_fax("+16699990001", ["/transient-x"])
    assert not isinstance(caught.value, FaxPlusSendUncertainError)
    assert oauth.is_token_error(caught.value)
    assert [e["path"].rsplit("/", 1)[-1] for e in control.requests()] == ["token", "token"]
    hook.close()


# Trigger ----------------------------------------------------------------------------------------------


async def collect(trigger: OutboxFaxTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def seen_trigger(outbox_fax_id: str, poke_interval: float) -> OutboxFaxTrigger:
    """A trigger as the sensor defers it after its first look saw the fax (so no checkpoint comes first)."""
    progress = {"started_at": time.time(), "ever_seen": True}
    return OutboxFaxTrigger(outbox_fax_id=outbox_fax_id, poke_interval=poke_interval, progress=progress)


def test_trigger_kwargs_hold_no_secret(oauth_sandbox, refresh_token, monkeypatch):
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    _, kwargs = OutboxFaxTrigger(outbox_fax_id="f1").serialize()
    assert refresh_token not in json.dumps(kwargs)
    assert CLIENT_SECRET not in json.dumps(kwargs)


def test_revoked_refresh_token_is_one_fatal_trigger_event(oauth_sandbox, control, refresh_token, monkeypatch):
    control.revoke(refresh_token)
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)

    async def many():
        return await asyncio.gather(
            *(collect(OutboxFaxTrigger(outbox_fax_id=f"f{i}", poke_interval=0.1)) for i in range(50))
        )

    results = asyncio.run(asyncio.wait_for(many(), 60))
    for [event] in results:
        assert (event["status"], event["kind"]) == ("error", "auth")
        assert "invalid_grant" in event["message"]
        assert refresh_token not in event["message"]
    assert len(control.requests()) == 1  # fifty triggers, one token request


def test_trigger_backs_off_on_token_endpoint_errors_and_logs_no_secret(
    oauth_sandbox, control, refresh_token, monkeypatch, caplog
):
    caplog.set_level("DEBUG")
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 2}])
    control.add_fault(status=503, times=2, path_contains="/token")
    [event] = asyncio.run(asyncio.wait_for(collect(seen_trigger("f1", poke_interval=0.2)), 60))
    assert event["status"] == "success"
    token_log = control.token_requests()
    assert [entry["status"] for entry in token_log] == [503, 503, 200]
    assert token_log[1]["at"] - token_log[0]["at"] >= 0.19  # backed off, at least poke_interval
    assert "OAuth2 access token refreshed" in caplog.text  # the search below is not vacuous
    assert_no_secret(caplog.text + json.dumps(event), oauth_sandbox, refresh_token)


def test_a_thousand_triggers_refresh_once_per_lifetime(oauth_sandbox, control, refresh_token, monkeypatch):
    """1,000 triggers of one connection in one event loop; the sandbox clock jumps a token lifetime
    three times while they wait. Each lifetime costs one token request, not one per trigger."""
    count, lifetimes = 1000, 3
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_faxes(
        [{"id": f"f{i}", "lifecycle": [{"status": "sending", "polls": lifetimes + 1}]} for i in range(count)]
    )
    state = oauth_sandbox.state

    def polls_of_slowest() -> int:
        return min(fax.polls_seen for fax in list(state.faxes.values()))

    async def scenario():
        triggers = [seen_trigger(f"f{i}", poke_interval=1.0) for i in range(count)]
        waiting = asyncio.gather(*(collect(trigger) for trigger in triggers))
        for round_number in range(1, lifetimes + 1):
            # Every trigger has been answered with the current token: a jump now expires it for all.
            while polls_of_slowest() < round_number:
                await asyncio.sleep(0.05)
            state.clock.advance(3600)  # in-process: a control-API round trip would block the loop
        return await waiting

    results = asyncio.run(asyncio.wait_for(scenario(), 300))
    failed = [event for [event] in results if event["status"] != "success"]
    assert not failed, (len(failed), failed[:3])
    assert [entry["status"] for entry in control.token_requests()] == [200] * (1 + lifetimes)
    # Thousands of identical polls: the smaller tests check the same requests against the spec.
    control.requests(clear=True)


def test_waiting_trigger_picks_up_a_rotated_pat(monkeypatch):
    """The PAT is rotated in the connection while the trigger waits: one 401, the connection is read
    again, and the wait goes on without failing."""
    with SandboxServer(tokens={"alohi_pat_old": None, "alohi_pat_new": None}) as server:
        client = server.client
        assert client is not None
        client.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 4}])
        old = json.dumps({"conn_type": "faxplus", "host": server.base_url, "password": "alohi_pat_old"})
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", old)

        async def scenario():
            waiting = asyncio.ensure_future(collect(seen_trigger("f1", poke_interval=0.2)))
            while len(server.state.requests) < 2:
                await asyncio.sleep(0.02)
            # Rotation: the old PAT stops working, the connection (secrets backend) holds the new one.
            del server.state.tokens["alohi_pat_old"]
            os.environ["AIRFLOW_CONN_FAXPLUS_DEFAULT"] = old.replace("alohi_pat_old", "alohi_pat_new")
            return await waiting

        [event] = asyncio.run(asyncio.wait_for(scenario(), 60))
        assert event["status"] == "success", event
        statuses = [entry["status"] for entry in client.requests()]
        assert statuses == [200, 200, 401, 200, 200, 404]


def test_waiting_trigger_with_an_unchanged_revoked_pat_fails_after_one_reread(monkeypatch):
    with SandboxServer(tokens={"alohi_pat_other": None}) as server:
        assert server.client is not None
        server.client.create_fax(id="f1")
        monkeypatch.setenv(
            "AIRFLOW_CONN_FAXPLUS_DEFAULT",
            json.dumps({"conn_type": "faxplus", "host": server.base_url, "password": "alohi_pat_revoked"}),
        )
        [event] = asyncio.run(asyncio.wait_for(collect(OutboxFaxTrigger(outbox_fax_id="f1")), 60))
        assert (event["status"], event["kind"]) == ("error", "auth")
        assert len(server.client.requests()) == 1


# Waiting through several real token lifetimes ---------------------------------------------------------

LIFETIME = 5.0
WAIT_POLLS = 16  # poke_interval 1 s: about 16 s, more than three 5 s lifetimes


def token_bounds(control, fax_id: str) -> tuple[int, int, int]:
    """(token requests, lowest and highest acceptable counts) for the span the fax was polled."""
    polls = [entry for entry in control.requests() if entry["path"].endswith(f"/{fax_id}")]
    span = polls[-1]["at"] - polls[0]["at"]
    assert span >= 3 * LIFETIME, span
    tokens = len(control.token_requests())
    # One per lifetime (renewed a fifth early), plus the first; never one per poll.
    return tokens, int(span // LIFETIME) + 1, int(span // (LIFETIME * 0.8)) + 2


def test_poke_mode_waits_through_three_token_lifetimes(oauth_sandbox, control, refresh_token, monkeypatch):
    control.oauth_settings(access_token_lifetime=LIFETIME)
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": WAIT_POLLS}])
    task = OutboxFaxSensor(task_id="wait", outbox_fax_id="f1", poke_interval=1)
    # What BaseSensorOperator.execute does in poke mode: one operator (one hook), poke, sleep, poke.
    while True:
        done = task.poke({})
        if done:
            break
        time.sleep(1)
    tokens, low, high = token_bounds(control, "f1")
    assert low <= tokens <= high, (tokens, low, high)
    assert tokens < WAIT_POLLS / 2


def test_deferrable_wait_lasts_three_token_lifetimes(oauth_sandbox, control, refresh_token, monkeypatch):
    control.oauth_settings(access_token_lifetime=LIFETIME)
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": WAIT_POLLS}])
    [event] = asyncio.run(asyncio.wait_for(collect(seen_trigger("f1", poke_interval=1)), 120))
    assert event["status"] == "success"
    tokens, low, high = token_bounds(control, "f1")
    assert low <= tokens <= high, (tokens, low, high)


# faxplus-oauth ----------------------------------------------------------------------------------------


def oauth_cli(
    token_url: str, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``faxplus-oauth`` for the sandbox's client; ``env`` defaults to ours with the client secret."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_provider_faxplus.oauth_cli",
            "--client-id",
            CLIENT_ID,
            "--redirect-uri",
            REDIRECT_URI,
            "--token-url",
            token_url,
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "FAXPLUS_CLIENT_SECRET": CLIENT_SECRET} if env is None else env,
        timeout=120,
        check=False,
    )


def run_cli(sandbox: SandboxServer, stdin: str, secret: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FAXPLUS_CLIENT_SECRET": secret}
    return oauth_cli(sandbox.token_url, "--base-url", sandbox.base_url, *args, stdin=stdin, env=env)


def test_cli_exchanges_the_code_and_prints_a_working_connection(oauth_sandbox, control, monkeypatch):
    code = control.mint_code(CLIENT_ID, REDIRECT_URI)
    done = run_cli(oauth_sandbox, f"{REDIRECT_URI}?code={code}&state=x\n", CLIENT_SECRET)
    assert done.returncode == 0, done.stderr
    assert "https://accounts.fax.plus/login?response_type=code&client_id=APIK-oauth-client-7" in done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines())
    refresh = lines["refresh_token"]
    assert refresh in oauth_sandbox.state.oauth.refresh_tokens
    assert refresh not in done.stderr
    assert CLIENT_SECRET not in done.stdout + done.stderr
    assert [entry["grant_type"] for entry in control.token_requests()] == ["authorization_code"]
    pasted = json.loads(lines["AIRFLOW_CONN_FAXPLUS_DEFAULT"].strip("'"))
    pasted["extra"]["client_secret"] = CLIENT_SECRET  # what the person does with the placeholder
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", json.dumps(pasted))
    control.create_fax(id="f1")
    assert FaxPlusHook().get_outbox_fax("f1").id == "f1"


def test_cli_with_a_wrong_secret_is_one_request_and_a_clear_error(oauth_sandbox, control):
    code = control.mint_code(CLIENT_ID, REDIRECT_URI)
    done = run_cli(oauth_sandbox, "", "wrong-secret-55", "--code", code)
    assert done.returncode == 1
    assert "invalid_client" in done.stderr
    assert "client_secret" in done.stderr
    assert "wrong-secret-55" not in done.stderr
    assert code not in done.stderr
    assert done.stdout == ""
    assert len(control.token_requests()) == 1


def test_cli_refuses_plain_http_token_url_to_a_remote_host(oauth_sandbox):
    done = oauth_cli(
        "http://accounts.example/token", "--code", "c", env={**os.environ, "FAXPLUS_CLIENT_SECRET": "s"}
    )
    assert done.returncode == 2
    assert "plain http://" in done.stderr


def test_cancelling_the_trigger_that_started_a_refresh_does_not_abort_it_for_the_others(
    oauth_sandbox, control, refresh_token, monkeypatch, caplog
):
    """Finding 11: two connections of one OAuth2 identity (one token source, two sessions): the refresh
    started by the first trigger still serves the second after the first is cancelled."""
    caplog.set_level("WARNING")
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_OTHER",
        oauth_sandbox.oauth_connection_json(
            CLIENT_ID, CLIENT_SECRET, refresh_token, timeout=7, initial_backoff=0.05
        ),
    )
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 1}])
    control.add_fault(path_contains="/token", delay=1.0, times=1)

    async def scenario():
        first = asyncio.ensure_future(collect(seen_trigger("f1", poke_interval=0.1)))
        while oauth_sandbox.state.faults:  # taken when the token request arrives; answered 1 s later
            await asyncio.sleep(0.02)
        other = seen_trigger("f1", poke_interval=0.1)
        other.faxplus_conn_id = "faxplus_other"
        second = asyncio.ensure_future(collect(other))
        await asyncio.sleep(0.2)  # it waits on the refresh in flight
        first.cancel()
        return await second

    [event] = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert event["status"] == "success", event
    assert [entry["status"] for entry in control.token_requests()] == [200]
    assert "Transient error" not in caplog.text
