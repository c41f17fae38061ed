"""Why the demo once saw a sensor's event among a watcher's asset events (issue 19), on Airflow 3.3.

`airflow dags test` with a deferrable sensor leaves its trigger row behind, still referenced by the
finished task. A triggerer started on that home takes the row (Airflow assigns any trigger a task
instance points to, whatever the task's state) and runs the stale trigger; Airflow then deletes the row
as unused, and SQLite hands the freed id to the next trigger created: an asset watcher's. The triggerer
still runs the stale trigger under that id, and its event becomes an event of the watcher's asset.
The first test pins Airflow's part (it fails when Airflow changes it); the second, our work-around.
"""

from __future__ import annotations

import json

import pytest

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowDeployment, AirflowHome
from tests.test_deployment import AIRFLOW_3, ROOT

pytestmark = pytest.mark.skipif(not AIRFLOW_3, reason="asset watchers need Airflow 3")

_TRIGGERS = """
import json
from sqlalchemy import select
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import Trigger
from airflow.utils.session import create_session
with create_session() as session:
    triggers = [[t.id, t.classpath] for t in session.scalars(select(Trigger).order_by(Trigger.id))]
    tis = [[ti.task_id, str(ti.state), ti.trigger_id] for ti in session.scalars(select(TaskInstance))]
print("FAXPLUS-OUT:", json.dumps({"triggers": triggers, "tis": tis}))
"""
# What a triggerer and a dag-processor do to the home, in Airflow's own calls and in their order.
_STALE_TRIGGER_GETS_A_WATCHERS_ID = """
import json
from sqlalchemy import select
from airflow.models.trigger import Trigger
from airflow.utils.session import create_session
with create_session() as session:
    eligible = [row[0] for row in Trigger.get_sorted_triggers(
        capacity=100, alive_triggerer_ids=[], queues=None, session=session
    )]
Trigger.clean_unused()  # the triggerer's clean-up, once the stale trigger runs
with create_session() as session:
    watcher = Trigger(
        classpath="airflow_provider_faxplus.triggers.outbox_events.OutboxEventTrigger",
        kwargs={"report_existing": False},
    )
    session.add(watcher)
    session.flush()
    print("FAXPLUS-OUT:", json.dumps({"eligible": eligible, "watcher_id": watcher.id}))
"""


def _home_after_a_deferrable_dags_test(tmp_path) -> AirflowHome:
    with SandboxServer() as sandbox:
        assert sandbox.client is not None
        fax_id = sandbox.client.create_fax(lifecycle=[{"status": "submitted", "polls": 1}])["id"]
        home = AirflowHome.create(
            dags_folder=ROOT / "example_dags",
            connections={"faxplus_default": sandbox},
            extra_env={"FAXPLUS_EXAMPLE_POKE_INTERVAL": "1"},
            path=tmp_path / "home",
        )
        run = home.dags_test("example_faxplus_tag_and_wait", conf={"outbox_fax_id": fax_id})
        assert run.succeeded, run.output[-3000:]
        # Finding 15: a successful run logs no ERROR (it logged the generators Airflow closed at exit).
        errors = [line for line in run.output.splitlines() if "[error" in line or " ERROR " in line]
        assert errors == [], errors
    return home


def test_airflow_runs_a_trigger_left_by_dags_test_and_gives_its_id_to_the_next_trigger(tmp_path):
    home = _home_after_a_deferrable_dags_test(tmp_path)
    state = json.loads(home.python(_TRIGGERS))
    [[stale_id, classpath]] = state["triggers"]
    assert classpath == "airflow_provider_faxplus.triggers.outbox.OutboxFaxTrigger"
    assert ["wait_until_sent", "success", stale_id] in state["tis"]

    seen = json.loads(home.python(_STALE_TRIGGER_GETS_A_WATCHERS_ID))
    assert seen["eligible"] == [stale_id]  # a new triggerer takes it, though its task has finished
    assert seen["watcher_id"] == stale_id  # SQLite reuses the deleted row's id


def test_a_deployment_starts_only_after_the_leftover_triggers_are_gone(tmp_path, monkeypatch):
    home = _home_after_a_deferrable_dags_test(tmp_path)
    assert json.loads(home.python(_TRIGGERS))["triggers"]

    def no_process(self: AirflowDeployment, name: str, *args: str) -> None:
        raise RuntimeError(f"stopped before starting {name}")

    monkeypatch.setattr(AirflowDeployment, "start", no_process)
    with pytest.raises(RuntimeError, match="stopped before starting api-server"):
        AirflowDeployment.airflow3(home)
    state = json.loads(home.python(_TRIGGERS))
    assert state["triggers"] == []
    assert ["wait_until_sent", "success", None] in state["tis"]
