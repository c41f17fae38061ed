"""The test virtualenv is what its lock names, and the lock keeps Airflow 2.11 clear of cryptography 51.

`scripts/dev.py` installs every virtualenv from `locks/airflow-<line>-py<python>.txt`, so a fresh clone runs
the suite on exactly the releases that passed it. `dev.py test --unlocked` runs it on the newest releases
instead (FAXPLUS_UNLOCKED=1), where only the lock comparison does not apply.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

import airflow
import pytest
from cryptography.fernet import Fernet

LOCKS = Path(__file__).resolve().parent.parent / "locks"
PROJECT = "airflow-provider-faxplus"
AIRFLOW_LINE = ".".join(airflow.__version__.split(".")[:2])


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_file() -> Path:
    return LOCKS / f"airflow-{AIRFLOW_LINE}-py{sys.version_info.major}.{sys.version_info.minor}.txt"


def locked_versions(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{lock.name}: not an exact pin: {line!r}"
            pins[canonical(name)] = version
    return pins


def installed_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonical(dist.metadata["Name"])
        # The checkout itself (editable) is not locked; an egg-info beside it may list it twice.
        if name != PROJECT:
            assert found.setdefault(name, dist.version) == dist.version, f"{name} installed twice"
    return found


@pytest.mark.skipif(os.environ.get("FAXPLUS_UNLOCKED") == "1", reason="a run on the newest releases")
def test_installed_versions_equal_the_lock() -> None:
    lock = lock_file()
    assert lock.exists(), f"no lock for Airflow {AIRFLOW_LINE} on this Python: {lock}"
    installed, pins = installed_versions(), locked_versions(lock)
    differences = {
        name: (installed.get(name), pins.get(name))
        for name in set(installed) | set(pins)
        if installed.get(name) != pins.get(name)
    }
    assert not differences, (
        f"installed vs {lock.name} (name: (installed, locked)): {sorted(differences.items())}"
    )
    assert pins["apache-airflow"] == airflow.__version__


@pytest.mark.skipif(AIRFLOW_LINE != "2.11", reason="Airflow 3 does not set attributes on MultiFernet")
def test_airflow_211_gets_cryptography_below_51() -> None:
    """What the README tells 2.11 users to keep (the lock, and `KNOWN_CAPS` when resolving anew)."""
    assert int(importlib.metadata.version("cryptography").split(".")[0]) < 51


def test_an_encrypted_connection_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a Fernet key set, a connection's password is stored encrypted and must decrypt. On Airflow
    2.11.2 with cryptography 51, `get_fernet()` raises AttributeError (it sets `is_encrypted` on a
    MultiFernet, which no longer takes attributes) and no connection can be read; the lock's pin avoids it."""
    from airflow.models import crypto
    from airflow.models.connection import Connection

    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", Fernet.generate_key().decode())
    if hasattr(crypto, "_fernet"):  # 2.11 caches the Fernet in a module global
        monkeypatch.setattr(crypto, "_fernet", None)
    if hasattr(crypto.get_fernet, "cache_clear"):  # 3.x caches it with functools.cache
        crypto.get_fernet.cache_clear()
    try:
        conn = Connection(conn_id="faxplus_lock_check", conn_type="faxplus", password="pat-under-test")
        assert conn.is_encrypted
        assert conn._password != "pat-under-test"  # stored encrypted
        assert conn.password == "pat-under-test"
    finally:
        if hasattr(crypto.get_fernet, "cache_clear"):
            crypto.get_fernet.cache_clear()
