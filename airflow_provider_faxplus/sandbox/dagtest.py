"""Run DAGs for real with ``airflow dags test`` in a throw-away ``AIRFLOW_HOME`` (SQLite).

Used by the demo and the tests; handy for developing DAGs against the sandbox too::

    with SandboxServer() as sandbox:
        home = AirflowHome.create(dags_folder="example_dags", connections={"faxplus_default": sandbox})
        run = home.dags_test("example_faxplus_tag_and_wait", conf={"outbox_fax_id": fax_id})
        run.succeeded, home.task_states("example_faxplus_tag_and_wait")
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_faxplus.sandbox.server import SandboxServer

_TASK_STATES = """
import json, sys
from airflow.models import DagRun, TaskInstance
from airflow.utils.session import create_session
dag_id = sys.argv[1]
with create_session() as session:
    run = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).first()
    rows = [] if run is None else session.query(TaskInstance).filter(
        TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id).all()
    print("FAXPLUS-OUT:", json.dumps({"run_id": run and run.run_id, "state": run and str(run.state),
        "tasks": sorted([[ti.task_id, ti.map_index, str(ti.state)] for ti in rows])}))
"""


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
    ) -> AirflowHome:
        home = Path(path or tempfile.mkdtemp(prefix="faxplus-airflow-"))
        env = _base_env(home, Path(dags_folder))
        for conn_id, value in (connections or {}).items():
            text = value.connection_json() if isinstance(value, SandboxServer) else value
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = text
        env.update(extra_env or {})
        instance = cls(home, Path(dags_folder).resolve(), env)
        if any(key.startswith(_MIGRATE_INPUTS) for key in env) or (home / "airflow.db").exists():
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

    def task_states(self, dag_id: str) -> dict[str, Any]:
        """The latest run's state and ``[task_id, map_index, state]`` of each of its task instances."""
        states: dict[str, Any] = json.loads(self.python(_TASK_STATES, dag_id))
        return states
