from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

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
