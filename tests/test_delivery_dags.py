"""example_faxplus_send_and_confirm in real runs (``airflow dags test``): delivered and failed, under both
of the sandbox's id policies (a sent record with the outbox id, or with an id of its own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_faxplus.sandbox.dagtest import AirflowHome
from tests.conftest import TOKEN

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "example_faxplus_send_and_confirm"
# Counted in looks: the fax leaves the outbox at the sensor's third look, whatever Airflow's pace.
LIFECYCLE = [{"status": "submitted", "polls": 1}, {"status": "sending", "polls": 1}]


@pytest.fixture(scope="module")
def confirm_home(sandbox_server, tmp_path_factory):
    return AirflowHome.create(
        dags_folder=ROOT / "example_dags",
        connections={"faxplus_default": sandbox_server},
        extra_env={"FAXPLUS_EXAMPLE_POKE_INTERVAL": "1"},
        path=tmp_path_factory.mktemp("airflow-confirm"),
    )


def _states(home):
    return {task: state for task, _, state in home.task_states(DAG_ID)["tasks"]}


@pytest.mark.parametrize("id_policy", ["same", "new"])
def test_a_delivered_fax_is_confirmed_and_its_report_saved(confirm_home, control, tmp_path, id_policy):
    control.settings(send_lifecycle=LIFECYCLE)
    control.record_settings(id_policy=id_policy, default_outcome={"status": "success"})
    run = confirm_home.dags_test(DAG_ID, conf={"to": "+16699990001", "reports": f"{tmp_path}/"})
    assert run.succeeded, run.output[-5000:]
    [fax] = control.faxes()
    [record] = [r for r in control.records() if r.get("outbox_fax_id") == fax["id"]]
    assert (record["id"] == fax["id"]) == (id_policy == "same")
    [line] = run.lines_with("FAXPLUS-CONFIRMED:")
    matched_by = "id" if id_policy == "same" else "fields"
    assert f"fax {fax['id']} -> record {record['id']} (success, matched by {matched_by})" in line
    report = tmp_path / f"{record['id']}-report.pdf"
    assert report.read_bytes().startswith(b"%PDF")
    assert _states(confirm_home) == {
        "upload_letter": "success",
        "send_fax": "success",
        "wait_for_delivery": "success",
        "save_confirmation": "success",
        "summary": "success",
    }
    assert TOKEN not in run.output


@pytest.mark.parametrize("id_policy", ["same", "new"])
def test_a_failed_fax_fails_the_wait_naming_the_status(confirm_home, control, tmp_path, id_policy):
    control.settings(send_lifecycle=LIFECYCLE)
    control.record_settings(
        id_policy=id_policy, default_outcome={"status": "failed_no_answer", "description": "No answer"}
    )
    run = confirm_home.dags_test(DAG_ID, conf={"to": "+16699990002", "reports": f"{tmp_path}/"})
    assert not run.succeeded
    assert "was not delivered: status failed_no_answer, description 'No answer'" in run.output
    states = _states(confirm_home)
    assert states["send_fax"] == "success"
    assert states["wait_for_delivery"] == "failed"  # at once: AirflowFailException, no retry
    assert states["save_confirmation"] == "upstream_failed"
    assert list(tmp_path.iterdir()) == []
    assert (
        len([e for e in control.requests() if e["method"] == "POST" and e["path"].endswith("/outbox")]) == 1
    )


@pytest.fixture(scope="module")
def test_dags_home(sandbox_server, tmp_path_factory):
    return AirflowHome.create(
        dags_folder=ROOT / "tests" / "dags",
        connections={"faxplus_default": sandbox_server},
        path=tmp_path_factory.mktemp("airflow-delivery-deferred"),
    )


def test_deferred_the_record_with_its_own_id_is_matched_in_the_triggerer(test_dags_home, control):
    control.record_settings(id_policy="new")
    # Three looks: the worker's GET, then the triggerer's account list twice.
    fax_id = control.create_fax(comment="deferred", lifecycle=[{"status": "sending", "polls": 3}])["id"]
    control.requests(clear=True)
    run = test_dags_home.dags_test("faxplus_delivery_deferrable", conf={"outbox_fax_id": fax_id})
    assert run.succeeded, run.output[-5000:]
    [line] = run.lines_with("FAXPLUS-DELIVERY:")
    result = json.loads(line)
    [record] = [r for r in control.records() if r.get("outbox_fax_id") == fax_id]
    assert (result["fax_id"], result["matched_by"], result["outcome"]) == (
        record["id"],
        "fields",
        "delivered",
    )
    assert record["id"] != fax_id
    paths = [e["path"].split("?")[0] for e in control.requests()]
    # The worker's one look, and the GET confirming the fax's absence from the account's list.
    assert paths.count(f"/v3/accounts/self/outbox/{fax_id}") == 2
    assert "/v3/accounts/self/outbox" in paths  # the triggerer rode the account's list


_TRIES = """
import json, sys
from airflow.models import DagRun, TaskInstance
from airflow.utils.session import create_session
dag_id, task_id = sys.argv[1], sys.argv[2]
with create_session() as session:
    run = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).first()
    ti = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
        TaskInstance.run_id == run.run_id, TaskInstance.task_id == task_id).one()
    print("FAXPLUS-OUT:", json.dumps({"state": str(ti.state), "try_number": ti.try_number,
        "max_tries": ti.max_tries}))
"""


def _try_of(home, dag_id: str) -> dict:
    return json.loads(home.python(_TRIES, dag_id, "wait_for_delivery"))


def _record_looks(control, fax_id: str) -> int:
    """Looks for the sent record: GETs of the record, and listings of the account's sent records (each
    paged from offset 0)."""
    return sum(
        1
        for e in control.requests()
        if e["path"] == f"/v3/accounts/self/faxes/{fax_id}"
        or (
            e["path"] == "/v3/accounts/self/faxes"
            and "category=sent" in e["query"]
            and "offset=0" in e["query"]
        )
    )


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_with_retries_a_failed_delivery_fails_at_once_without_a_retry(test_dags_home, control, mode):
    """retries=2: the failure status is a verdict, not an error a retry could fix."""
    control.record_settings(id_policy="same")
    fax_id = control.create_fax(lifecycle=[{"status": "sending", "polls": 1}])["id"]
    control.set_record_outcome(fax_id, "failed_user_busy", description="Busy")
    dag_id = f"faxplus_delivery_retries_{mode}"
    run = test_dags_home.dags_test(dag_id, conf={"outbox_fax_id": fax_id})
    assert not run.succeeded
    assert "was not delivered: status failed_user_busy, description 'Busy'" in run.output
    tried = _try_of(test_dags_home, dag_id)
    assert (tried["state"].lower().rsplit(".", 1)[-1], tried["max_tries"]) == ("failed", 2), tried
    assert tried["try_number"] == 1, tried  # no second try
    assert _record_looks(control, fax_id) == 1, [(e["path"], e["query"]) for e in control.requests()]


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_with_retries_a_transient_failure_is_retried(test_dags_home, control, mode):
    """A malformed answer (a proxy's HTML page) on the record look: in poke mode (a *Get a fax record*)
    it fails try 1 and try 2 finds the record; deferred (the shared listing of sent records) it is a
    transient failure of the poll, tried again within try 1."""
    control.record_settings(id_policy="same")
    fax_id = control.create_fax(lifecycle=[{"status": "sending", "polls": 1}])["id"]
    control.add_fault(
        status=200,
        body="<html>proxy error</html>",
        content_type="text/html",
        path_contains="/v3/accounts/self/faxes",
    )
    dag_id = f"faxplus_delivery_retries_{mode}"
    run = test_dags_home.dags_test(dag_id, conf={"outbox_fax_id": fax_id})
    assert run.succeeded, run.output[-5000:]
    assert not control.faults()  # the fault was served
    tried = _try_of(test_dags_home, dag_id)
    assert tried["state"].lower().rsplit(".", 1)[-1] == "success", tried
    assert tried["try_number"] == (2 if mode == "poke" else 1), tried
    [line] = run.lines_with("FAXPLUS-DELIVERY:")
    result = json.loads(line)
    assert (result["fax_id"], result["outcome"]) == (fax_id, "delivered")
