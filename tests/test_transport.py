"""The transport under real network conditions, the same fault for the sync hook and the async trigger:
TLS with a self-signed certificate, a proxy in the environment, a server that trickles its answer, and a
Retry-After of a week."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_faxplus import retry
from airflow_provider_faxplus.config import config_from_connection
from airflow_provider_faxplus.exceptions import (
    FaxPlusConfigError,
    FaxPlusTLSError,
    FaxPlusTransportError,
)
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.operators.outbox import UpdateOutboxCommentOperator
from airflow_provider_faxplus.sandbox.app import API_PREFIX, CONTROL_PREFIX, create_app
from airflow_provider_faxplus.sandbox.state import SandboxState
from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor
from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger, fetch_outbox_fax, shared_session
from tests.conftest import TOKEN


def seen_trigger() -> OutboxFaxTrigger:
    """A trigger as the sensor defers it after its first look saw fax f1 (so no checkpoint comes first)."""
    return OutboxFaxTrigger(
        outbox_fax_id="f1", poke_interval=0.1, progress={"started_at": time.time(), "ever_seen": True}
    )


PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARIABLES, *CA_VARIABLES, "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def set_connection(monkeypatch: pytest.MonkeyPatch, host: str, **extra: Any) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps({"conn_type": "faxplus", "host": host, "password": TOKEN, "extra": extra}),
    )


def trigger_events(trigger: OutboxFaxTrigger, timeout: float = 30) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout))


def fetch_once(host: str, outbox_fax_id: str = "f1", **extra: Any) -> Any:
    """One trigger request (no polling loop), as the trigger sends it."""
    config = config_from_connection(
        conn_id="c", host=host, password=TOKEN, login=None, schema=None, port=None, extra=extra
    )

    async def fetch() -> Any:
        async with shared_session(config) as lease:
            return await fetch_outbox_fax(lease, config, outbox_fax_id, "self")

    return asyncio.run(fetch())


# A sandbox over TLS ------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "faxplus-test-sandbox")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "sandbox-cert.pem", directory / "sandbox-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class TlsSandbox:
    """The sandbox app behind uvicorn's TLS, with a self-signed certificate."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = _self_signed(directory)
        self.state = SandboxState(tokens={TOKEN: None})
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        port = self._socket.getsockname()[1]
        self.root_url = f"https://127.0.0.1:{port}"
        self.base_url = self.root_url + API_PREFIX
        config = uvicorn.Config(
            create_app(self.state),
            log_level="warning",
            lifespan="off",
            ssl_certfile=str(self.cert),
            ssl_keyfile=str(key),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> TlsSandbox:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert self._thread.is_alive(), "the TLS sandbox did not start"
            assert time.monotonic() < deadline, "the TLS sandbox did not start in time"
            time.sleep(0.02)
        return self

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(
            method, self.root_url + CONTROL_PREFIX + path, json=body, verify=str(self.cert), timeout=10
        )
        response.raise_for_status()
        return response.json()

    def api_requests(self) -> list[dict[str, Any]]:
        return [entry for entry in self.control("GET", "/requests") if entry["path"].startswith(API_PREFIX)]

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@pytest.fixture(scope="module")
def tls_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSandbox]:
    pytest.importorskip("cryptography", reason="cryptography makes the test's self-signed certificate")
    server = TlsSandbox(tmp_path_factory.mktemp("tls")).start()
    yield server
    server.stop()


@pytest.fixture
def tls(tls_sandbox: TlsSandbox) -> TlsSandbox:
    tls_sandbox.control("POST", "/reset")
    # Seen by up to four looks, then gone: each test's last look is the trigger's.
    tls_sandbox.control("POST", "/faxes", {"id": "f1", "lifecycle": [{"status": "sending", "polls": 5}]})
    return tls_sandbox


def test_an_untrusted_certificate_fails_the_hook_at_once_naming_the_ca_bundle(tls, monkeypatch, caplog):
    set_connection(monkeypatch, tls.base_url, max_attempts=5, initial_backoff=0.01)
    hook = FaxPlusHook()
    with caplog.at_level(logging.WARNING), pytest.raises(FaxPlusTLSError) as info:
        hook.get_outbox_fax("f1")
    message = str(info.value)
    assert "could not be verified with the system's CA store" in message
    assert "extra 'ca_bundle'" in message
    assert "'verify'" in message
    assert "retrying" not in caplog.text  # no retry can fix it
    assert TOKEN not in message


def test_an_untrusted_certificate_fails_sensor_operator_and_trigger_without_retries(tls, monkeypatch):
    set_connection(monkeypatch, tls.base_url, max_attempts=5, initial_backoff=0.01)
    sensor = OutboxFaxSensor(task_id="wait", outbox_fax_id="f1", poke_interval=1, timeout=60)
    with pytest.raises(AirflowFailException, match="ca_bundle"):
        sensor.poke({})
    operator = UpdateOutboxCommentOperator(task_id="tag", outbox_fax_id="f1", comment="c")
    with pytest.raises(AirflowFailException, match="ca_bundle"):
        operator.execute({})
    started = time.monotonic()
    [event] = trigger_events(seen_trigger())
    assert time.monotonic() - started < 10  # ends at the first look, no backoff
    assert event["status"] == "error"
    assert event["kind"] == "rejected"  # fatal: the sensor fails without retries
    assert "ca_bundle" in event["message"]
    with pytest.raises(AirflowFailException, match="ca_bundle"):
        sensor.execute_complete({}, event)


def test_with_the_certificate_as_ca_bundle_hook_and_trigger_succeed(tls, monkeypatch):
    set_connection(monkeypatch, tls.base_url, ca_bundle=str(tls.cert))
    assert FaxPlusHook().get_outbox_fax("f1").status == "sending"
    [event] = trigger_events(seen_trigger())
    assert event["status"] == "success", event
    assert event["result"]["ever_seen"] is True


def test_an_old_style_verify_path_still_works_for_both(tls, monkeypatch):
    set_connection(monkeypatch, tls.base_url, verify=str(tls.cert))
    assert FaxPlusHook().get_outbox_fax("f1").id == "f1"
    assert fetch_once(tls.base_url, verify=str(tls.cert)).id == "f1"


@pytest.mark.parametrize("variable", CA_VARIABLES)
def test_the_environments_ca_bundle_is_one_rule_for_hook_and_trigger(tls, monkeypatch, variable):
    set_connection(monkeypatch, tls.base_url)
    monkeypatch.setenv(variable, str(tls.cert))
    assert FaxPlusHook().get_outbox_fax("f1").id == "f1"
    assert fetch_once(tls.base_url).id == "f1"
    [event] = trigger_events(seen_trigger())
    assert event["status"] == "success", event


def test_a_ca_directory_works_for_hook_and_trigger(tls, monkeypatch, tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command names a CA directory's files by certificate hash")
    digest = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", str(tls.cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shutil.copy(tls.cert, tmp_path / f"{digest}.0")
    set_connection(monkeypatch, tls.base_url, ca_bundle=str(tmp_path))
    assert FaxPlusHook().get_outbox_fax("f1").id == "f1"
    assert fetch_once(tls.base_url, ca_bundle=str(tmp_path)).id == "f1"
    # The same directory as an older connection's verify path.
    assert fetch_once(tls.base_url, verify=str(tmp_path)).id == "f1"


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_reaches_a_self_signed_server_from_both(tls, monkeypatch):
    set_connection(monkeypatch, tls.base_url, verify=False)
    assert FaxPlusHook().get_outbox_fax("f1").id == "f1"
    assert fetch_once(tls.base_url, verify="false").id == "f1"


@pytest.mark.parametrize("where", ["extra", "environment"])
def test_an_invalid_ca_bundle_is_a_config_error_in_hook_and_trigger(tls, monkeypatch, tmp_path, where):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    if where == "extra":
        set_connection(monkeypatch, tls.base_url, ca_bundle=str(bundle))
        says = "extra 'ca_bundle'"
    else:
        set_connection(monkeypatch, tls.base_url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        says = "REQUESTS_CA_BUNDLE"
    with pytest.raises(FaxPlusConfigError, match=says):
        FaxPlusHook().get_outbox_fax("f1")
    [event] = trigger_events(seen_trigger())
    assert (event["status"], event["kind"]) == ("error", "config")
    assert says in event["message"]
    assert tls.api_requests() == []


# A proxy in the environment -----------------------------------------------------------------------


class RecordingProxy:
    """Listens on loopback, records every byte it receives and answers 502: a stand-in for a proxy."""

    def __init__(self) -> None:
        self.received = bytearray()
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._socket.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.received += conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    server = RecordingProxy()
    yield server
    server.close()


def test_a_proxy_in_the_environment_never_sees_the_loopback_sandbox(sandbox, control, proxy, monkeypatch):
    set_connection(monkeypatch, sandbox.base_url)
    control.create_fax(id="f1", lifecycle=[{"status": "submitted", "polls": 3}])
    # Set only now: the test's own control client would use the proxy too.
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy.url)
    hook = FaxPlusHook()
    assert hook.get_outbox_fax("f1").id == "f1"
    hook.update_outbox_fax("f1", comment="c")
    assert fetch_once(sandbox.base_url).id == "f1"
    [event] = trigger_events(seen_trigger())
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name)
    assert event["status"] == "success", event
    assert bytes(proxy.received) == b""
    assert len(control.requests()) >= 4  # every request went straight to the sandbox


# A server that trickles its answer ---------------------------------------------------------------


class TricklingServer:
    """Answers every request slowly, one byte every ``gap`` seconds: the headers, or the body."""

    BODY = json.dumps({"id": "f1", "uid": "u1", "status": "sending", "pad": "x" * 200}).encode()

    def __init__(self, part: str, gap: float = 0.1) -> None:
        self.part = part
        self.gap = gap
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._socket.settimeout(0.2)
        self.base_url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/v3"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(self.BODY)}\r\n\r\n"
        ).encode()
        fast, slow = (head, self.BODY) if self.part == "body" else (b"", head + self.BODY)
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(fast)
                for index in range(len(slow)):
                    if self._stop.is_set():
                        return
                    conn.sendall(slow[index : index + 1])
                    time.sleep(self.gap)
            except OSError:
                return  # the client hung up

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


TIMEOUT = 1.0
# Loose: the bound is about the timeout meaning the whole request, not about speed.
MARGIN = 2.0


@pytest.fixture(params=["headers", "body"])
def trickling(request: pytest.FixtureRequest) -> Iterator[TricklingServer]:
    server = TricklingServer(request.param)
    yield server
    server.close()


def test_the_hooks_timeout_bounds_the_whole_request(trickling, monkeypatch):
    # The whole answer takes 25+ s at a byte every 0.1 s; each byte alone is well within the timeout.
    set_connection(monkeypatch, trickling.base_url, timeout=TIMEOUT, max_attempts=1)
    hook = FaxPlusHook()
    started = time.monotonic()
    with pytest.raises(FaxPlusTransportError, match=f"no answer within {TIMEOUT:g} s"):
        hook.get_outbox_fax("f1")
    assert time.monotonic() - started < TIMEOUT + MARGIN


def test_the_triggers_timeout_bounds_the_whole_request_the_same_way(trickling):
    started = time.monotonic()
    with pytest.raises(FaxPlusTransportError, match=f"no answer within {TIMEOUT:g} s"):
        fetch_once(trickling.base_url, timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT + MARGIN


def test_a_hook_is_usable_after_a_request_it_cut_short(sandbox, control, monkeypatch):
    server = TricklingServer("body")
    try:
        set_connection(monkeypatch, server.base_url, timeout=TIMEOUT, max_attempts=1)
        hook = FaxPlusHook()
        for _ in range(2):
            with pytest.raises(FaxPlusTransportError):
                hook.get_outbox_fax("f1")
    finally:
        server.close()
    set_connection(monkeypatch, sandbox.base_url, timeout=TIMEOUT)
    control.create_fax(id="f1")
    hook = FaxPlusHook()
    for _ in range(3):  # fast calls leave no deadline behind to cut a later request
        assert hook.get_outbox_fax("f1").id == "f1"
    time.sleep(TIMEOUT + 0.3)
    assert hook.get_outbox_fax("f1").id == "f1"
    assert len(control.requests()) == 4


# A Retry-After of a week -------------------------------------------------------------------------

WEEK = 7 * 24 * 3600


def test_a_week_long_retry_after_is_capped_in_the_hook(sandbox, control, monkeypatch, caplog):
    monkeypatch.setattr(retry, "MAX_RETRY_AFTER", 0.3)
    set_connection(monkeypatch, sandbox.base_url, max_attempts=3, max_retry_seconds=60)
    control.create_fax(id="f1")
    control.add_fault(status=429, retry_after=str(WEEK), times=1)
    with caplog.at_level(logging.WARNING):
        assert FaxPlusHook().get_outbox_fax("f1").id == "f1"
    assert f"asked to wait {WEEK} s (Retry-After); waiting at most 0.3 s" in caplog.text
    assert [entry["status"] for entry in control.requests()] == [429, 200]


def test_a_week_long_retry_after_is_capped_in_the_trigger(sandbox, control, monkeypatch, caplog):
    monkeypatch.setattr(retry, "MAX_RETRY_AFTER", 0.3)
    set_connection(monkeypatch, sandbox.base_url)
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 2}])
    control.add_fault(status=429, retry_after=str(WEEK), times=1)
    with caplog.at_level(logging.WARNING):
        [event] = trigger_events(seen_trigger(), timeout=20)
    assert event["status"] == "success", event
    assert "(Retry-After); waiting at most" in caplog.text
    statuses = [entry["status"] for entry in control.requests()]
    assert statuses[0] == 429
    assert statuses[-1] == 404
