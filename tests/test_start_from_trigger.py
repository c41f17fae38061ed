"""``OutboxFaxSensor(start_from_trigger=True)``: the task starts in the triggerer on Airflow 3.3+ (no worker
slot while it waits); older lines defer from the worker with one warning.

The deployment test runs a real scheduler: only the scheduler's ``schedule_tis`` hands a task straight to
the triggerer (``airflow dags test`` starts every task on a worker, with or without ``--use-executor``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowHome
from airflow_provider_faxplus.sensors.outbox import (
    TRIGGER_CLASSPATH,
    TRIGGERER_RENDERS_TEMPLATES,
    OutboxFaxSensor,
    airflow_release,
)
from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger
from tests.test_deployment import _XCOM, TOKEN, Deployment, _answers, _free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "faxplus_start_from_trigger"
TEMPLATE = "{{ dag_run.conf['outbox_fax_id'] }}"
FINISHED = ("success", "failed")


def sensor(**kwargs) -> OutboxFaxSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("outbox_fax_id", TEMPLATE)
    kwargs.setdefault("deferrable", True)
    kwargs.setdefault("start_from_trigger", True)
    kwargs.setdefault("poke_interval", 2)
    kwargs.setdefault("timeout", 300)
    return OutboxFaxSensor(**kwargs)


# Pure ------------------------------------------------------------------------------------------------


def test_start_from_trigger_needs_deferrable():
    with pytest.raises(ValueError, match=r"start_from_trigger=True needs deferrable=True"):
        sensor(deferrable=False)
    with pytest.raises(TypeError, match="start_from_trigger must be True or False"):
        sensor(start_from_trigger="yes")


def test_airflow_release():
    assert airflow_release("3.3.2") == (3, 3)
    assert airflow_release("3.4.0b2") == (3, 4)
    assert airflow_release("2.11.2") == (2, 11)
    with pytest.raises(ValueError, match="not an Airflow version"):
        airflow_release("main")


@pytest.mark.skipif(not TRIGGERER_RENDERS_TEMPLATES, reason="Airflow 3.3+ starts tasks in the triggerer")
def test_the_start_trigger_args_hold_the_templates_and_the_sensor_timeout():
    task = sensor(
        user_id="{{ dag_run.conf['user'] }}", waiting_statuses=["submitted"], fail_if_never_seen=False
    )
    assert task.start_from_trigger is True
    args = task.start_trigger_args
    assert (args.trigger_cls, args.next_method, args.timeout) == (
        TRIGGER_CLASSPATH,
        "execute_complete",
        timedelta(seconds=300),
    )
    kwargs = args.trigger_kwargs
    # Raw templates: the triggerer renders them (the sensor's template fields are trigger attributes).
    assert (kwargs["outbox_fax_id"], kwargs["user_id"]) == (TEMPLATE, "{{ dag_run.conf['user'] }}")
    assert set(task.template_fields) <= set(kwargs)
    assert "progress" not in kwargs
    assert "deferred_at" not in kwargs
    assert (kwargs["waiting_statuses"], kwargs["fail_if_never_seen"]) == (["submitted"], False)
    # What the scheduler stores is JSON, and the trigger is built from it as the triggerer does.
    trigger = OutboxFaxTrigger(**json.loads(json.dumps(kwargs)))
    assert trigger.first_look_here is True
    assert all(hasattr(trigger, name) for name in task.template_fields)


@pytest.mark.skipif(not TRIGGERER_RENDERS_TEMPLATES, reason="Airflow 3.3+ starts tasks in the triggerer")
def test_the_serialized_dag_keeps_start_from_trigger():
    """The scheduler decides from the serialized DAG: start_from_trigger and the trigger args survive it."""
    from airflow.sdk import DAG
    from airflow.serialization.enums import Encoding
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG(dag_id="sft", schedule=None) as dag:
        sensor()
    task = DagSerialization.from_dict(DagSerialization.to_dict(dag)).get_task("wait")
    assert task.start_from_trigger is True
    assert task.start_trigger_args.trigger_cls == TRIGGER_CLASSPATH
    kwargs = task.start_trigger_args.trigger_kwargs  # stored encoded; the triggerer decodes it
    assert kwargs[Encoding.VAR]["outbox_fax_id"] == TEMPLATE
    assert task.start_trigger_args.timeout == timedelta(seconds=300)


@pytest.mark.skipif(TRIGGERER_RENDERS_TEMPLATES, reason="before Airflow 3.3")
def test_before_3_3_the_task_does_not_start_in_the_triggerer():
    task = sensor()
    assert (task.start_from_trigger, task.start_trigger_args) == (False, None)


def test_on_a_worker_it_looks_once_and_defers_with_one_warning(faxplus_conn, control, caplog):
    """Where Airflow starts the task on a worker anyway (before 3.3; mapped tasks, dags test)."""
    control.create_fax(id="f1", lifecycle=[{"status": "submitted", "seconds": 3600}])
    task = sensor(outbox_fax_id="f1")
    with caplog.at_level(logging.WARNING), pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    warnings = [r.getMessage() for r in caplog.records if "start_from_trigger" in r.getMessage()]
    assert len(warnings) == 1, warnings
    if TRIGGERER_RENDERS_TEMPLATES:
        assert "Airflow started this task on a worker" in warnings[0]
    else:
        assert "renders templated fields in the triggerer only from 3.3" in warnings[0]
    assert deferred.value.trigger.progress.ever_seen is True  # the worker looked first
    assert len(control.requests()) == 1


# The trigger's own first look ---------------------------------------------------------------------


class _TI:
    def __init__(self, try_number: int) -> None:
        self.try_number = try_number
        self.task_id = "wait"


def _events(trigger: OutboxFaxTrigger) -> list[dict]:
    async def collect() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), 30))


def _started_in_triggerer(try_number: int, **kwargs) -> OutboxFaxTrigger:
    trigger = OutboxFaxTrigger(
        outbox_fax_id="nowhere",
        poke_interval=0.1,
        not_found_grace_period=0,
        fail_if_never_seen=True,
        **kwargs,
    )
    trigger.task_instance = _TI(try_number)  # as the triggerer sets it (no task: nothing to render)
    return trigger


def test_a_first_try_in_the_triggerer_fails_a_never_seen_fax(faxplus_conn, control):
    [event] = _events(_started_in_triggerer(1))
    assert (event["status"], event["kind"]) == ("error", "never_seen")


def test_a_retry_in_the_triggerer_cannot_know_earlier_looks_and_counts_a_not_found_as_left(
    faxplus_conn, control
):
    """Earlier tries wrote what they saw to the task state store; a trigger cannot read it."""
    [event] = _events(_started_in_triggerer(2))
    assert event["status"] == "success"
    assert (event["result"]["reason"], event["result"]["ever_seen"]) == ("not_found", None)
    assert "this is try 2, started in the triggerer" in event["message"]


def test_the_first_sighting_in_the_triggerer_is_checkpointed(faxplus_conn, control):
    """The first look is the trigger's: seeing the fax is a first sighting, handed to a worker to keep."""
    control.create_fax(id="f2", lifecycle=[{"status": "submitted", "seconds": 3600}])
    trigger = OutboxFaxTrigger(outbox_fax_id="f2", poke_interval=0.1)
    trigger.task_instance = _TI(1)
    [event] = _events(trigger)
    assert event["status"] == "checkpoint"
    assert (event["progress"]["ever_seen"], event["progress"]["last_status"]) == (True, "submitted")
    assert event["deferred_at"] == trigger.deferred_at


def test_a_rebuilt_trigger_keeps_the_deadline_fixed_when_the_task_deferred(faxplus_conn, control):
    """Finding 8: a triggerer restart rebuilds the trigger from the same kwargs; the deferral time comes
    from the deadline Airflow stored then (``timeout_after``), not from when the trigger is built."""
    from datetime import UTC, datetime

    control.create_fax(id="f3", lifecycle=[{"status": "submitted", "seconds": 3600}])
    deferred = datetime.now(UTC) - timedelta(seconds=200)  # the task deferred 200 s ago
    trigger = OutboxFaxTrigger(outbox_fax_id="f3", poke_interval=0.1, timeout=300.0)
    trigger.task_instance = _TI(1)
    trigger.timeout_after = deferred + timedelta(seconds=300)  # as the triggerer sets it
    [event] = _events(trigger)
    assert event["status"] == "checkpoint"
    assert abs(event["deferred_at"] - deferred.timestamp()) < 0.01


def test_a_status_the_spec_does_not_know_seen_first_by_the_trigger_is_a_warning(
    faxplus_conn, control, caplog
):
    """Finding 14: the first sighting is checkpointed; an unknown status in it is still a WARNING."""
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

    control.create_fax(id="f5", lifecycle=[{"status": "submitted", "seconds": 3600}])
    hook = FaxPlusHook()
    try:
        record = dict(hook.get_outbox_fax("f5").raw, status="teleporting")
    finally:
        hook.close()
    control.add_fault(status=200, method="GET", path_endswith="/outbox/f5", body=json.dumps(record), times=1)
    trigger = OutboxFaxTrigger(outbox_fax_id="f5", poke_interval=0.1)
    trigger.task_instance = _TI(1)
    with caplog.at_level(logging.INFO):
        [event] = _events(trigger)
    assert event["status"] == "checkpoint"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("teleporting" in message for message in warnings), warnings


def test_serialize_round_trips_for_a_trigger_that_has_not_looked_yet():
    """Finding 9: no progress in, no progress out, until the trigger has looked."""
    kwargs = sensor().start_trigger_args.trigger_kwargs if TRIGGERER_RENDERS_TEMPLATES else {}
    kwargs = {**kwargs, "outbox_fax_id": "f4", "user_id": "self"}
    trigger = OutboxFaxTrigger(**kwargs)
    classpath, stored = trigger.serialize()
    assert stored["progress"] is None
    rebuilt = OutboxFaxTrigger(**stored)
    assert rebuilt.first_look_here is True
    assert rebuilt.serialize() == (classpath, stored)


# A real deployment ----------------------------------------------------------------------------------

_RUNNING = """
import json, sys
from airflow.models import TaskInstance
from airflow.models.log import Log
from airflow.models.trigger import Trigger
from airflow.utils.session import create_session
dag_id, task_id = sys.argv[1], sys.argv[2]
with create_session() as session:
    # The execution API writes one "running" audit row each time a worker starts the task (ti_run).
    running = session.query(Log).filter(Log.dag_id == dag_id, Log.task_id == task_id, Log.event == "running")
    ti = session.query(TaskInstance).filter(
        TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id).one_or_none()
    trigger = None if ti is None or ti.trigger_id is None else session.get(Trigger, ti.trigger_id)
    print("FAXPLUS-OUT:", json.dumps({
        "running": sorted(row.try_number for row in running),
        "state": None if ti is None else str(ti.state),
        "hostname": None if ti is None else ti.hostname,
        # The deadline the scheduler enforces on the deferral, from the sensor's timeout.
        "timeout_s": None if ti is None or ti.trigger_timeout is None or ti.start_date is None
        else (ti.trigger_timeout - ti.start_date).total_seconds(),
        "trigger_kwargs": None if trigger is None else {k: str(v) for k, v in trigger.kwargs.items()},
    }))
"""


def _home_with_dag(tmp_path_factory, base_url: str, token: str, **extra_env: str) -> AirflowHome:
    dags = tmp_path_factory.mktemp("sft-dags")
    shutil.copy(ROOT / "tests" / "dags" / f"{DAG_ID}.py", dags)
    uri = f"faxplus://:{quote(token, safe='')}@{quote(base_url, safe='')}"
    return AirflowHome.create(
        dags_folder=dags,
        connections={"faxplus_default": uri},
        extra_env=extra_env,
        path=tmp_path_factory.mktemp("sft-home"),
    )


def test_dags_test_defers_from_the_worker_with_one_warning(tmp_path_factory):
    """``airflow dags test`` starts every task on a worker: on 2.11 because the line cannot start it in the
    triggerer, on 3.3 because dags test never asks the scheduler's ``defer_task``; one warning says which."""
    with SandboxServer() as sandbox:
        control = sandbox.client
        assert control is not None
        fax_id = control.create_fax(lifecycle=[{"status": "submitted", "polls": 2}])["id"]
        home = _home_with_dag(tmp_path_factory, sandbox.base_url, sandbox.token)
        run = home.dags_test(DAG_ID, conf={"outbox_fax_id": fax_id})
    assert run.succeeded, run.output[-5000:]
    [result] = [json.loads(line) for line in run.lines_with("FAXPLUS-RESULT:")]
    assert (result["outbox_fax_id"], result["reason"], result["ever_seen"]) == (fax_id, "not_found", True)
    warnings = [line for line in run.output.splitlines() if "start_from_trigger=True:" in line]
    assert len(warnings) == 1, warnings
    if TRIGGERER_RENDERS_TEMPLATES:
        assert "Airflow started this task on a worker" in warnings[0]
    else:
        assert "renders templated fields in the triggerer only from 3.3" in warnings[0]


@pytest.fixture
def scheduled_deployment(tmp_path_factory) -> Iterator[Deployment]:
    """api-server, triggerer and scheduler: the scheduler's LocalExecutor runs tasks on workers."""
    port = _free_port()
    with SandboxServer(token=TOKEN) as sandbox:
        home = _home_with_dag(
            tmp_path_factory,
            sandbox.base_url,
            TOKEN,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
            AIRFLOW__CORE__PARALLELISM="2",
        )
        deployed = Deployment(home, sandbox)
        try:
            deployed.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
            wait_for(
                lambda: _answers(f"http://127.0.0.1:{port}/api/v2/monitor/health"), "the api-server", 180
            )
            # No dag-processor: the DAG is serialized once, as the scheduler reads it.
            for args in (("dags", "reserialize"), ("dags", "unpause", DAG_ID)):
                done = home.airflow(*args)
                assert done.returncode == 0, done.stderr[-3000:]
            deployed.start("triggerer", "triggerer")
            deployed.start("scheduler", "scheduler")
            yield deployed
        finally:
            deployed.stop_all()


@pytest.mark.skipif(not TRIGGERER_RENDERS_TEMPLATES, reason="Airflow 3.3+ starts tasks in the triggerer")
def test_the_sensor_waits_in_the_triggerer_without_a_worker(scheduled_deployment):
    """No worker starts the task before its trigger's first event: the execution API writes a ``running``
    audit row each time a worker starts a task instance (first start and every resume), and there is none
    while the trigger polls; its templated fax id is rendered in the triggerer (the stored trigger kwargs
    hold the template, the trigger's log the id). Then each event resumes on a worker: the first sighting
    (recorded, deferred again) and the verdict."""
    deployment = scheduled_deployment
    home, control = deployment.home, deployment.sandbox.client
    assert control is not None
    fax_id = control.create_fax(visible_after=3600, lifecycle=[{"status": "submitted", "seconds": 7200}])[
        "id"
    ]
    triggered = home.airflow("dags", "trigger", DAG_ID, "--conf", json.dumps({"outbox_fax_id": fax_id}))
    assert triggered.returncode == 0, triggered.stderr[-3000:]

    def trigger_log() -> str:
        return "".join(path.read_text(errors="replace") for path in deployment.trigger_logs(DAG_ID))

    def looks() -> int:
        return sum(1 for entry in control.requests() if entry["path"].endswith(f"/outbox/{fax_id}"))

    # The trigger logs the first "not found yet" (the id rendered), then polls on (at DEBUG).
    not_found_yet = f"outbox fax {fax_id!r} is not found yet"
    wait_for(lambda: not_found_yet in trigger_log() and looks() >= 3, "three looks by the trigger", 300)
    waiting = json.loads(home.python(_RUNNING, DAG_ID, "wait"))
    assert waiting["running"] == [], waiting  # no worker has started the task
    assert waiting["state"] == "deferred", waiting
    assert not waiting["hostname"], waiting  # set when a worker starts the task
    assert 599 <= waiting["timeout_s"] <= 601, waiting  # the sensor's timeout=600 bounds the wait
    assert waiting["trigger_kwargs"]["outbox_fax_id"] == TEMPLATE  # rendered only in the triggerer
    assert "Started in the triggerer (start_from_trigger), try 1" in trigger_log()
    worker_logs = list((home.path / "logs").glob(f"dag_id={DAG_ID}/**/task_id=wait/attempt=1.log"))
    assert worker_logs == []

    control.advance(3600)  # visible: the trigger's first sighting is checkpointed through a worker
    wait_for(lambda: "first sighting" in trigger_log(), "the first sighting", 300)
    control.advance(3600)  # and it leaves the outbox
    wait_for(lambda: str(home.task_states(DAG_ID)["state"]).lower().endswith(FINISHED), "the DAG run", 300)
    states = home.task_states(DAG_ID)
    assert {task: state for task, _, state in states["tasks"]} == {"wait": "success", "show": "success"}, (
        states
    )
    done = json.loads(home.python(_RUNNING, DAG_ID, "wait"))
    assert done["running"] == [1, 1], done  # a worker ran only for the two events, both in try 1
    [worker_log] = (home.path / "logs").glob(f"dag_id={DAG_ID}/**/task_id=wait/attempt=1.log")
    said = worker_log.read_text(errors="replace")
    assert "remembered, waiting on in the triggerer" in said
    # No look from a worker:
    assert not_found_yet not in said
    assert "start_from_trigger=True:" not in said
    [xcom] = json.loads(home.python(_XCOM, DAG_ID, "wait"))
    assert (xcom["outbox_fax_id"], xcom["reason"], xcom["ever_seen"]) == (fax_id, "not_found", True)
    leaks = [str(p) for p in home.path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaks == []
