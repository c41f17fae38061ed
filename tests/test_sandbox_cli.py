from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import requests


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
