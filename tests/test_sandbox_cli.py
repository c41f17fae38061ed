from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook


def test_console_script_serves_seeded_faxes_and_stops_on_sigterm():
    command = shutil.which("faxplus-sandbox", path=str(Path(sys.executable).parent))
    assert command
    proc = subprocess.Popen(
        [command, "--port", "0", "--seed", "2", "--stage-seconds", "60"], stdout=subprocess.PIPE, text=True
    )
    try:
        lines = []  # by prefix: Airflow may log to stdout too
        while sum(line.startswith("seeded outbox fax") for line in lines) < 2:
            line = proc.stdout.readline()
            assert line, f"the sandbox exited early: {lines}"
            lines.append(line.strip())
        [listening] = [line for line in lines if line.startswith("Fax.Plus sandbox listening on ")]
        base_url = listening.rsplit(" ", 1)[1]
        [export] = [line for line in lines if line.startswith("export AIRFLOW_CONN_FAXPLUS_DEFAULT=")]
        conn = json.loads(export.split("=", 1)[1].strip("'"))
        assert conn == {"conn_type": "faxplus", "host": base_url, "password": "sandbox-token"}
        seeded = [line.rsplit(" ", 1)[1] for line in lines if line.startswith("seeded outbox fax")]
        for fax_id in seeded:
            response = requests.get(
                f"{base_url}/accounts/self/outbox/{fax_id}",
                headers={"Authorization": "Bearer sandbox-token"},
                timeout=5,
            )
            assert response.json()["status"] == "submitted"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.stdout.close()


def test_bound_to_every_interface_it_prints_a_connection_the_provider_accepts(monkeypatch):
    command = shutil.which("faxplus-sandbox", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen(
        [command, "--host", "0.0.0.0", "--port", "0", "--seed", "1"],  # noqa: S104 - the case under test
        stdout=subprocess.PIPE,
        text=True,
        # Bound to every interface, the control API needs a control token (tests/test_secrets.py).
        env={**os.environ, "FAXPLUS_SANDBOX_CONTROL_TOKEN": "ctl-test-token"},
    )
    try:
        lines = []
        while not any(line.startswith("seeded outbox fax") for line in lines):
            line = proc.stdout.readline()
            assert line, f"the sandbox exited early: {lines}"
            lines.append(line.strip())
        [export] = [line for line in lines if line.startswith("export AIRFLOW_CONN_FAXPLUS_DEFAULT=")]
        conn = json.loads(export.split("=", 1)[1].strip("'"))
        assert conn["host"].startswith("http://127.0.0.1:")
        assert any("TLS" in line and "https" in line for line in lines)
        fax_id = lines[-1].rsplit(" ", 1)[1]
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", json.dumps(conn))
        hook = FaxPlusHook()  # the provider's own config rules
        assert hook.get_outbox_fax(fax_id).status == "submitted"
        hook.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.stdout.close()


def test_seeded_faxes_wait_for_their_first_look_then_take_the_stage_seconds():
    """A newcomer runs `db migrate` and `dags test` after starting the sandbox: its seeded faxes must still
    be there, however long that took (here an hour on the sandbox's clock, which stands still: --pace 0)."""
    command = shutil.which("faxplus-sandbox", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen(
        [command, "--port", "0", "--seed", "2", "--stage-seconds", "5", "--pace", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while sum(line.startswith("seeded outbox fax") for line in lines) < 2:
            line = proc.stdout.readline()
            assert line, f"the sandbox exited early: {lines}"
            lines.append(line.strip())
        assert (
            "Seeded faxes stay 'submitted' until first looked at, then leave the outbox 20 s later "
            "(--stage-seconds 5 per status)" in lines
        )
        [listening] = [line for line in lines if line.startswith("Fax.Plus sandbox listening on ")]
        base_url = listening.rsplit(" ", 1)[1]
        [control] = [line for line in lines if line.startswith("Control API: ")]
        control_url = control.split()[2]
        first, second = (line.rsplit(" ", 1)[1] for line in lines if line.startswith("seeded outbox fax"))

        def advance(seconds: float) -> None:
            requests.post(f"{control_url}/clock", json={"advance": seconds}, timeout=5).raise_for_status()

        def status(fax_id: str) -> str | int:
            response = requests.get(
                f"{base_url}/accounts/self/outbox/{fax_id}",
                headers={"Authorization": "Bearer sandbox-token"},
                timeout=5,
            )
            return response.json()["status"] if response.status_code == 200 else response.status_code

        advance(3600)
        assert status(first) == "submitted"  # its first look: its lifecycle starts now
        advance(5)
        assert status(first) == "converting"
        advance(10)
        assert status(first) == "sending"
        assert status(second) == "submitted"  # not looked at until now: still waiting
        advance(5)
        assert status(first) == 404  # left the outbox, 20 s after its first look
        assert status(second) == "converting"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.stdout.close()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--stage-seconds", "-1"], "--stage-seconds"),
        (["--stage-seconds", "nan"], "--stage-seconds"),
        (["--stage-seconds", "inf"], "--stage-seconds"),
        (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"),
        (["--pace", "-1"], "--pace"),
        (["--pace", "nan"], "--pace"),
        (["--seed", "-3"], "--seed"),
    ],
)
def test_a_hostile_option_value_is_refused_by_name_without_a_traceback(args, option):
    """Refused before the server starts: argparse's message naming the option, exit status 2. (A
    subprocess with a timeout: accepted, the sandbox would serve until stopped.)"""
    command = shutil.which("faxplus-sandbox", path=str(Path(sys.executable).parent))
    done = subprocess.run(
        [command, "--port", "0", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert f"argument {option}: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stdout


def test_a_port_in_use_is_one_clear_line_not_a_traceback():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    command = shutil.which("faxplus-sandbox", path=str(Path(sys.executable).parent))
    try:
        done = subprocess.run(
            [command, "--port", str(port)], capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        taken.close()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"faxplus-sandbox: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert "Fax.Plus sandbox listening" not in done.stdout
