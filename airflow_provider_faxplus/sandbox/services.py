"""Throw-away production services for deployment tests: a PostgreSQL cluster (Airflow's metadata
database) on a private unix socket and a Redis server (Celery's broker) on 127.0.0.1, each started from
Debian's packages (``postgresql``, ``redis-server``) and stopped, its files deleted, on leaving::

    with PostgresCluster() as postgres, RedisServer() as redis:
        home = AirflowHome.create(dags_folder="example_dags", database=postgres.new_database())
        redis.url  # redis://127.0.0.1:<port>/0
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

# PostgreSQL refuses to run as root: as root its commands run as Debian's ``postgres`` user.
_SERVICE_USER = "postgres"


def postgres_bin(name: str) -> str | None:
    """The path of one of PostgreSQL's server commands (Debian keeps them off the PATH), or None."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return str(versions[-1]) if versions else None


def postgres_missing() -> str | None:
    """Why a ``PostgresCluster`` cannot start here, or None when it can."""
    for name in ("initdb", "pg_ctl", "psql"):
        if postgres_bin(name) is None:
            return f"PostgreSQL's {name} is not installed (Debian package postgresql)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (PostgreSQL refuses to run as root)"
        try:
            import pwd

            pwd.getpwnam(_SERVICE_USER)
        except KeyError:
            return f"running as root and there is no {_SERVICE_USER!r} user (PostgreSQL refuses root)"
    return None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], object], what: str, timeout: float, interval: float = 1.0) -> None:
    """Poll ``check`` until it is true; after ``timeout`` seconds raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class _Service:
    """A server started by ``start()`` and stopped, its files deleted, by ``stop()``; as a context
    manager, started on entering and stopped on leaving (also when starting fails half-way)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


class PostgresCluster(_Service):
    """A PostgreSQL cluster in a temporary directory, listening only on a unix socket there (no TCP
    port, so nothing to collide with), trusting local connections of the user ``airflow``; its
    durability settings are off (it is thrown away). ``new_database()`` gives each Airflow home a
    database of its own."""

    USER = "airflow"
    PORT = 5432  # names the socket file only: there is no TCP listener

    def __init__(self) -> None:
        problem = postgres_missing()
        if problem:
            raise RuntimeError(problem)
        # Short and under /tmp: a unix socket path is limited to ~100 bytes, and the postgres user must
        # reach it (pytest's own tmp directories are private to root).
        self.path = Path(tempfile.mkdtemp(prefix="faxplus-pg-", dir="/tmp"))
        self.data = self.path / "data"
        self._count = 0
        self._lock = threading.Lock()
        self._templates: dict[str, str] = {}
        self._started = False

    def _as_owner(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", _SERVICE_USER, "--", *command] if os.geteuid() == 0 else command

    def _run(self, command: list[str], what: str, owner: bool = True) -> str:
        result = subprocess.run(  # noqa: S603 - PostgreSQL's own commands, fixed arguments
            self._as_owner(command) if owner else command,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
        return result.stdout

    def start(self) -> Self:
        if os.geteuid() == 0:
            shutil.chown(self.path, user=_SERVICE_USER)
        initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        assert initdb
        assert pg_ctl
        self._run(
            [initdb, "-D", str(self.data), "-A", "trust", "-U", self.USER, "-E", "UTF8", "--no-sync"],
            "initdb",
        )
        options = " ".join(
            [
                f"-k {self.path}",
                "-c listen_addresses=''",
                f"-p {self.PORT}",
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                # Schedulers, api-servers, triggerers, Celery workers and their task processes each
                # hold a connection pool.
                "-c max_connections=400",
            ]
        )
        self._started = True
        self._run(
            [pg_ctl, "-D", str(self.data), "-l", str(self.path / "server.log"), "-o", options, "-w", "start"],
            "pg_ctl start",
        )
        return self

    def stop(self) -> None:
        if self._started:
            pg_ctl = postgres_bin("pg_ctl")
            assert pg_ctl
            # Immediate: the cluster is thrown away, and a client left connected must not hold us up.
            subprocess.run(  # noqa: S603 - PostgreSQL's own command
                self._as_owner([pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=120,
                check=False,
            )
            self._started = False
        shutil.rmtree(self.path, ignore_errors=True)

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of one of the cluster's databases (Airflow's psycopg2 driver)."""
        return f"postgresql+psycopg2://{self.USER}@/{database}?host={self.path}&port={self.PORT}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        psql = postgres_bin("psql")
        assert psql
        command = [psql, "-h", str(self.path), "-p", str(self.PORT), "-U", self.USER, "-d", database]
        return self._run([*command, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", statement], "psql", owner=False)

    def new_database(self, template: str | None = None) -> str:
        """Create an empty database (or a copy of ``template``) and return its SQLAlchemy URL."""
        with self._lock:
            self._count += 1
            name = f"airflow_{self._count}_{int(time.time())}"
        clause = f" TEMPLATE {template}" if template else ""
        self.sql(f"CREATE DATABASE {name}{clause}")
        return self.url(name)

    def template(self, key: str, build: Callable[[str], object]) -> str:
        """The name of a database built once per ``key`` by ``build(url)`` (e.g. ``airflow db migrate``);
        ``new_database(template=...)`` copies it in a second instead of building again."""
        with self._lock:
            found = self._templates.get(key)
        if found:
            return found
        url = self.new_database()
        build(url)
        name = url.split("/")[3].split("?")[0]
        with self._lock:
            self._templates[key] = name
        return name

    def server_log(self) -> str:
        path = self.path / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def redis_missing() -> str | None:
    """Why a ``RedisServer`` cannot start here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian package redis-server)"
    return None


class RedisServer(_Service):
    """``redis-server`` on 127.0.0.1 and a free port, without persistence, in the foreground of a
    child process that leaving stops."""

    def __init__(self) -> None:
        problem = redis_missing()
        if problem:
            raise RuntimeError(problem)
        self.path = Path(tempfile.mkdtemp(prefix="faxplus-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> Self:
        self.port = free_port()
        server = shutil.which("redis-server")
        assert server
        with (self.path / "redis.out").open("ab") as output:
            self.process = subprocess.Popen(  # noqa: S603 - Debian's redis-server, fixed arguments
                [
                    server,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.path),
                ],
                stdout=output,
                stderr=output,
            )
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {process.returncode}; see {self.path}")
            return b"Ready to accept connections" in (self.path / "redis.out").read_bytes()

        wait_until(ready, "redis-server to accept connections", timeout, interval=0.2)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.path, ignore_errors=True)
