"""Production-shaped deployments: the throw-away PostgreSQL cluster (metadata database) and Redis server
(Celery broker), an Airflow home really using PostgreSQL, and a CeleryExecutor deployment with two workers,
one killed in the middle of a send."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowDeployment, AirflowHome, wait_until
from airflow_provider_faxplus.sandbox.services import PostgresCluster, RedisServer, redis_missing
from tests.test_deployment import _XCOM, AIRFLOW_3, TOKEN

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


# A CeleryExecutor deployment: PostgreSQL, Redis, api-server, dag-processor, scheduler, triggerer and two
# Celery workers, running the conf-driven mapped example and the send example.
MAPPED_DAG, SEND_DAG = "example_faxplus_mapped", "example_faxplus_send_and_wait"
DESTINATIONS = ["+16699990001", "+16699990002", "+16699990003"]
# A task whose heartbeat stops (its worker died) fails after this long and is retried.
HEARTBEAT_TIMEOUT = 20
_TRIGGER = """
import json, sys
from airflow.api.client import get_current_api_client
client = get_current_api_client()
for dag_id, run_id, conf in json.loads(sys.argv[1]):
    # Airflow 2.11 gives each run a logical date, unique per DAG: keep the microseconds apart.
    client.trigger_dag(dag_id=dag_id, run_id=run_id, conf=conf, replace_microseconds=False)
print("FAXPLUS-OUT: triggered")
"""


@dataclass
class Celery:
    deployment: AirflowDeployment
    sandbox: SandboxServer
    postgres: PostgresCluster

    def _database(self) -> str:
        return self.deployment.home.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("/")[3].split("?")[0]

    def runs(self) -> dict[str, str]:
        """run_id -> state of every run of the two DAGs."""
        rows = self.postgres.sql(
            "SELECT run_id, state FROM dag_run WHERE dag_id LIKE 'example_faxplus_%'",
            database=self._database(),
        )
        return dict(line.split("|") for line in rows.splitlines() if line)

    def tasks(self) -> list[list[Any]]:
        """[dag_id, run_id, task_id, map_index, state, try_number] of every task instance (psql: fast)."""
        rows = self.postgres.sql(
            "SELECT dag_id, run_id, task_id, map_index, state, try_number FROM task_instance"
            " WHERE dag_id LIKE 'example_faxplus_%' ORDER BY 1, 2, 3, 4",
            database=self._database(),
        )
        found = [line.split("|") for line in rows.splitlines() if line]
        return [
            [dag, run, task, int(index), state, int(tries)] for dag, run, task, index, state, tries in found
        ]


@pytest.fixture(scope="module")
def celery(postgres, tmp_path_factory) -> Iterator[Celery]:
    problem = redis_missing()
    if problem:
        pytest.skip(problem)
    dags = tmp_path_factory.mktemp("celery-dags")
    for dag_id in (MAPPED_DAG, SEND_DAG):
        shutil.copy(ROOT / "example_dags" / f"{dag_id}.py", dags)
    with SandboxServer(token=TOKEN) as sandbox, RedisServer() as redis:
        uri = f"faxplus://:{quote(TOKEN, safe='')}@{quote(sandbox.base_url, safe='')}"
        home = AirflowHome.create(
            dags_folder=dags,
            connections={"faxplus_default": uri},
            extra_env={
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": redis.url,
                "FAXPLUS_EXAMPLE_POKE_INTERVAL": "1",
                # The same settings under their Airflow 3 and 2.11 names.
                **(
                    {
                        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                    }
                    if AIRFLOW_3
                    else {
                        "AIRFLOW__SCHEDULER__SCHEDULER_ZOMBIE_TASK_THRESHOLD": str(HEARTBEAT_TIMEOUT),
                        "AIRFLOW__SCHEDULER__ZOMBIE_DETECTION_INTERVAL": "2",
                        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                    }
                ),
            },
            path=tmp_path_factory.mktemp("celery-home"),
            postgres=postgres,
        )
        with AirflowDeployment.airflow3(home) if AIRFLOW_3 else AirflowDeployment(home) as deployment:
            if not AIRFLOW_3:  # the scheduler parses the DAGs; there is no api-server
                for name in ("scheduler", "triggerer"):
                    deployment.start(name, name)
            # One task at a time each: the worker killed below runs nothing but the send it interrupts.
            for name in ("worker-1", "worker-2"):
                deployment.start(
                    name,
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"{name}@%h",
                    "--concurrency",
                    "1",
                    "--skip-serve-logs",
                )
            yield Celery(deployment, sandbox, postgres)


def _destination(send: dict[str, Any]) -> str:
    """The one destination of a logged send."""
    to = json.loads(send["body"])["to"]
    [number] = to if isinstance(to, list) else [to]
    return str(number)


def _descendants(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def test_celery_workers_run_the_examples_and_a_killed_worker_never_sends_twice(celery):
    deployment, control = celery.deployment, celery.sandbox.client
    home = deployment.home
    assert control is not None
    dialect, _ = home.python(DIALECT).split()
    assert dialect == "postgresql"
    control.settings(send_lifecycle=[{"status": "submitted", "seconds": 3600}])
    outbox = [
        control.create_fax(lifecycle=[{"status": "submitted", "seconds": 3600}])["id"] for _ in range(3)
    ]
    # The first send is handled (its fax exists), then its answer held: its worker dies waiting for it.
    control.add_fault(hold_after=180, method="POST", path_endswith="/outbox")

    deployment.unpause(MAPPED_DAG, SEND_DAG)
    runs = [[MAPPED_DAG, "mapped", {"outbox_fax_ids": outbox}]]
    runs += [[SEND_DAG, f"send-{n}", {"to": to}] for n, to in enumerate(DESTINATIONS)]
    home.python(_TRIGGER, json.dumps(runs))

    def sends() -> list[dict[str, Any]]:
        return [e for e in control.requests() if e["method"] == "POST" and e["path"].endswith("/outbox")]

    def held() -> dict[str, Any] | None:
        """The send whose answer the sandbox holds, once handled (its fax exists)."""
        found = [e for e in sends() if e.get("fault") and e.get("handled_status")]
        return found[0] if found else None

    # Within the send's 30 s read timeout: the worker dies while the send waits for its answer.
    wait_until(lambda: held() is not None, "the held send to be handled", 600, 0.2)
    sandbox_port = int(celery.sandbox.base_url.split(":")[2].split("/")[0])

    def waiting_on_sandbox(name: str) -> set[int]:
        """The local ports of the worker's (and its task's) connections to the sandbox."""
        ports = set()
        for pid in [deployment.processes[name].pid, *_descendants(deployment.processes[name].pid)]:
            with suppress(psutil.Error):
                for conn in psutil.Process(pid).net_connections("tcp"):
                    if conn.raddr and conn.raddr.port == sandbox_port and conn.status == "ESTABLISHED":
                        ports.add(conn.laddr.port)
        return ports

    # The held request's connection stays open; another task's requests come and go.
    first_look = {name: waiting_on_sandbox(name) for name in ("worker-1", "worker-2")}
    time.sleep(1)
    [worker] = [name for name in first_look if first_look[name] & waiting_on_sandbox(name)]
    held_entry = held()
    assert held_entry is not None
    [held_run] = [run for run in runs if run[2].get("to") == _destination(held_entry)]
    held_key = [SEND_DAG, held_run[1], "send_fax", -1]
    # A crash: SIGKILL to the worker and every process it started, mid-send.
    process = deployment.processes.pop(worker)
    for pid in [process.pid, *_descendants(process.pid)]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    killed_at = time.monotonic()

    # Airflow fails the silent task and retries it on the other worker: it finds its fax and adopts it.
    def retried() -> bool:
        deployment.check_alive()
        return any(task[:4] == held_key and task[4] == "success" and task[5] == 2 for task in celery.tasks())

    wait_until(retried, "the interrupted send to be retried and succeed", 300, 2)
    recovered = time.monotonic() - killed_at
    # No fax sent twice: one send request per destination, the interrupted one included.
    assert sorted(_destination(entry) for entry in sends()) == DESTINATIONS

    # Every sensor deferred and looked once at its fax: now the faxes leave the outbox.
    def all_polled() -> bool:
        waiting = [task for task in celery.tasks() if task[2] == "wait_until_sent"]
        looked = {e["path"].rsplit("/", 1)[1] for e in control.requests() if e["method"] == "GET"}
        faxes = {fax["id"] for fax in control.faxes()}
        return len(waiting) == 6 and all(task[4] == "deferred" for task in waiting) and faxes <= looked

    wait_until(all_polled, "every sensor deferred and polling", 300, 2)
    control.advance(3600)
    wait_until(
        lambda: celery.runs() == {"mapped": "success", **{run[1]: "success" for run in runs[1:]}},
        "every run to succeed",
        300,
        2,
    )

    # No fax sent twice: one POST per destination, one fax per destination in the account.
    assert sorted(_destination(entry) for entry in sends()) == DESTINATIONS
    sent = [fax for fax in control.faxes() if fax["id"] not in outbox]
    assert len(sent) == len(DESTINATIONS), sent
    # Each task ran once, but the interrupted send (twice: it adopted its fax on the retry).
    tasks = celery.tasks()
    assert len(tasks) == 8 + 5 * 3, tasks
    assert {(task[4], task[5]) for task in tasks if task[:4] != held_key} == {("success", 1)}, tasks
    sent_xcoms = json.loads(home.python(_XCOM, SEND_DAG, "send_fax"))
    assert sorted(xcom["adopted"] for xcom in sent_xcoms) == [[], [], [held_run[2]["to"]]], sent_xcoms
    # Each sensor deferred once: one trigger log each.
    trigger_logs = sorted((home.path / "logs").glob("dag_id=*/**/task_id=wait_until_sent/**/*.trigger.*.log"))
    assert len(trigger_logs) == 6, trigger_logs
    # Both workers ran tasks.
    for name in ("worker-1", "worker-2"):
        said = (home.path / f"{name}.out").read_bytes()
        assert b"execute_workload" in said or b"execute_command" in said, name  # Airflow 3 / 2.11
    print(f"FAXPLUS-CELERY: the interrupted send succeeded {recovered:.0f} s after its worker was killed")
    leaks = [
        str(path) for path in home.path.rglob("*") if path.is_file() and TOKEN.encode() in path.read_bytes()
    ]
    assert leaks == []
