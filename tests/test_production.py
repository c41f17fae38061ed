"""Production-shaped services of the deployment tests: the throw-away PostgreSQL cluster (metadata
database) and Redis server (Celery broker), and an Airflow home really using PostgreSQL."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from airflow_provider_faxplus.sandbox.dagtest import AirflowHome
from airflow_provider_faxplus.sandbox.services import PostgresCluster, RedisServer, redis_missing

ROOT = Path(__file__).resolve().parent.parent
DIALECT = """
from airflow import settings
settings.configure_orm()
print("FAXPLUS-OUT:", settings.engine.dialect.name, settings.engine.url.database)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_home_on_the_cluster_runs_airflow_on_postgresql(postgres, tmp_path):
    home = AirflowHome.create(dags_folder=ROOT / "example_dags", postgres=postgres, path=tmp_path / "home")
    dialect, database = home.python(DIALECT).split()
    assert dialect == "postgresql"
    assert not (home.path / "airflow.db").exists()
    # Its own database, a copy of the migrated one: Airflow's tables are there.
    assert postgres.sql("SELECT count(*) FROM dag_run", database=database).strip() == "0"
    other = AirflowHome.create(dags_folder=ROOT / "example_dags", postgres=postgres, path=tmp_path / "other")
    assert other.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] != home.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_a_home_on_the_cluster_refuses_settings_that_migrate_would_store(postgres, tmp_path):
    with pytest.raises(ValueError, match="`db migrate` stores"):
        AirflowHome.create(
            dags_folder=tmp_path, postgres=postgres, extra_env={"AIRFLOW__DATABASE__SQL_ENGINE_ENCODING": "x"}
        )


def test_the_cluster_leaves_no_server_and_no_files(postgres):
    with PostgresCluster() as cluster:
        pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        assert _alive(pid)
        assert cluster.sql("SELECT 1").strip() == "1"
        path = cluster.path
    assert not _alive(pid)
    assert not path.exists()


def test_the_redis_server_answers_and_leaves_nothing():
    problem = redis_missing()
    if problem:
        pytest.skip(problem)
    with RedisServer() as redis:
        assert redis.process is not None
        pid, path = redis.process.pid, redis.path
        with socket.create_connection(("127.0.0.1", redis.port), timeout=10) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b"+PONG\r\n"
    assert not _alive(pid)
    assert not path.exists()
