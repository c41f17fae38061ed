"""Ack mode in a real Airflow 3.3 triggerer (PostgreSQL metadata database): the watcher's cursor moves
only once Airflow stored the event.

1. The test holds a lock on ``asset_event``, so the triggerer's supervisor cannot store the event the
   watcher yields. However many turns pass (far more than the old guessed 3 s), the cursor does not move;
   the triggerer is SIGKILLed; its successor reports the fax again, and it is stored once.
2. A fax whose event is stored and whose cursor moved: the triggerer is SIGKILLed; its successor does
   not report it again.

The lock stalls Airflow's supervisor whole (it also serves the state store's writes), so part 1 would
hold for the old settle-time write too; the gate itself (no write before Airflow's confirmation, however
long) is shown in tests/test_acked_cursor.py through Airflow's own SharedStreamManager.

Every wait is on observable state (the database, the sandbox's request log, the triggerer's output).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy

from tests.test_deployment import AIRFLOW_3, TOKEN, wait_for
from tests.test_event_failover import Failover, _kill

pytestmark = pytest.mark.skipif(not AIRFLOW_3, reason="asset watchers need Airflow 3")

ASSET = "faxplus_ack_entered"
DAG_ID = "faxplus_ack_events"
STAYS = [{"status": "submitted", "seconds": 10**6}]
# Seconds without a heartbeat before a dead triggerer's watcher moves to a live one.
HEALTH_CHECK_THRESHOLD = 20
_DAG = f'''
import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_provider_faxplus.triggers.outbox_events import OutboxEventTrigger

entered = Asset(
    "{ASSET}",
    watchers=[
        AssetWatcher(
            name="{ASSET}_watcher",
            trigger=OutboxEventTrigger(report_existing=False, events=["entered"], poll_interval=1),
        )
    ],
)

with DAG("{DAG_ID}", schedule=[entered], start_date=pendulum.datetime(2026, 1, 1), catchup=False):

    @task
    def noop() -> None:
        pass

    noop()
'''


@pytest.fixture(scope="module")
def acked(tmp_path_factory, postgres) -> Iterator[Failover]:
    from airflow_provider_faxplus.sandbox import SandboxServer
    from airflow_provider_faxplus.sandbox.dagtest import AirflowDeployment, AirflowHome, leftover_processes

    dags = tmp_path_factory.mktemp("ack-dags")
    (dags / f"{DAG_ID}.py").write_text(_DAG)
    with SandboxServer(token=TOKEN) as sandbox:
        uri = f"faxplus://:{quote(TOKEN, safe='')}@{quote(sandbox.base_url, safe='')}"
        home = AirflowHome.create(
            dags_folder=dags,
            connections={"faxplus_default": uri},
            extra_env={
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_CHECK_THRESHOLD),
            },
            path=tmp_path_factory.mktemp("ack-home"),
            postgres=postgres,
        )
        engine = sqlalchemy.create_engine(
            home.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], poolclass=sqlalchemy.pool.NullPool
        )
        try:
            with AirflowDeployment.airflow3(home) as deployment:
                yield Failover(deployment, sandbox, engine)
        finally:
            engine.dispose()
            shutil.rmtree(dags, ignore_errors=True)
        assert leftover_processes(home.path) == [], "processes of the deployment outlived it"


def _output(home: Path) -> str:
    return "".join(out.read_text(errors="replace") for out in sorted(home.glob("triggerer*.out")))


def _on_live_triggerer(f: Failover, dead: set[int]) -> bool:
    return f.watcher_job(ASSET) in f.live_jobs() - dead


def test_the_cursor_moves_only_after_airflow_stored_the_event_and_a_kill_before_redelivers(acked):
    f = acked
    deployment, control = f.deployment, f.sandbox.client
    home = deployment.home.path
    already = control.create_fax(lifecycle=STAYS)["id"]
    deployment.unpause(DAG_ID)
    wait_for(lambda: f.cursor(ASSET) == {already: {"status": "submitted", "reported": []}}, "cursor", 300)
    assert "cursor written once Airflow acknowledges the events (ack mode)" in _output(home)
    dead = set(f.live_jobs())

    # 1. Yielded, never stored: Airflow's supervisor waits on the lock; the cursor waits for Airflow.
    with f.engine.connect() as lock:
        lock.execute(sqlalchemy.text("LOCK TABLE asset_event IN EXCLUSIVE MODE"))
        unstored = control.create_fax(lifecycle=STAYS)["id"]
        wait_for(lambda: f"Outbox fax {unstored} entered" in _output(home), "the event yielded", 120)
        calls = f.list_calls()
        wait_for(lambda: f.list_calls() >= calls + 6, "six more turns (the old settle time was 3)", 120)
        assert unstored not in (f.cursor(ASSET) or {})
        _kill(deployment, "triggerer")
        killed_at = time.monotonic()
        lock.rollback()
    assert unstored not in f.fax_ids(ASSET)  # the supervisor's insert died with it
    assert unstored not in (f.cursor(ASSET) or {})
    deployment.start("triggerer-b", "triggerer")
    wait_for(lambda: unstored in f.fax_ids(ASSET), "the event reported again by the next triggerer", 180)
    print(f"\nFAXPLUS-ACK: redelivered {time.monotonic() - killed_at:.1f} s after the kill")
    wait_for(lambda: unstored in (f.cursor(ASSET) or {}), "the cursor after Airflow stored it", 60)
    assert f.fax_ids(ASSET) == [unstored]

    # 2. Stored and acknowledged: the cursor holds it; a kill does not bring it again.
    dead |= {f.watcher_job(ASSET) or -1}
    stored = control.create_fax(lifecycle=STAYS)["id"]
    wait_for(lambda: stored in (f.cursor(ASSET) or {}), "the cursor holding the stored event", 120)
    assert f.fax_ids(ASSET) == [unstored, stored]
    _kill(deployment, "triggerer-b")
    deployment.start("triggerer-c", "triggerer")
    wait_for(lambda: _on_live_triggerer(f, dead), "the watcher on the third triggerer", 180)
    calls = f.list_calls()
    wait_for(lambda: f.list_calls() >= calls + 6, "six turns of the third triggerer", 120)
    assert f.fax_ids(ASSET) == [unstored, stored]
    assert set(f.cursor(ASSET) or {}) == {already, unstored, stored}
