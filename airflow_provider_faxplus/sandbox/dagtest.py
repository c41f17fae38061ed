"""Run DAGs for real with ``airflow dags test`` in a throw-away ``AIRFLOW_HOME`` (SQLite), or run that
home as an Airflow 3 deployment (api-server, dag-processor, scheduler, triggerer) for event-driven DAGs.

Used by the demo and the tests; handy for developing DAGs against the sandbox too::

    with SandboxServer() as sandbox:
        home = AirflowHome.create(dags_folder="example_dags", connections={"faxplus_default": sandbox})
        run = home.dags_test("example_faxplus_tag_and_wait", conf={"outbox_fax_id": fax_id})
        run.succeeded, home.task_states("example_faxplus_tag_and_wait")
        with AirflowDeployment.airflow3(home) as deployment:
            deployment.unpause("example_faxplus_tag_new_faxes")
            deployment.dag_runs("example_faxplus_tag_new_faxes")
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow_provider_faxplus.sandbox.server import SandboxServer
from airflow_provider_faxplus.sandbox.services import PostgresCluster, free_port, wait_until

__all__ = ["AirflowDeployment", "AirflowHome", "PostgresCluster", "free_port", "wait_until"]


# Settings that ``airflow db migrate`` writes into the database: a home that sets one migrates its own.
_MIGRATE_INPUTS = (
    "AIRFLOW__DATABASE__",
    "AIRFLOW__LOGGING__LOG_FILENAME_TEMPLATE",
    "AIRFLOW__LOGGING__LOG_PROCESSOR_FILENAME_TEMPLATE",
    "AIRFLOW__ELASTICSEARCH__LOG_ID_TEMPLATE",
    "AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT",
    "AIRFLOW__CORE__AUTH_MANAGER",
)
_template_lock = threading.Lock()
_template: Path | None = None


def _migrated_database() -> Path:
    """A SQLite database migrated once per process (``db migrate`` takes many seconds) in a home of
    its own with default settings; each new home starts from a copy of it."""
    global _template
    with _template_lock:
        if _template is None:
            path = Path(tempfile.mkdtemp(prefix="faxplus-airflow-template-"))
            atexit.register(shutil.rmtree, path, ignore_errors=True)
            (path / "dags").mkdir()
            AirflowHome(path, path / "dags", _base_env(path, path / "dags")).airflow("db", "migrate")
            _template = path / "airflow.db"
        return _template


_SQL_ALCHEMY_CONN = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"


def _migrate_into(url: str) -> None:
    """``airflow db migrate`` with default settings into the database at ``url``."""
    path = Path(tempfile.mkdtemp(prefix="faxplus-airflow-template-"))
    try:
        (path / "dags").mkdir()
        env = {**_base_env(path, path / "dags"), _SQL_ALCHEMY_CONN: url}
        AirflowHome(path, path / "dags", env).airflow("db", "migrate")
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _base_env(home: Path, dags_folder: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder.resolve()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }


@dataclass
class DagTestRun:
    dag_id: str
    returncode: int
    output: str

    @property
    def succeeded(self) -> bool:
        # The exit code and the run's own closing log line must both say success.
        return self.returncode == 0 and "successful" in _marking_line(self.output)

    def lines_with(self, marker: str) -> list[str]:
        return [line.split(marker, 1)[1].strip() for line in self.output.splitlines() if marker in line]


def _marking_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "Marking run <DagRun" in line]
    return lines[-1] if lines else ""


@dataclass
class AirflowHome:
    path: Path
    dags_folder: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        dags_folder: str | os.PathLike[str],
        connections: dict[str, SandboxServer | str] | None = None,
        extra_env: dict[str, str] | None = None,
        path: str | os.PathLike[str] | None = None,
        postgres: PostgresCluster | None = None,
    ) -> AirflowHome:
        """A home on a SQLite database, or with ``postgres`` on a database of its own in that cluster
        (a copy of one that ``db migrate`` made once per cluster)."""
        home = Path(path or tempfile.mkdtemp(prefix="faxplus-airflow-"))
        env = _base_env(home, Path(dags_folder))
        # Without a key every Airflow process that finds no airflow.cfg writes one with a random key of
        # its own: a triggerer and a `dags test` started together then cannot read each other's
        # encrypted trigger kwargs (the copied database comes without a config).
        env["AIRFLOW__CORE__FERNET_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
        for conn_id, value in (connections or {}).items():
            text = value.connection_json() if isinstance(value, SandboxServer) else value
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = text
        env.update(extra_env or {})
        migrate_inputs = any(key.startswith(_MIGRATE_INPUTS) for key in env)
        if postgres is not None:
            if migrate_inputs:
                raise ValueError("a home on PostgreSQL takes no settings that `db migrate` stores")
            template = postgres.template(sys.executable, _migrate_into)
            env[_SQL_ALCHEMY_CONN] = postgres.new_database(template=template)
            home.mkdir(parents=True, exist_ok=True)
            return cls(home, Path(dags_folder).resolve(), env)
        instance = cls(home, Path(dags_folder).resolve(), env)
        if migrate_inputs or (home / "airflow.db").exists():
            instance.airflow("db", "migrate")
        else:
            home.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_migrated_database(), home / "airflow.db")
        return instance

    def _environ(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
        # Executors start `airflow tasks run` by name: this airflow must come first on the PATH.
        path = os.pathsep.join([str(Path(self._airflow_bin()).parent), base.get("PATH", "")])
        return {**base, "PATH": path, **self.env}

    def _airflow_bin(self) -> str:
        found = shutil.which("airflow", path=str(Path(sys.executable).parent)) or shutil.which("airflow")
        if not found:
            raise RuntimeError("the airflow command is not installed")
        return found

    def airflow(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 - our own airflow binary, fixed arguments
            [self._airflow_bin(), *args],
            capture_output=True,
            text=True,
            env=self._environ(),
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0 and args[:2] == ("db", "migrate"):
            raise RuntimeError(f"airflow db migrate failed:\n{result.stderr[-3000:]}")
        return result

    def dags_test(self, dag_id: str, conf: dict[str, Any] | None = None, timeout: float = 600) -> DagTestRun:
        args = ["dags", "test", dag_id]
        if conf is not None:
            args += ["--conf", json.dumps(conf)]
        result = self.airflow(*args, timeout=timeout)
        return DagTestRun(dag_id, result.returncode, result.stdout + result.stderr)

    def python(self, script: str, *args: str) -> str:
        """Run ``script`` with this home's environment; return what it printed after ``FAXPLUS-OUT:``."""
        result = subprocess.run(  # noqa: S603 - this interpreter, our own script
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            env=self._environ(),
            timeout=120,
            check=True,
        )
        # Airflow may log to stdout around it (DEBUG logging): take the marked line.
        [line] = [line for line in result.stdout.splitlines() if line.startswith("FAXPLUS-OUT:")]
        return line.partition(":")[2].strip()

    def sql(
        self, statement: str, json_columns: tuple[str, ...] = (), **params: object
    ) -> list[tuple[Any, ...]]:
        """The rows of a statement on the home's metadata database, run in this process: a poll then costs
        a query, not an Airflow process (seconds of CPU) competing with the deployment it watches.
        ``json_columns`` are decoded as SQLAlchemy's JSON type does (on SQLite they are text)."""
        import sqlalchemy

        url = self.env.get(_SQL_ALCHEMY_CONN) or f"sqlite:///{self.path / 'airflow.db'}"
        text = sqlalchemy.text(statement)
        typed = text.columns(*(sqlalchemy.column(name, sqlalchemy.JSON) for name in json_columns))
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.begin() as connection:  # a write (UPDATE) is committed on leaving
                result = connection.execute(typed if json_columns else text, params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def clear_leftover_triggers(self) -> int:
        """Delete the trigger rows no deferred task, asset or callback needs (Airflow 3; what `dags test`
        leaves behind); how many. See ``_CLEAR_LEFTOVER_TRIGGERS`` for why a deployment needs this."""
        return int(json.loads(self.python(_CLEAR_LEFTOVER_TRIGGERS)))

    def task_states(self, dag_id: str) -> dict[str, Any]:
        """The latest run's state and ``[task_id, map_index, state]`` of each of its task instances."""
        runs = self.sql(
            "SELECT run_id, state FROM dag_run WHERE dag_id = :d ORDER BY id DESC LIMIT 1", d=dag_id
        )
        if not runs:
            return {"run_id": None, "state": None, "tasks": []}
        [(run_id, state)] = runs
        tasks = self.sql(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = :d AND run_id = :r",
            d=dag_id,
            r=run_id,
        )
        # str(): a task instance not yet run shows "None", as Airflow's state enum printed does.
        found = sorted([task_id, index, str(task_state)] for task_id, index, task_state in tasks)
        return {"run_id": run_id, "state": str(state), "tasks": found}


# Trigger rows a finished `dags test` leaves behind (its task no longer deferred): a triggerer started
# on the home would run them, Airflow then deletes their rows, and SQLite gives a deleted row's id to
# the next trigger created (an asset watcher's), so the stale trigger's event lands on that asset.
# Airflow's own clean-up (Trigger.clean_unused) removes them before any triggerer can pick them up.
_CLEAR_LEFTOVER_TRIGGERS = """
import json
from sqlalchemy import func, select
from airflow.models.trigger import Trigger
from airflow.utils.session import create_session
with create_session() as session:
    before = session.scalar(select(func.count(Trigger.id)))
Trigger.clean_unused()
with create_session() as session:
    after = session.scalar(select(func.count(Trigger.id)))
print("FAXPLUS-OUT:", json.dumps(before - after))
"""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback URL
            return int(response.status) < 500
    except (urllib.error.URLError, OSError):
        return False


def leftover_processes(home: Path) -> list[int]:
    """Live processes (zombies aside) whose environment names ``home`` as ``AIRFLOW_HOME`` or that hold
    a file under it open (their output, a log): what an Airflow process started on the home left
    running (``serve-logs``, an idle LocalExecutor worker). Both, as a process title set with
    setproctitle may overwrite what /proc shows of the environment."""
    marker = f"AIRFLOW_HOME={home}".encode()
    prefix = f"{home}{os.sep}"
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name) if proc.name.isdigit() else 0
        if pid in (0, os.getpid()):
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                continue
            if marker in (proc / "environ").read_bytes().split(b"\0") or any(
                os.readlink(fd).startswith(prefix) for fd in (proc / "fd").iterdir()
            ):
                found.append(pid)
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


def stop_processes(processes: list[subprocess.Popen[bytes]], home: Path | None, timeout: float = 60) -> None:
    """Stop Airflow processes started in sessions of their own (``start_new_session=True``), and
    everything they started: SIGTERM to each (its own clean shutdown), SIGKILL after ``timeout``; then
    SIGTERM, and 5 s later SIGKILL, to whatever is left in their process groups and, given ``home``,
    to anything still running on it (a LocalExecutor worker ignores SIGTERM; ``serve-logs`` outlives
    the scheduler)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def left() -> list[int]:
        members = [pid for process in processes for pid in _group_members(process.pid)]
        return members + (leftover_processes(home) if home is not None else [])

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        end = time.monotonic() + 5
        while left() and time.monotonic() < end:
            time.sleep(0.1)
        if not left():
            return


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@dataclass
class AirflowDeployment:
    """Airflow processes started on one ``AirflowHome``; each writes to ``<home>/<name>.out``.

    A context manager: leaving it (also on an exception or Ctrl-C) stops every process it started."""

    home: AirflowHome
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_port: int | None = None

    @classmethod
    def airflow3(cls, home: AirflowHome, startup_timeout: float = 300) -> AirflowDeployment:
        """Start an api-server on 127.0.0.1 (the execution API the tasks talk to), then a dag-processor,
        a scheduler and a triggerer. Sets the home's settings they share; stops them all if one fails.
        Trigger rows left by earlier ``dags test`` runs on the home are deleted first (see
        ``_CLEAR_LEFTOVER_TRIGGERS``)."""
        home.clear_leftover_triggers()
        port = free_port()
        home.env.update(
            {
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            }
        )
        deployment = cls(home, api_port=port)
        try:
            deployment.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
            deployment.wait_healthy(startup_timeout)
            for name in ("dag-processor", "scheduler", "triggerer"):
                deployment.start(name, name)
        except BaseException:
            deployment.stop_all()
            raise
        return deployment

    def start(self, name: str, *args: str) -> None:
        if name in self.processes:
            raise ValueError(f"an Airflow process named {name!r} is already running")
        with (self.home.path / f"{name}.out").open("ab") as output:
            # A session of its own: stopping it reaches whatever it starts (see stop_processes).
            self.processes[name] = subprocess.Popen(  # noqa: S603 - our own airflow binary
                [self.home._airflow_bin(), *args],
                env=self.home._environ(),
                stdout=output,
                stderr=output,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health"

        def healthy() -> bool:
            self.check_alive()
            return _answers(url)

        wait_until(healthy, "the api-server to answer", timeout)

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` naming a process that has exited, and where its output is."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                output = self.home.path / f"{name}.out"
                raise RuntimeError(f"airflow {name} exited with code {process.returncode}; see {output}")

    def stop(self, name: str, timeout: float = 60) -> None:
        """Stop one process and what it started (not what the others did: see :meth:`stop_all`)."""
        process = self.processes.pop(name)
        stop_processes([process], None, timeout)

    def stop_all(self) -> None:
        """Stop every process, then anything still running on the home; none outlives this."""
        # The scheduler first: it starts task processes that talk to the api-server.
        for name in sorted(self.processes, key=lambda name: name == "api-server"):
            self.stop(name)
        stop_processes([], self.home.path)

    def __enter__(self) -> AirflowDeployment:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop_all()

    def unpause(self, *dag_ids: str, timeout: float = 300) -> None:
        """Unpause the DAGs once the dag-processor has stored them all."""
        wanted = sorted(dag_ids)

        def stored() -> bool:
            self.check_alive()
            return set(wanted) <= {dag_id for (dag_id,) in self.home.sql("SELECT dag_id FROM dag")}

        wait_until(stored, f"the dag-processor to store {', '.join(wanted)}", timeout)
        for dag_id in wanted:
            self.home.sql("UPDATE dag SET is_paused = :paused WHERE dag_id = :d", paused=False, d=dag_id)

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        """Each run of the DAG, oldest first: ``run_id``, ``state`` and the XComs its tasks returned."""
        runs = self.home.sql("SELECT id, run_id, state FROM dag_run WHERE dag_id = :d ORDER BY id", d=dag_id)
        xcoms = self.home.sql(
            "SELECT dag_run_id, value FROM xcom WHERE dag_id = :d AND key = 'return_value'"
            " ORDER BY dag_run_id, task_id, map_index",
            ("value",),
            d=dag_id,
        )
        return [
            {
                "run_id": run_id,
                "state": state,
                "xcom": [_xcom_value(value) for of_run, value in xcoms if of_run == run],
            }
            for run, run_id, state in runs
        ]

    def asset_events(self, asset: str) -> list[dict[str, Any]]:
        """The payload of each event of the asset, oldest first."""
        rows = self.home.sql(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = :name"
            " ORDER BY e.id",
            ("extra",),
            name=asset,
        )
        payloads: list[Any] = [(extra or {}).get("payload") for (extra,) in rows]
        return payloads

    def asset_state(self, asset: str) -> dict[str, str]:
        """What the asset's watchers keep in its state store (empty before they first wrote)."""
        rows = self.home.sql(
            "SELECT s.key, s.value FROM asset_state_store s JOIN asset a ON a.id = s.asset_id"
            " WHERE a.name = :name",
            name=asset,
        )
        return {str(key): str(value) for key, value in rows}


def _xcom_value(value: Any) -> Any:
    """An XCom as Airflow 3 reads it (``XComModel.deserialize_value``): the Task SDK stores values as
    JSON (a plain string is a JSON string, no JSON text to decode); what ``serialize_value`` stored is
    JSON text, decoded."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value
