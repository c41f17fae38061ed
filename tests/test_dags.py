"""Real DAG runs (``airflow dags test``) against the sandbox: the sensor in each mode, the example DAGs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pendulum
import pytest
from airflow import __version__ as airflow_version

from airflow_provider_faxplus.sandbox.dagtest import AirflowHome

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_3 = int(airflow_version.split(".")[0]) >= 3
POLLED_STATES = [{"status": "submitted", "polls": 2}, {"status": "sending", "polls": 2}]
# Counted in looks, never in seconds: Airflow's start-up (5-10 s, more on a busy machine) must not matter.
FOUR_STATES = [
    {"status": s, "polls": 1} for s in ("submitted", "converting", "scheduled_for_sending", "sending")
]


@pytest.fixture(scope="module")
def test_dags_home(sandbox_server, tmp_path_factory):
    return AirflowHome.create(
        dags_folder=ROOT / "tests" / "dags",
        connections={"faxplus_default": sandbox_server},
        path=tmp_path_factory.mktemp("airflow-test-dags"),
    )


@pytest.fixture(scope="module")
def examples_home(sandbox_server, tmp_path_factory):
    return AirflowHome.create(
        dags_folder=ROOT / "example_dags",
        connections={"faxplus_default": sandbox_server},
        extra_env={"FAXPLUS_EXAMPLE_POKE_INTERVAL": "1"},
        path=tmp_path_factory.mktemp("airflow-examples"),
    )


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_sensor_detects_the_fax_leaving_at_its_next_look(test_dags_home, control, mode):
    fax_id = control.create_fax(lifecycle=FOUR_STATES)["id"]
    run = test_dags_home.dags_test(f"faxplus_sensor_{mode}", conf={"outbox_fax_id": fax_id})
    assert run.succeeded, run.output[-5000:]
    [line] = run.lines_with("FAXPLUS-RESULT:")
    result = json.loads(line)
    left_at = control.fax(fax_id)["left_at_ts"]
    detected = pendulum.parse(result["detected_at"]).timestamp()
    # Detected at the first look after leaving: every state was seen once, then exactly one 404.
    statuses = [e["status"] for e in control.requests() if e["path"].endswith(f"/{fax_id}")]
    assert statuses == [200, 200, 200, 200, 404], statuses
    assert detected >= left_at
    assert result["outbox_fax_id"] == fax_id
    assert result["reason"] == "not_found"
    remembers = mode != "reschedule" or AIRFLOW_3
    if remembers:
        assert result["ever_seen"] is True
        assert result["last_status"] == "sending"
        assert result["last_record"]["id"] == fax_id
        assert result["last_record"]["submit_time"].endswith("+00:00")
    else:
        # Reschedule mode on 2.11: no task state store, so earlier pokes are unknown to the last one.
        assert (result["ever_seen"], result["last_status"], result["last_record"]) == (None, None, None)
    states = test_dags_home.task_states(f"faxplus_sensor_{mode}")
    assert [state for _, _, state in states["tasks"]] == ["success", "success"]


def test_reschedule_mode_rides_out_a_burst_of_transient_errors(test_dags_home, control):
    """Eight 503s and 429s in a row: more than one poke's retry budget (5 attempts), so at least one poke
    gives up, is rescheduled, and a later one follows the fax to the end. (Retry-After: 0 keeps it fast.)"""
    fax_id = control.create_fax(lifecycle=POLLED_STATES)["id"]
    control.add_fault(status=503, retry_after="0", times=5, method="GET", path_contains=fax_id)
    control.add_fault(status=429, retry_after="0", times=3, method="GET", path_contains=fax_id)
    run = test_dags_home.dags_test("faxplus_sensor_reschedule", conf={"outbox_fax_id": fax_id})
    assert run.succeeded, run.output[-5000:]
    statuses = [e["status"] for e in control.requests() if e["path"].endswith(f"/{fax_id}")]
    assert statuses[:8] == [503] * 5 + [429] * 3
    assert statuses[8:] == [200, 200, 200, 200, 404]
    assert "gave up after 5 attempt(s)" in run.output  # the first poke spent its budget, and waited
    [line] = run.lines_with("FAXPLUS-RESULT:")
    assert json.loads(line)["reason"] == "not_found"


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_a_retry_succeeds_for_a_fax_that_left_during_retry_delay(test_dags_home, control, mode, tmp_path):
    """Try 1 sees the fax, then fails on a malformed answer; the fax leaves during retry_delay; try 2's
    not-found (past the grace period) is a fax that left: on Airflow 3.3 the task state store says try 1
    saw it (ever_seen true), on 2.11 nothing can say (ever_seen null). Never "never found"."""
    fax_id = control.create_fax(lifecycle=[{"status": "submitted", "seconds": 3600}])["id"]
    dag_id = f"faxplus_sensor_retry_{mode}"
    output = tmp_path / "dags-test.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                test_dags_home._airflow_bin(),
                "dags",
                "test",
                dag_id,
                "--conf",
                json.dumps({"outbox_fax_id": fax_id}),
            ],
            env=test_dags_home._environ(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def looks() -> list[int]:
            return [e["status"] for e in control.requests() if e["path"].endswith(f"/{fax_id}")]

        wait_until(lambda: 200 in looks(), "try 1 to see the fax")
        control.add_fault(
            status=200, body="<html>proxy error</html>", content_type="text/html", path_contains=fax_id
        )
        wait_until(lambda: not control.faults(), "try 1 to get the malformed answer")
        control.advance(3600)  # the fax leaves the outbox before the retry looks (retry_delay is 10 s)
        returncode = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.read_text(errors="replace")
    assert returncode == 0, text[-5000:]
    assert "never found" not in text
    [line] = [part.split("FAXPLUS-RESULT:", 1)[1] for part in text.splitlines() if "FAXPLUS-RESULT:" in part]
    result = json.loads(line)
    assert result["reason"] == "not_found"
    if AIRFLOW_3:
        assert (result["ever_seen"], result["last_status"]) == (True, "submitted")
    else:
        assert result["ever_seen"] is None
        assert "this is try 2" in text
    assert looks()[-1] == 404
    states = test_dags_home.task_states(dag_id)
    assert [state for _, _, state in states["tasks"]] == ["success", "success"]


def wait_until(check, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_sensor_with_a_wrong_id_fails_the_run_and_says_why(test_dags_home, control):
    run = test_dags_home.dags_test("faxplus_sensor_poke", conf={"outbox_fax_id": "no-such-fax"})
    assert not run.succeeded
    assert "'no-such-fax' was never found" in run.output
    states = dict(
        (task, state) for task, _, state in test_dags_home.task_states("faxplus_sensor_poke")["tasks"]
    )
    assert states["wait"] == "failed"


def test_example_tag_and_wait(examples_home, control):
    fax_id = control.create_fax(
        lifecycle=[{"status": "submitted", "polls": 2}, {"status": "sending", "polls": 1}]
    )["id"]
    control.requests(clear=True)
    run = examples_home.dags_test("example_faxplus_tag_and_wait", conf={"outbox_fax_id": fax_id})
    assert run.succeeded, run.output[-5000:]
    states = examples_home.task_states("example_faxplus_tag_and_wait")
    assert {task: state for task, _, state in states["tasks"]} == {
        "tag_comment": "success",
        "wait_until_sent": "success",
        "report": "success",
    }
    [put] = [entry for entry in control.requests() if entry["method"] == "PUT"]
    comment = json.loads(put["body"])["comment"]
    assert comment.startswith("billing batch 20")
    assert states["run_id"] in comment  # the rendered template, not the raw Jinja
    assert control.fax(fax_id)["comment"]["text"] == comment
    [report] = run.lines_with("FAXPLUS-REPORT:")
    assert fax_id in report


def test_example_mapped(examples_home, control):
    # dags test runs the mapped sensors one after another, in any order: faxes that move on when
    # polled stay in the outbox until their own sensor looks.
    ids = [control.create_fax(lifecycle=POLLED_STATES)["id"] for _ in range(3)]
    run = examples_home.dags_test("example_faxplus_mapped", conf={"outbox_fax_ids": ids})
    assert run.succeeded, run.output[-5000:]
    tasks = examples_home.task_states("example_faxplus_mapped")["tasks"]
    assert sorted((task, index) for task, index, _ in tasks if task != "fax_ids" and task != "summarize") == [
        ("tag_comment", 0),
        ("tag_comment", 1),
        ("tag_comment", 2),
        ("wait_until_sent", 0),
        ("wait_until_sent", 1),
        ("wait_until_sent", 2),
    ]
    assert all(state == "success" for _, _, state in tasks)
    for fax_id in ids:
        assert control.fax(fax_id)["comment"]["text"].startswith("batch run manual__")


def test_each_home_starts_from_its_own_copy_of_a_migrated_database(test_dags_home, examples_home):
    """``AirflowHome.create`` copies one database migrated per process instead of migrating each home:
    the copy is at the head revision of the installed Airflow's migrations (every DAG run in this
    module then uses it), and no two homes share a file."""
    import airflow
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory(str(Path(airflow.__file__).parent / "migrations")).get_heads())
    for home in (test_dags_home, examples_home):
        with closing(sqlite3.connect(home.path / "airflow.db")) as db:
            assert {row[0] for row in db.execute("SELECT version_num FROM alembic_version")} == heads
            assert db.execute("SELECT count(*) FROM slot_pool").fetchone() == (1,)  # default_pool
    assert not (test_dags_home.path / "airflow.db").samefile(examples_home.path / "airflow.db")
