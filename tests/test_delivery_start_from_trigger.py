"""``FaxDeliverySensor(start_from_trigger=True)`` in a real deployment (Airflow 3.3+): api-server, scheduler
and triggerer; only the scheduler hands a task straight to the triggerer (``airflow dags test`` starts every
task on a worker). The trigger and the sensor alone are in test_delivery_trigger.py."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowHome
from airflow_provider_faxplus.sensors.outbox import TRIGGERER_RENDERS_TEMPLATES
from tests.test_deployment import _XCOM, TOKEN, Deployment, _answers, _free_port, wait_for
from tests.test_start_from_trigger import _RUNNING

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "faxplus_delivery_start_from_trigger"
TEMPLATE = "{{ dag_run.conf['outbox_fax_id'] }}"
FINISHED = ("success", "failed")

pytestmark = pytest.mark.skipif(
    not TRIGGERER_RENDERS_TEMPLATES, reason="Airflow 3.3+ starts tasks in the triggerer"
)


@pytest.fixture
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    port = _free_port()
    with SandboxServer(token=TOKEN) as sandbox:
        dags = tmp_path_factory.mktemp("dsft-dags")
        shutil.copy(ROOT / "tests" / "dags" / f"{DAG_ID}.py", dags)
        uri = f"faxplus://:{quote(TOKEN, safe='')}@{quote(sandbox.base_url, safe='')}"
        home = AirflowHome.create(
            dags_folder=dags,
            connections={"faxplus_default": uri},
            extra_env={
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__CORE__PARALLELISM": "2",
            },
            path=tmp_path_factory.mktemp("dsft-home"),
        )
        deployed = Deployment(home, sandbox)
        try:
            deployed.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
            wait_for(
                lambda: _answers(f"http://127.0.0.1:{port}/api/v2/monitor/health"), "the api-server", 180
            )
            for args in (("dags", "reserialize"), ("dags", "unpause", DAG_ID)):
                done = home.airflow(*args)
                assert done.returncode == 0, done.stderr[-3000:]
            deployed.start("triggerer", "triggerer")
            deployed.start("scheduler", "scheduler")
            yield deployed
        finally:
            deployed.stop_all()


def test_the_delivery_sensor_waits_in_the_triggerer_without_a_worker(deployment):
    """No worker starts the task while the trigger rides the account's outbox list (its templated fax id
    rendered in the triggerer); when the fax leaves, what the trigger learned in the outbox goes through a
    worker (a checkpoint, deferred again), and the record is found: two worker starts in try 1."""
    home, control = deployment.home, deployment.sandbox.client
    assert control is not None
    control.record_settings(id_policy="new")
    fax_id = control.create_fax(comment="sft", lifecycle=[{"status": "sending", "seconds": 3600}])["id"]
    triggered = home.airflow("dags", "trigger", DAG_ID, "--conf", json.dumps({"outbox_fax_id": fax_id}))
    assert triggered.returncode == 0, triggered.stderr[-3000:]

    def trigger_log() -> str:
        return "".join(path.read_text(errors="replace") for path in deployment.trigger_logs(DAG_ID))

    def lists() -> int:
        return sum(1 for entry in control.requests() if entry["path"] == "/v3/accounts/self/outbox")

    wait_for(
        lambda: "Started in the triggerer (start_from_trigger)" in trigger_log() and lists() >= 3,
        "three outbox lists by the trigger",
        300,
    )
    waiting = json.loads(home.python(_RUNNING, DAG_ID, "wait"))
    assert waiting["running"] == [], waiting  # no worker has started the task
    assert waiting["state"] == "deferred", waiting
    assert 599 <= waiting["timeout_s"] <= 601, waiting
    assert waiting["trigger_kwargs"]["outbox_fax_id"] == TEMPLATE  # rendered only in the triggerer
    assert fax_id in trigger_log()

    control.advance(3600)  # it leaves the outbox; its sent record has an id of its own
    wait_for(lambda: str(home.task_states(DAG_ID)["state"]).lower().endswith(FINISHED), "the DAG run", 300)
    states = {task: state for task, _, state in home.task_states(DAG_ID)["tasks"]}
    assert states == {"wait": "success", "show": "success"}, states
    done = json.loads(home.python(_RUNNING, DAG_ID, "wait"))
    assert done["running"] == [1, 1], done  # the checkpoint and the verdict, both in try 1
    [xcom] = json.loads(home.python(_XCOM, DAG_ID, "wait"))
    [record] = [r for r in control.records() if r.get("outbox_fax_id") == fax_id]
    assert (xcom["outbox_fax_id"], xcom["fax_id"], xcom["matched_by"], xcom["outcome"]) == (
        fax_id,
        record["id"],
        "fields",
        "delivered",
    )
    leaks = [str(p) for p in home.path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaks == []
