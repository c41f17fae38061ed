"""OAuth2 and token rotation in real DAG runs (``airflow dags test``) against the sandbox."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowHome
from tests.test_oauth import CLIENT_ID, CLIENT_SECRET, LIFETIME, WAIT_POLLS, token_bounds

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> AirflowHome:
    path = tmp_path_factory.mktemp("airflow-oauth")
    connections = path / "connections.json"
    connections.write_text("{}")
    return AirflowHome.create(
        dags_folder=ROOT / "tests" / "dags",
        # Connections from a secrets backend file that a test can rewrite while a DAG runs.
        extra_env={
            "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"connections_file_path": str(connections)}),
        },
        path=path,
    )


def set_connection(home: AirflowHome, value: dict) -> None:
    (home.path / "connections.json").write_text(json.dumps({"faxplus_default": value}))


def everything_written(home: AirflowHome, output: str) -> str:
    """The run's console output (not masked: a secret there was printed by someone) and its log files."""
    logs = [p.read_text(errors="replace") for p in (home.path / "logs").rglob("*") if p.is_file()]
    return "\n".join([output, *logs])


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_sensor_waits_through_three_token_lifetimes_in_a_real_dag_run(home, sandbox, control, mode):
    control.oauth_settings(clients={CLIENT_ID: CLIENT_SECRET}, access_token_lifetime=LIFETIME)
    refresh = control.mint_refresh_token(CLIENT_ID)
    set_connection(home, json.loads(sandbox.oauth_connection_json(CLIENT_ID, CLIENT_SECRET, refresh)))
    fax_id = control.create_fax(lifecycle=[{"status": "sending", "polls": WAIT_POLLS}])["id"]
    run = home.dags_test(f"faxplus_sensor_{mode}", conf={"outbox_fax_id": fax_id})
    assert run.succeeded, run.output[-5000:]
    [line] = run.lines_with("FAXPLUS-RESULT:")
    assert json.loads(line)["outbox_fax_id"] == fax_id
    tokens, low, high = token_bounds(control, fax_id)
    assert low <= tokens <= high, (tokens, low, high)
    written = everything_written(home, run.output)
    assert "Fax.Plus OAuth2 access token refreshed" in written  # our log lines are in what is searched
    secrets = [CLIENT_SECRET, refresh, *sandbox.state.oauth.access_tokens]
    assert len(secrets) == 2 + tokens
    leaked = [index for index, secret in enumerate(secrets) if secret in written]
    assert not leaked, leaked


def test_deferred_sensor_picks_up_a_pat_rotated_in_the_secrets_backend(home, monkeypatch):
    """The PAT is rotated in the secrets backend while the trigger waits; the old one stops working.
    The task succeeds: one 401, the connection read again, the wait goes on."""
    with SandboxServer(tokens={"alohi_pat_old": None, "alohi_pat_new": None}) as server:
        client = server.client
        assert client is not None
        connection = {"conn_type": "faxplus", "host": server.base_url, "password": "alohi_pat_old"}
        set_connection(home, connection)
        fax_id = client.create_fax(lifecycle=[{"status": "sending", "polls": 10}])["id"]
        runs = []
        runner = threading.Thread(
            target=lambda: runs.append(
                home.dags_test("faxplus_sensor_deferrable", conf={"outbox_fax_id": fax_id})
            )
        )
        runner.start()
        try:
            # After two polls (the sensor's first look and the trigger's first), rotate.
            while len(server.state.requests) < 2 and runner.is_alive():
                time.sleep(0.02)
            set_connection(home, {**connection, "password": "alohi_pat_new"})
            del server.state.tokens["alohi_pat_old"]
        finally:
            runner.join(600)
        [run] = runs
        assert run.succeeded, run.output[-5000:]
        statuses = [entry["status"] for entry in client.requests()]
        assert 401 in statuses, statuses
        assert statuses[statuses.index(401) + 1] == 200
        assert statuses[-1] == 404
