"""example_faxplus_inbound in a real Airflow 3.3 deployment (PostgreSQL metadata database): three faxes
received through the sandbox's control API become three files in object storage (``file://`` under a
temporary base), each downloaded and written once and marked read, across triggerer restarts between
them: a clean stop after the first fax is saved, a SIGKILL right after the second fax's event is stored
(so the watcher may report it again: the DAG must not write it twice).

Every wait is on observable state (the metadata database, the sandbox's request log, the files).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy

from tests.test_deployment import AIRFLOW_3, ROOT, TOKEN, wait_for
from tests.test_event_failover import _kill, _soon


def id_key(fax_id: str) -> str:
    """How the watcher's cursor keys a fax id (hashed)."""
    from airflow_provider_faxplus.record_watch import id_key as key

    return key(fax_id)


pytestmark = pytest.mark.skipif(not AIRFLOW_3, reason="asset watchers need Airflow 3")

DAG_ID = "example_faxplus_inbound"
ASSET = "faxplus_inbox_received"


@dataclass
class Inbound:
    deployment: Any  # AirflowDeployment
    sandbox: Any  # SandboxServer
    engine: sqlalchemy.engine.Engine
    store: Path

    def query(self, sql: str, **params: object) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sqlalchemy.text(sql), params)]

    def event_ids(self) -> list[str]:
        rows = self.query(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = :name"
            " ORDER BY e.id",
            name=ASSET,
        )
        return [str(((extra or {}).get("payload") or {}).get("fax_id")) for (extra,) in rows]

    def cursor(self) -> set[str] | None:
        """The id keys (``record_watch.id_key``: the cursor keeps ids hashed) the watcher's stored cursor
        holds (None before its first write)."""
        from airflow_provider_faxplus.record_watch import RecordWindow

        rows = self.query(
            "SELECT s.value FROM asset_state_store s JOIN asset a ON a.id = s.asset_id WHERE a.name = :n",
            n=ASSET,
        )
        window = RecordWindow.decode(rows[0][0]) if len(rows) == 1 else None
        return None if window is None else set(window.seen)

    def triggerer_jobs(self) -> set[int]:
        rows = self.query("SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running'")
        return {int(row[0]) for row in rows}

    def watcher_job(self) -> int | None:
        rows = self.query(
            "SELECT t.triggerer_id FROM trigger t JOIN asset_watcher w ON w.trigger_id = t.id"
            " JOIN asset a ON a.id = w.asset_id WHERE a.name = :name",
            name=ASSET,
        )
        return None if len(rows) != 1 or rows[0][0] is None else int(rows[0][0])

    def file(self, fax_id: str) -> Path:
        return self.store / "self" / f"{fax_id}.pdf"

    def downloads(self) -> Counter[str]:
        return Counter(
            e["path"].rsplit("/", 1)[1].split("?")[0]
            for e in self.sandbox.client.requests()
            if e["method"] == "GET" and "/files/" in e["path"] and e["status"] == 200
        )

    def runs_done(self) -> bool:
        runs = self.deployment.dag_runs(DAG_ID)
        return bool(runs) and all(run["state"] in ("success", "failed") for run in runs)


@pytest.fixture(scope="module")
def inbound(tmp_path_factory, postgres) -> Iterator[Inbound]:
    from airflow_provider_faxplus.sandbox import SandboxServer
    from airflow_provider_faxplus.sandbox.dagtest import AirflowDeployment, AirflowHome, leftover_processes

    dags = tmp_path_factory.mktemp("inbound-dags")
    shutil.copy(ROOT / "example_dags" / f"{DAG_ID}.py", dags)
    store = tmp_path_factory.mktemp("inbound-store")
    with SandboxServer(token=TOKEN) as sandbox:
        uri = f"faxplus://:{quote(TOKEN, safe='')}@{quote(sandbox.base_url, safe='')}"
        home = AirflowHome.create(
            dags_folder=dags,
            connections={"faxplus_default": uri},
            extra_env={
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
                "FAXPLUS_EXAMPLE_POKE_INTERVAL": "1",
                "FAXPLUS_EXAMPLE_INBOUND_URI": store.as_uri(),
            },
            path=tmp_path_factory.mktemp("inbound-home"),
            postgres=postgres,
        )
        engine = sqlalchemy.create_engine(
            home.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], poolclass=sqlalchemy.pool.NullPool
        )
        try:
            with AirflowDeployment.airflow3(home) as deployment:
                yield Inbound(deployment, sandbox, engine, store)
        finally:
            engine.dispose()
        assert leftover_processes(home.path) == [], "processes of the deployment outlived it"


def test_three_received_faxes_become_three_files_each_written_once_across_triggerer_restarts(inbound):
    f = inbound
    deployment, control = f.deployment, f.sandbox.client
    control.receive_fax(id="before-watch")  # there before the watcher first looks: not new
    deployment.unpause(DAG_ID)
    wait_for(lambda: f.cursor() == {id_key("before-watch")}, "the watcher's first cursor", 300)

    def restart(dead: set[int]) -> None:
        deployment.start("triggerer", "triggerer")
        wait_for(lambda: f.triggerer_jobs() - dead, "the new triggerer's job", 120)
        wait_for(
            lambda: f.watcher_job() in f.triggerer_jobs() - dead, "the watcher on the new triggerer", 120
        )

    def saved(fax_id: str) -> None:
        wait_for(lambda: f.file(fax_id).is_file(), f"{fax_id}'s file", 300)
        wait_for(f.runs_done, "the runs to finish", 300)

    control.receive_fax(id="fax-1", **{"from": "+4930111111"})
    saved("fax-1")
    jobs = f.triggerer_jobs()
    deployment.stop("triggerer")  # a clean stop
    restart(jobs)

    control.receive_fax(id="fax-2")
    _soon(lambda: "fax-2" in f.event_ids(), "fax-2's event")
    jobs = f.triggerer_jobs()
    _kill(deployment, "triggerer")  # a crash: the cursor may not hold fax-2 yet
    restart(jobs)
    saved("fax-2")
    # The new triggerer's cursor holds fax-2 once it has looked (and reported fax-2 again if the killed
    # one had not stored it). Airflow links an event stored while it creates a run to no run until the
    # next event comes (README, Event-driven DAGs): fax-3 comes once that run is done.
    wait_for(lambda: id_key("fax-2") in (f.cursor() or set()), "the new triggerer's cursor with fax-2", 120)
    wait_for(f.runs_done, "the runs to finish", 300)

    control.receive_fax(id="fax-3")
    saved("fax-3")
    wait_for(lambda: id_key("fax-3") in (f.cursor() or set()), "the cursor with fax-3", 120)
    events = Counter(f.event_ids())
    print(f"\nFAXPLUS-INBOUND: events {dict(events)}; runs {len(deployment.dag_runs(DAG_ID))}")

    faxes = ["fax-1", "fax-2", "fax-3"]
    assert set(events) == set(faxes), events  # none lost, none invented ("before-watch" is not new)
    assert events["fax-1"] == 1, events  # the clean stop stored its cursor
    assert events["fax-3"] == 1, events
    assert events["fax-2"] in (1, 2), events  # only the fax of the kill may come again
    assert all(run["state"] == "success" for run in deployment.dag_runs(DAG_ID))
    assert f.downloads() == dict.fromkeys(faxes, 1), f.downloads()  # each written once
    assert sorted(p.name for p in (f.store / "self").iterdir()) == [f"{fax}.pdf" for fax in faxes]
    for fax in faxes:
        assert f.file(fax).read_bytes().startswith(b"%PDF-"), fax
    read = {r["id"]: r["is_read"] for r in control.records()}
    assert read == {"before-watch": False, "fax-1": True, "fax-2": True, "fax-3": True}, read
    if events["fax-2"] == 2:
        logs = "".join(
            p.read_text(errors="replace") for p in deployment.home.path.glob(f"logs/dag_id={DAG_ID}/**/*.log")
        )
        assert "FAXPLUS-ALREADY-SAVED: fax-2" in logs
    files = [path for path in deployment.home.path.rglob("*") if path.is_file()]
    assert [str(path) for path in files if TOKEN.encode() in path.read_bytes()] == []
