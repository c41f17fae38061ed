from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

# Unit tests need no Airflow database: connections come from AIRFLOW_CONN_* variables.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="faxplus-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.sandbox import SandboxClient, SandboxServer
from airflow_provider_faxplus.sandbox.services import PostgresCluster, postgres_missing
from airflow_provider_faxplus.sandbox.state import Clock

TOKEN = "alohi_pat_T0KEN-sentinel-9f3b2c"  # distinctive, so leaks are easy to find
# The sandbox's OAuth2 client (tests/test_oauth.py, tests/test_secrets.py).
CLIENT_ID = "APIK-oauth-client-7"
CLIENT_SECRET = "csecret-SENTINEL-4d2a"
REDIRECT_URI = "https://airflow.example/oauth/callback"


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(token=TOKEN) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> SandboxServer:
    """The shared sandbox, emptied before each test."""
    assert sandbox_server.client is not None
    sandbox_server.client.reset()
    # Real time again: an earlier test's advance() must not shift this test's clock.
    sandbox_server.state.clock = Clock()
    sandbox_server.client.set_pace(1.0)
    sandbox_server.client.settings(not_found_status=404, sending_modify_status=409, log_response_bodies=True)
    return sandbox_server


@pytest.fixture(autouse=True)
def spec_conformance(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that used the shared sandbox: what our code sent, and what the sandbox answered,
    must conform to outbox.openapi.yaml."""
    yield
    if "sandbox" not in request.fixturenames:
        return
    from tests.conformance import problems

    server: SandboxServer = request.getfixturevalue("sandbox_server")
    assert server.client is not None
    found = problems(server.root_url, server.client.requests())
    assert not found, "spec conformance:\n" + "\n".join(found[:20])


@pytest.fixture
def control(sandbox: SandboxServer) -> SandboxClient:
    assert sandbox.client is not None
    return sandbox.client


@pytest.fixture
def faxplus_conn(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """``faxplus_default`` pointing at the sandbox, with short backoffs so retries stay fast."""
    value = sandbox.connection_json(initial_backoff=0.05, timeout=5)
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", value)
    return value


@pytest.fixture
def oauth_sandbox(sandbox: SandboxServer, control: SandboxClient) -> SandboxServer:
    """The shared sandbox with an OAuth2 client; a fresh refresh token per test (and so a fresh token
    source: the cache is keyed by the secrets)."""
    control.oauth_settings(clients={CLIENT_ID: CLIENT_SECRET})
    return sandbox


@pytest.fixture
def refresh_token(oauth_sandbox: SandboxServer, control: SandboxClient) -> str:
    return control.mint_refresh_token(CLIENT_ID)


@pytest.fixture
def hook(faxplus_conn: str) -> Iterator[FaxPlusHook]:
    hook = FaxPlusHook()
    yield hook
    hook.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throw-away PostgreSQL cluster (Debian's postgresql, which `scripts/dev.py test` installs) for
    the production-shaped deployment tests; each Airflow home gets a database of its own in it."""
    problem = postgres_missing()
    if problem:
        pytest.skip(f"no PostgreSQL: {problem}")
    with PostgresCluster() as cluster:
        yield cluster
