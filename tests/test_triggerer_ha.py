"""Two real ``airflow triggerer`` processes share the deferred sensors of one mapped task on a PostgreSQL
metadata database; one is killed (SIGKILL, as a crash) and the other takes over its triggers: every
sensor still completes exactly once.

Both triggerers run before any sensor defers and race for every trigger: on PostgreSQL Airflow's claim
(``SELECT ... FOR UPDATE SKIP LOCKED``) gives each trigger to one of them. (On SQLite, which takes no row
locks, both could claim one trigger: see the README.) Which triggerer wins which trigger is up to the
race; the one holding the most is killed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from urllib.parse import quote

import psutil
import pytest
import sqlalchemy

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowHome
from tests.test_deployment import _XCOM, AIRFLOW_3, ROOT, TOKEN, Deployment, _answers, _free_port, wait_for

DAG_ID = "faxplus_triggerer_ha"
FAXES = 6
# Failover: a triggerer whose heartbeat (every second here) is older than the health-check threshold is
# dead and its triggers go to the others. Loose enough that a busy machine does not kill a live one.
HEALTH_CHECK_THRESHOLD = 10
VERDICT = "it has left the outbox"
_DIALECT = """
from airflow import settings
settings.configure_orm()
print("FAXPLUS-OUT:", settings.engine.dialect.name)
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, postgres) -> Iterator[Deployment]:
    dags = tmp_path_factory.mktemp("ha-dags")
    shutil.copy(ROOT / "tests" / "dags" / f"{DAG_ID}.py", dags)
    port = _free_port()
    with SandboxServer(token=TOKEN) as sandbox:
        uri = f"faxplus://:{quote(TOKEN, safe='')}@{quote(sandbox.base_url, safe='')}"
        home = AirflowHome.create(
            dags_folder=dags,
            connections={"faxplus_default": uri},
            extra_env={
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_CHECK_THRESHOLD),
            },
            path=tmp_path_factory.mktemp("ha-home"),
            postgres=postgres,
        )
        deployed = Deployment(home, sandbox)
        if AIRFLOW_3:
            deployed.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
            wait_for(lambda: _answers(f"http://127.0.0.1:{port}/api/v2/monitor/health"), "the api-server")
        try:
            yield deployed
        finally:
            deployed.stop_all()


_engines: dict[str, sqlalchemy.engine.Engine] = {}


def _query(home: AirflowHome, sql: str, **params: object) -> list[tuple[object, ...]]:
    """Read Airflow's metadata database directly: cheaper than an Airflow process per look."""
    url = home.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    if url not in _engines:
        _engines[url] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with _engines[url].connect() as connection:
        return [tuple(row) for row in connection.execute(sqlalchemy.text(sql), params)]


def _triggerer_jobs(home: AirflowHome) -> list[int]:
    rows = _query(home, "SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running'")
    return sorted(int(str(row[0])) for row in rows)


def _assignments(home: AirflowHome) -> dict[int, int | None]:
    """map_index -> triggerer job id of each deferred sensor's trigger (None: not assigned yet)."""
    rows = _query(
        home,
        "SELECT ti.map_index, t.triggerer_id FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id"
        " WHERE ti.dag_id = :dag_id AND ti.task_id = 'wait' AND ti.state = 'deferred'",
        dag_id=DAG_ID,
    )
    return {int(str(index)): None if job is None else int(str(job)) for index, job in rows}


def _trigger_logs(deployment: Deployment) -> dict[int, dict[int, str]]:
    """map_index -> triggerer job id -> what that triggerer logged for the sensor's trigger."""
    found: dict[int, dict[int, str]] = {}
    for path in deployment.trigger_logs(DAG_ID):
        if "task_id=wait" not in str(path):
            continue
        index = int(path.parent.name.removeprefix("map_index="))
        job = int(path.name.split(".trigger.")[1].removesuffix(".log"))
        found.setdefault(index, {})[job] = path.read_text(errors="replace")
    return found


def _verdicts(said: str) -> int:
    """The provider's verdict lines (not Airflow's line quoting the event that carries it)."""
    return sum(VERDICT in line and "TriggerEvent" not in line for line in said.splitlines())


def _polled_by(deployment: Deployment, job: int, indexes: set[int]) -> bool:
    logs = _trigger_logs(deployment)
    return all("is submitted" in logs.get(index, {}).get(job, "") for index in indexes)


def test_sensors_on_two_triggerers_complete_once_when_one_is_killed(deployment):
    home, control = deployment.home, deployment.sandbox.client
    assert control is not None
    ids = [
        control.create_fax(lifecycle=[{"status": "submitted", "seconds": 3600}])["id"] for _ in range(FAXES)
    ]
    receipt = control.create_fax(lifecycle=[{"status": "submitted", "seconds": 10**6}])["id"]

    assert home.python(_DIALECT) == "postgresql"

    # Both triggerers run before any sensor defers: they race for every trigger.
    # (One after the other only to tell their jobs apart.)
    job_of: dict[int, str] = {}
    for name in ("a", "b"):
        deployment.start(name, "triggerer")
        wait_for(lambda: len(_triggerer_jobs(home)) == len(job_of) + 1, f"triggerer {name}'s job")
        [job] = set(_triggerer_jobs(home)) - set(job_of)
        job_of[job] = name
    jobs = sorted(job_of)
    run = deployment.dags_test(DAG_ID, {"outbox_fax_ids": ids, "receipt_fax_id": receipt})
    try:
        wait_for(lambda: len(_assignments(home)) == FAXES, "every sensor deferred", timeout=300)
        wait_for(lambda: None not in _assignments(home).values(), "every trigger claimed")
        before = _assignments(home)
        assert set(before.values()) <= set(jobs), before
        held = Counter(before.values())
        first = held.most_common(1)[0][0]  # the one to kill: it holds the most
        [second] = [job for job in jobs if job != first]
        on_first = {index for index, job in before.items() if job == first}
        on_second = {index for index, job in before.items() if job == second}
        wait_for(lambda: _polled_by(deployment, first, on_first), "the first triggerer's polls")
        wait_for(lambda: _polled_by(deployment, second, on_second), "the second triggerer's polls")
        # Each trigger ran in one triggerer only: the claims did not overlap.
        assert {index: sorted(logs) for index, logs in _trigger_logs(deployment).items()} == {
            index: [job] for index, job in before.items()
        }
        print(f"FAXPLUS-HA: claims {len(on_first)} + {len(on_second)}")

        # A crash: SIGKILL to the triggerer and every process it started (its trigger runner on Airflow 3).
        process = deployment.processes.pop(job_of[first])
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        for member in family:
            with suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGKILL)
        process.wait()
        killed_at = time.monotonic()
        wait_for(
            lambda: set(_assignments(home).values()) == {second},
            "the surviving triggerer to take over the dead one's triggers",
            timeout=120,
        )
        failover = time.monotonic() - killed_at
        wait_for(
            lambda: _polled_by(deployment, second, on_first), "the survivor's polls of the moved triggers"
        )

        control.advance(3600)  # now every fax leaves the outbox
        returncode, output = run.finish(timeout=300)
    finally:
        if run.process.poll() is None:  # a failed wait: leave no dags test (and its workers) behind
            run.process.terminate()
            run.process.wait(timeout=60)
    assert returncode == 0, output[-5000:]

    # Every task instance succeeded in its first try.
    tasks = _query(
        home,
        "SELECT task_id, map_index, state, try_number FROM task_instance WHERE dag_id = :dag_id",
        dag_id=DAG_ID,
    )
    assert len(tasks) == 2 + FAXES, tasks  # fax_ids, FAXES x wait, record
    assert {(state, tries) for _, _, state, tries in tasks} == {("success", 1)}, tasks
    assert not list((home.path / "logs").glob(f"dag_id={DAG_ID}/**/attempt=2*"))

    # One verdict per sensor, from the triggerer that ran its trigger last; the moved ones' from the survivor.
    logs = _trigger_logs(deployment)
    for index in range(FAXES):
        verdicts = {job: _verdicts(said) for job, said in logs[index].items()}
        assert verdicts == ({first: 0, second: 1} if index in on_first else {second: 1}), (index, verdicts)
    [xcoms] = [json.loads(home.python(_XCOM, DAG_ID, "wait"))]
    assert sorted(xcom["outbox_fax_id"] for xcom in xcoms) == sorted(ids)
    assert {xcom["reason"] for xcom in xcoms} == {"not_found"}

    # The downstream effect happened once per fax: one comment PUT each on the receipt fax.
    puts = [
        entry["body"]
        for entry in control.requests()
        if entry["method"] == "PUT" and entry["path"].endswith(f"/outbox/{receipt}")
    ]
    assert Counter(fax_id for body in puts for fax_id in ids if f"left: {fax_id}" in body) == dict.fromkeys(
        ids, 1
    ), puts
    assert len(puts) == FAXES

    assert failover < HEALTH_CHECK_THRESHOLD + 30, failover  # loose: the point is that it is automatic
    print(f"FAXPLUS-HA: failover after {failover:.1f} s")
    assert_traffic_conforms(deployment)
    leaks = [
        str(path) for path in home.path.rglob("*") if path.is_file() and TOKEN.encode() in path.read_bytes()
    ]
    assert leaks == []


def assert_traffic_conforms(deployment: Deployment) -> None:
    from tests.conformance import problems

    control = deployment.sandbox.client
    assert control is not None
    found = problems(deployment.sandbox.root_url, control.requests(clear=True))
    assert not found, "spec conformance:\n" + "\n".join(found[:20])
