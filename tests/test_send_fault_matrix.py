"""Every row of the send fault matrix (tests/fault_matrix.py ``SEND_FAULTS``) over real HTTP to the
sandbox: what the hook raises, how many requests it made, the outcome the one rule (``send_outcome``)
gives it, and whether the sandbox made a fax; a row that says "not sent" must have made none."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_faxplus import send
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.sandbox.dagtest import wait_until
from tests.fault_matrix import EXTRA, SEND_FAULTS, SEND_METHODS, SEND_PATHS, SendFault, render_send

CLIENT_ID = "APIK-send-matrix"
CLIENT_SECRET = "csecret-send-matrix-SENTINEL"
ROOT = Path(__file__).resolve().parent.parent
PDF = b"%PDF-1.4\n% tiny\n%%EOF\n"


@pytest.fixture
def dead_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("fault", [pytest.param(f, id=f.key) for f in SEND_FAULTS])
def test_send_fault(fault: SendFault, sandbox, control, dead_port, monkeypatch):
    value = sandbox.connection_json(**EXTRA)
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", value)
    hook = FaxPlusHook()
    path = hook.upload_file(PDF, file_name="a.pdf").path if fault.request in ("send", "token") else None
    hook.close()
    if fault.request == "token":  # a connection with an OAuth2 refresh token: the send needs a token
        control.oauth_settings(clients={CLIENT_ID: CLIENT_SECRET})
        refresh = control.mint_refresh_token(CLIENT_ID)
        value = sandbox.oauth_connection_json(CLIENT_ID, CLIENT_SECRET, refresh, **EXTRA)
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", value)
    if fault.inject is None:
        value = value.replace(sandbox.base_url, f"http://127.0.0.1:{dead_port}/v3")
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", value)
    else:
        control.add_fault(
            method=SEND_METHODS[fault.request], path_endswith=SEND_PATHS[fault.request], **fault.inject
        )
    control.requests(clear=True)
    hook = FaxPlusHook()
    calls = {
        "send": lambda: hook.send_fax("+16699990001", [path]),
        "upload": lambda: hook.upload_file(PDF, file_name="a.pdf"),
        "list": lambda: hook.list_outbox_faxes(),
        "token": lambda: hook.send_fax("+16699990001", [path]),
    }
    try:
        with pytest.raises(fault.raises) as raised:
            calls[fault.request]()
    finally:
        hook.close()
    assert send.send_outcome(fault.request, raised.value) == fault.outcome
    if fault.request == "token":  # the send it stopped was never made
        assert send.send_outcome("send", raised.value) == send.NOT_SENT
        assert not [e for e in control.requests() if e["path"].endswith("/outbox")]
    assert len(control.requests()) == fault.attempts
    if fault.made:
        wait_until(lambda: len(control.faxes()) == 1, "the fax", timeout=30, interval=0.1)
    else:
        assert control.faxes() == []


def test_reliability_doc_shows_the_send_matrix():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    assert render_send() in doc, "docs/reliability.md is out of date: run python3 scripts/dev.py docs"
