"""A real deployment on 127.0.0.1: a real ``airflow triggerer`` (and on Airflow 3 a real ``airflow
api-server``), started and stopped here, running DAGs through ``airflow dags test --use-executor``, so
every task runs supervised by an executor and writes its log files under ``$AIRFLOW_HOME/logs``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from airflow import __version__ as airflow_version

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowHome, leftover_processes, stop_processes

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_3 = int(airflow_version.split(".")[0]) >= 3
# Distinctive and used nowhere else, so any occurrence in a file is a leak.
TOKEN = "alohi_pat_DEPLOYED-leakcheck-4d2e9a71"

_XCOM = """
import json, sys
try:
    from airflow.models.xcom import XComModel as XCom  # Airflow 3
except ImportError:
    from airflow.models import XCom
from airflow.utils.session import create_session
with create_session() as session:
    rows = session.query(XCom).filter(XCom.dag_id == sys.argv[1], XCom.task_id == sys.argv[2]).all()
    values = []
    for row in rows:
        value = row.value  # 2.11 loads it already
        if isinstance(value, (bytes, str)):
            value = XCom.deserialize_value(row)
        if isinstance(value, (bytes, str)):
            value = json.loads(value)
        values.append(value)
    print("FAXPLUS-OUT:", json.dumps(values))
"""
_TIME_OUT_DEFERRALS = """
from airflow.jobs.job import Job
from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
SchedulerJobRunner(job=Job()).check_trigger_timeouts()
print("FAXPLUS-OUT: checked")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], object], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


# Airflow 3.3's LocalExecutor.end() sends one stop message per live worker, then joins them all; now
# and then (more often on a busy machine) a worker gets none and the join waits forever, after the run
# has finished. An idle worker still there this long after the shutdown began missed its message.
_SHUTDOWN = b"Shutting down LocalExecutor"
_IDLE_WORKER = b"airflow worker -- LocalExecutor: <idle>"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it has just exited
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _title(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class DagsTest:
    process: subprocess.Popen[bytes]
    output_file: Path
    missed_stop_after: float = 15.0

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for ``dags test`` to exit; stop the idle LocalExecutor workers that missed their stop
        message (see ``_SHUTDOWN``); kill it and its workers (no process left behind) on timeout."""
        started = time.monotonic()
        seen, shutdown_at = 0, None
        while self.process.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                for child in _children(self.process.pid):
                    os.kill(child, signal.SIGKILL)
                self.process.kill()
                self.process.wait()
                raise subprocess.TimeoutExpired(self.process.args, timeout)
            if shutdown_at is None:
                with self.output_file.open("rb") as output:
                    output.seek(start := max(seen - len(_SHUTDOWN), 0))
                    chunk = output.read()
                seen = start + len(chunk)
                if _SHUTDOWN in chunk:
                    shutdown_at = now
            elif now - shutdown_at > self.missed_stop_after:
                for child in _children(self.process.pid):
                    if _title(child).startswith(_IDLE_WORKER):
                        os.kill(child, signal.SIGTERM)
            time.sleep(0.5)
        return self.process.returncode, self.output_file.read_text(errors="replace")


@dataclass
class Deployment:
    home: AirflowHome
    sandbox: SandboxServer
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> None:
        with (self.home.path / f"{name}.out").open("ab") as output:
            self.processes[name] = subprocess.Popen(
                [self.home._airflow_bin(), *args],
                env=self.home._environ(),
                stdout=output,
                stderr=output,
                start_new_session=True,
            )

    def stop(self, name: str) -> None:
        """Stop the process and everything it started (its process group)."""
        stop_processes([self.processes.pop(name)], None)

    def stop_all(self) -> None:
        """Stop every process; then nothing started on the home may still run."""
        stop_processes([self.processes.pop(name) for name in list(self.processes)], self.home.path)
        left = leftover_processes(self.home.path)
        assert left == [], f"processes of the deployment outlived it: {left}"

    def dags_test(self, dag_id: str, conf: dict[str, object], **env: str) -> DagsTest:
        """Start ``airflow dags test --use-executor`` in the background; its output goes to a file
        (DEBUG logging fills a pipe that nobody reads while the test waits)."""
        output = self.home.path / f"dags-test-{dag_id}.out"
        with output.open("wb") as sink:
            command = ["dags", "test", "--use-executor", dag_id, "--conf", json.dumps(conf)]
            process = subprocess.Popen(
                [self.home._airflow_bin(), *command],
                env={**self.home._environ(), **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return DagsTest(process, output)

    def trigger_logs(self, dag_id: str) -> list[Path]:
        return sorted((self.home.path / "logs").glob(f"dag_id={dag_id}/**/*.trigger.*.log"))

    def polled(self, dag_id: str, triggerers: int = 1) -> bool:
        """Whether the ``triggerers``-th triggerer to run the task's trigger has logged a poll."""
        logs = self.trigger_logs(dag_id)
        return len(logs) >= triggerers and "is submitted" in logs[triggerers - 1].read_text()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    dags = tmp_path_factory.mktemp("deployed-dags")
    for example in ("example_faxplus_tag_and_wait.py", "example_faxplus_mapped.py"):
        shutil.copy(ROOT / "example_dags" / example, dags)
    shutil.copy(ROOT / "tests" / "dags" / "faxplus_deferral_timeout.py", dags)
    shutil.copy(ROOT / "tests" / "dags" / "faxplus_deferrable_restart.py", dags)
    port = _free_port()
    with SandboxServer(token=TOKEN) as sandbox:
        # The connection in AIRFLOW_CONN_* URI form, the token percent-encoded in the password.
        uri = f"faxplus://:{quote(TOKEN, safe='')}@{quote(sandbox.base_url, safe='')}"
        home = AirflowHome.create(
            dags_folder=dags,
            connections={"faxplus_default": uri},
            extra_env={
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",  # every request is logged by the provider
                "FAXPLUS_EXAMPLE_POKE_INTERVAL": "1",
            },
            path=tmp_path_factory.mktemp("deployed-home"),
        )
        deployed = Deployment(home, sandbox)
        if AIRFLOW_3:
            deployed.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
            wait_for(lambda: _answers(f"http://127.0.0.1:{port}/api/v2/monitor/health"), "the api-server")
        deployed.start("triggerer", "triggerer")
        try:
            yield deployed
        finally:
            deployed.stop_all()


@pytest.fixture(autouse=True)
def deployed_traffic_conforms(deployment: Deployment) -> Iterator[None]:
    """What the tasks and triggers sent, and what the sandbox answered, must conform to the spec."""
    from tests.conformance import problems

    yield
    control = deployment.sandbox.client
    assert control is not None
    log = control.requests(clear=True)
    assert log, "the run sent no request"
    found = problems(deployment.sandbox.root_url, log)
    assert not found, "spec conformance:\n" + "\n".join(found[:20])


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def test_a_deferred_sensor_survives_a_triggerer_restart_and_no_token_reaches_any_file(deployment):
    control = deployment.sandbox.client
    assert control is not None
    fax_id = control.create_fax(lifecycle=[{"status": "submitted", "seconds": 3600}])["id"]
    dag_id = "example_faxplus_tag_and_wait"
    run = deployment.dags_test(dag_id, {"outbox_fax_id": fax_id})

    # The sensor deferred and the triggerer is polling: restart the triggerer under it.
    wait_for(lambda: deployment.polled(dag_id), "the first triggerer's polls")
    deployment.stop("triggerer")
    deployment.start("triggerer", "triggerer")
    wait_for(lambda: deployment.polled(dag_id, 2), "the second triggerer's polls")
    control.advance(3600)  # now the fax leaves the outbox
    returncode, output = run.finish(timeout=240)
    assert returncode == 0, output[-5000:]
    assert control.fax(fax_id)["in_outbox"] is False

    # Two triggerers ran the trigger: the second one rebuilt it from its serialized kwargs.
    trigger_logs = deployment.trigger_logs(dag_id)
    assert len(trigger_logs) == 2, trigger_logs
    assert "no longer resolves" in trigger_logs[-1].read_text()
    states = deployment.home.task_states(dag_id)
    assert {task: state for task, _, state in states["tasks"]} == {
        "tag_comment": "success",
        "wait_until_sent": "success",
        "report": "success",
    }
    [xcom] = json.loads(deployment.home.python(_XCOM, dag_id, "wait_until_sent"))
    assert (xcom["outbox_fax_id"], xcom["reason"], xcom["ever_seen"]) == (fax_id, "not_found", True)
    assert xcom["last_status"] == "submitted"

    assert_no_token_anywhere(deployment, dag_id, [fax_id])


def test_a_restart_after_the_trigger_first_saw_the_fax_keeps_that_sighting(deployment):
    """The sensor's first look comes before the fax is visible; the trigger is the first to see it, the
    triggerer stops, the fax leaves, a new triggerer starts: its first look is a not-found. Airflow
    rebuilds a trigger from the kwargs of the latest deferral, so a trigger that forgot the sighting would
    wait out the grace period and fail with "never found";
    the first sighting is checkpointed through the sensor into those kwargs."""
    control = deployment.sandbox.client
    assert control is not None
    fax_id = control.create_fax(visible_after=3600, lifecycle=[{"status": "submitted", "seconds": 7200}])[
        "id"
    ]
    dag_id = "faxplus_deferrable_restart"
    run = deployment.dags_test(dag_id, {"outbox_fax_id": fax_id})

    def logs_saying(text: str, *but_not: str) -> list[Path]:
        def says(line: str) -> bool:
            return text in line and not any(other in line for other in but_not)

        return [
            path
            for path in deployment.trigger_logs(dag_id)
            if any(says(line) for line in path.read_text(errors="replace").splitlines())
        ]

    wait_for(lambda: logs_saying("is not found yet"), "the first trigger's polls (fax not visible yet)")
    control.advance(3600)  # now the fax is visible
    # One triggerer writes one log file per try: the trigger of the resumed deferral writes there too.
    # (Not the checkpoint itself, nor 2.11's "fired: TriggerEvent<...>" line quoting it: Airflow 2.11's
    # triggerer drops a fired event it has not stored yet when it stops.)
    wait_for(
        lambda: logs_saying("is submitted; waiting", "first sighting", "TriggerEvent"),
        "the trigger of the deferral resumed after the first sighting's checkpoint",
    )
    before_restart = set(deployment.trigger_logs(dag_id))
    deployment.stop("triggerer")
    control.advance(3600)  # the fax leaves the outbox while no triggerer watches
    deployment.start("triggerer", "triggerer")
    returncode, output = run.finish(timeout=300)
    assert not logs_saying("never found")
    assert returncode == 0, output[-5000:]
    [verdict] = [path for path in logs_saying("no longer resolves: it has left the outbox")]
    assert verdict not in before_restart  # the rebuilt trigger's first look was the not-found
    [sensor_log] = (deployment.home.path / "logs").glob(f"dag_id={dag_id}/**/task_id=wait/attempt=1.log")
    assert "remembered, waiting on in the triggerer" in sensor_log.read_text()
    [xcom] = json.loads(deployment.home.python(_XCOM, dag_id, "wait"))
    assert (xcom["outbox_fax_id"], xcom["reason"], xcom["ever_seen"]) == (fax_id, "not_found", True)
    assert xcom["last_status"] == "submitted"
    states = deployment.home.task_states(dag_id)
    assert {task: state for task, _, state in states["tasks"]} == {"wait": "success", "show": "success"}


def assert_no_token_anywhere(
    deployment: Deployment, dag_id: str, fax_ids: list[str], logged_calls: tuple[str, ...] = ("GET", "PUT")
) -> None:
    """The supervised task logs (DEBUG: every request logged), the trigger logs, the metadata database
    (XComs, rendered template fields, trigger kwargs), the output of dags test, triggerer and api-server."""
    files = [path for path in deployment.home.path.rglob("*") if path.is_file()]
    task_logs = [path for path in files if path.suffix == ".log" and f"dag_id={dag_id}" in str(path)]
    logged = "".join(path.read_text(errors="replace") for path in task_logs)
    for fax_id in fax_ids:  # else finding no token would prove nothing
        for method in logged_calls:
            assert f"{method} /accounts/self/outbox/{fax_id} -> HTTP 2" in logged
    assert {path.name for path in files} >= {f"dags-test-{dag_id}.out", "triggerer.out"}
    leaks = [str(path) for path in files if TOKEN.encode() in path.read_bytes()]
    assert leaks == []


def test_the_mapped_example_with_the_token_in_json_form(deployment):
    """The other example, its tasks given the connection in JSON form (the triggerer keeps the URI form)."""
    control = deployment.sandbox.client
    assert control is not None
    # Counted in looks, not seconds: 2.11's SequentialExecutor runs one task at a time, slowly.
    lifecycle = [{"status": "submitted", "polls": 2}, {"status": "sending", "polls": 1}]
    ids = [control.create_fax(lifecycle=lifecycle)["id"] for _ in range(3)]
    dag_id = "example_faxplus_mapped"
    run = deployment.dags_test(
        dag_id, {"outbox_fax_ids": ids}, AIRFLOW_CONN_FAXPLUS_DEFAULT=deployment.sandbox.connection_json()
    )
    returncode, output = run.finish(timeout=240)
    assert returncode == 0, output[-5000:]
    tasks = deployment.home.task_states(dag_id)["tasks"]
    assert len(tasks) == 8, tasks  # fax_ids, 3 x tag_comment, 3 x wait_until_sent, summarize
    assert all(state == "success" for _, _, state in tasks), tasks
    assert all(control.fax(fax_id)["comment"]["text"].startswith("batch run ") for fax_id in ids)
    assert_no_token_anywhere(deployment, dag_id, ids)


@pytest.mark.parametrize(
    ("dag_id", "final_state"),
    [("faxplus_deferral_timeout", "failed"), ("faxplus_deferral_timeout_soft_fail", "skipped")],
)
def test_a_deferral_that_outlives_the_timeout(deployment, dag_id, final_state):
    """timeout=3 on a fax that never leaves: Airflow's scheduler times the deferral out (``dags test``
    has no scheduler, so the test runs the scheduler's own check), the sensor times out, and
    ``soft_fail=True`` turns that into skipped."""
    control = deployment.sandbox.client
    assert control is not None
    fax_id = control.create_fax(lifecycle=[{"status": "submitted", "seconds": 3600}])["id"]
    run = deployment.dags_test(dag_id, {"outbox_fax_id": fax_id})
    # A trigger log means the task has deferred (a file check: cheaper than asking the database).
    wait_for(lambda: deployment.polled(dag_id), "the trigger's polls")
    time.sleep(4)
    deployment.home.python(_TIME_OUT_DEFERRALS)
    _, output = run.finish(timeout=120)
    [(_, _, state)] = deployment.home.task_states(dag_id)["tasks"]
    assert state == final_state, output[-5000:]
    [task_log] = (deployment.home.path / "logs").glob(f"dag_id={dag_id}/**/task_id=wait/attempt=1.log")
    # Airflow 3 turns the deferral timeout into AirflowSensorTimeout; 2.11 fails with TaskDeferralError.
    said = task_log.read_text()
    if final_state == "skipped":
        assert "soft_fail" in said
    else:
        assert "AirflowSensorTimeout" in said or "TaskDeferralError: Trigger/execution timeout" in said
    assert_no_token_anywhere(deployment, dag_id, [fax_id], logged_calls=("GET",))  # exception text too
