"""The deployment helpers themselves, on stand-in processes (no Airflow needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_deployment import DagsTest, _children

# Stands in for `airflow dags test` whose LocalExecutor.end() waits on a worker that missed its stop
# message: the worker sits idle under Airflow's title, the parent has logged the shutdown and joins it.
_HUNG_SHUTDOWN = """
import os, sys, time
from setproctitle import setproctitle
worker = os.fork()
if worker == 0:
    setproctitle("airflow worker -- LocalExecutor: <idle>")
    time.sleep(600)
    os._exit(0)
with open(sys.argv[1], "ab") as out:
    out.write(b"[info] run successful\\n" * 5000)
    out.write(b"Shutting down LocalExecutor; waiting for running tasks\\n")
os.waitpid(worker, 0)
"""
_NEVER_ENDS = """
import os, time
if os.fork() == 0:
    time.sleep(600)
time.sleep(600)
"""


@pytest.fixture
def start(tmp_path) -> Iterator[Callable[..., DagsTest]]:
    """Starts a stand-in; kills whatever is left of it (and its children) after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def _start(script: str, **kwargs: float) -> DagsTest:
        output = tmp_path / f"out-{len(started)}"
        output.touch()  # as Deployment.dags_test, which sends the output there
        process = subprocess.Popen([sys.executable, "-c", script, str(output)])
        started.append(process)
        return DagsTest(process, output, **kwargs)

    yield _start
    for process in started:
        for child in _children(process.pid):
            os.kill(child, signal.SIGKILL)
        process.kill()
        process.wait()


def test_finish_stops_an_idle_worker_left_waiting_by_the_executor_shutdown(start):
    run = start(_HUNG_SHUTDOWN, missed_stop_after=1)
    started = time.monotonic()
    returncode, output = run.finish(timeout=60)
    assert returncode == 0
    assert output.endswith("Shutting down LocalExecutor; waiting for running tasks\n")
    assert time.monotonic() - started < 30


def test_finish_leaves_a_worker_alone_before_the_shutdown_has_had_its_time(start):
    run = start(_HUNG_SHUTDOWN, missed_stop_after=600)
    with pytest.raises(subprocess.TimeoutExpired):
        run.finish(timeout=3)


def test_finish_kills_a_run_that_outlives_its_timeout_and_its_children(start):
    run = start(_NEVER_ENDS)
    time.sleep(0.5)  # the child is forked
    pid = run.process.pid
    children = _children(pid)
    assert children
    with pytest.raises(subprocess.TimeoutExpired):
        run.finish(timeout=1)
    assert run.process.returncode is not None
    deadline = time.monotonic() + 10
    while not all(_gone(child) for child in children):
        assert time.monotonic() < deadline, f"still running: {children}"
        time.sleep(0.1)


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# Stands in for `airflow scheduler`: it starts a worker that ignores SIGTERM (as an idle LocalExecutor
# worker does) and a helper in a session of its own (as nothing should, and serve-logs may).
_SCHEDULER = """
import os, signal, sys, time
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
    os._exit(0)
if os.fork() == 0:
    os.setsid()
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def test_a_deployment_leaves_no_process_of_its_home_running(tmp_path, monkeypatch):
    """Finding 16: leaving the deployment stops what its processes started too."""
    from airflow_provider_faxplus.sandbox.dagtest import AirflowDeployment, AirflowHome, leftover_processes

    script = tmp_path / "airflow"
    script.write_text(f"#!{sys.executable}\n{_SCHEDULER}")
    script.chmod(0o755)
    home = AirflowHome(tmp_path, tmp_path, {"AIRFLOW_HOME": str(tmp_path)})
    monkeypatch.setattr(AirflowHome, "_airflow_bin", lambda self: str(script))
    try:
        with AirflowDeployment(home) as deployment:
            deployment.start("scheduler", "scheduler")
            deadline = time.monotonic() + 30
            while len(leftover_processes(tmp_path)) < 3:
                assert time.monotonic() < deadline, leftover_processes(tmp_path)
                time.sleep(0.1)
        assert leftover_processes(tmp_path) == []
    finally:
        for pid in leftover_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_a_process_whose_title_hides_its_environment_is_found_by_its_open_files(tmp_path):
    """setproctitle (Airflow's process titles) may overwrite the environment /proc shows."""
    from airflow_provider_faxplus.sandbox.dagtest import leftover_processes

    with (tmp_path / "scheduler.out").open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], stdout=output, env={}
        )
    try:
        assert leftover_processes(tmp_path) == [process.pid]
    finally:
        process.kill()
        process.wait()
    assert leftover_processes(tmp_path) == []
