"""Harness of the browser tests: Debian's chromium driven by Playwright against a real Airflow UI
(Airflow 3's ``api-server``, Airflow 2.11's ``webserver``) on 127.0.0.1, the sandbox as Fax.Plus.

Never ``playwright install``: the browser is the system's (``scripts/dev.py test`` installs it with
apt-get when it can); without it the browser tests skip and say why, except on CI, where they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from airflow import __version__ as airflow_version

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowHome
from tests.test_deployment import Deployment, _answers, _free_port, wait_for

AIRFLOW_3 = int(airflow_version.split(".")[0]) >= 3
LINE = "3.3" if AIRFLOW_3 else "2.11"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Airflow 2.11's webserver: every visitor is an admin, so the tests need no login step.
WEBSERVER_CONFIG = 'AUTH_ROLE_PUBLIC = "Admin"\n'


def require_chromium() -> str:
    """The browser's path; skip (fail on CI) when it is missing, saying why."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    why = (
        f"no browser at {CHROMIUM}: `python3 scripts/dev.py test` installs Debian's chromium with apt-get "
        "when run as root with registry access (this run could not)"
    )
    if os.environ.get("CI"):
        pytest.fail(why + "; CI must run the browser tests")
    pytest.skip(why)


@dataclass
class AirflowUi:
    """A running Airflow UI, the Airflow home it serves (so tasks and the CLI share its database) and
    the sandbox the connections point at."""

    url: str
    home: AirflowHome
    sandbox: SandboxServer
    deployment: Deployment


@contextmanager
def airflow_ui(dags_folder: Path, home_path: Path, token: str) -> Iterator[AirflowUi]:
    """Start the sandbox and this line's Airflow UI (one start per test module), stop both after."""
    port = _free_port()
    (home_path / "webserver_config.py").write_text(WEBSERVER_CONFIG)
    with SandboxServer(token=token) as sandbox:
        env = {"AIRFLOW__CORE__TEST_CONNECTION": "Enabled", "FAXPLUS_EXAMPLE_POKE_INTERVAL": "1"}
        if AIRFLOW_3:
            # The simple auth manager makes every visitor an admin.
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
            env["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_hex(32)
        else:
            env["AIRFLOW__WEBSERVER__SECRET_KEY"] = secrets.token_hex(32)
        home = AirflowHome.create(dags_folder=dags_folder, extra_env=env, path=home_path)
        deployment = Deployment(home, sandbox)
        url = f"http://127.0.0.1:{port}"
        if AIRFLOW_3:
            deployment.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        else:
            deployment.start(
                "webserver", "webserver", "--hostname", "127.0.0.1", "--port", str(port), "--workers", "1"
            )
        try:
            wait_for(
                lambda: _answers(f"{url}/health" if not AIRFLOW_3 else f"{url}/api/v2/monitor/health"),
                "the Airflow UI",
                timeout=180,
            )
            yield AirflowUi(url, home, sandbox, deployment)
        finally:
            deployment.stop_all()


@contextmanager
def chromium_page(executable: str) -> Iterator[object]:
    """One headless chromium and one page, reused by every test of a module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.set_default_timeout(60_000)  # a loaded machine renders slowly; never a reason to fail
            yield page
        finally:
            browser.close()


def copy_dags(target: Path, *names: str) -> Path:
    root = Path(__file__).resolve().parent.parent
    for name in names:
        shutil.copy(root / "example_dags" / name, target)
    return target
