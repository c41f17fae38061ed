"""Shared bits of the benchmarks: a sandbox in its own process, medians, machine facts."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

TOKEN = "sandbox-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class Sandbox:
    """``faxplus-sandbox`` in a child process, so it never shares the measured process's CPU time or loop."""

    def __init__(self, members: tuple[str, ...] = ()) -> None:
        if members:  # member accounts (user_ids of the one token): started through the server class
            cmd = [sys.executable, str(Path(__file__).with_name("_sandbox_proc.py")), TOKEN, *members]
        else:
            cmd = [str(Path(sys.executable).parent / "faxplus-sandbox"), "--port", "0"]
        # The token from the environment: the sandbox refuses secrets on its command line.
        env = {**os.environ, "FAXPLUS_SANDBOX_TOKEN": TOKEN}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = ""
        while not line.startswith("Fax.Plus sandbox listening on "):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the sandbox did not start")
        self.base_url = line.strip().rsplit(" ", 1)[1]
        self.root = self.base_url[: -len("/v3")]
        self.http = requests.Session()

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"{self.root}/_sandbox{path}", json=body, timeout=120)
        response.raise_for_status()
        return response.json()

    def create_fax(self, **spec: Any) -> str:
        fax_id: str = self.control("POST", "/faxes", spec)["id"]
        return fax_id

    def fax_url(self, fax_id: str) -> str:
        return f"{self.base_url}/accounts/self/outbox/{fax_id}"

    def connection_json(self, **extra: Any) -> str:
        return json.dumps({"conn_type": "faxplus", "host": self.base_url, "password": TOKEN, "extra": extra})

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the sandbox process has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def machine() -> str:
    mem_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    import airflow

    return (
        f"{os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GiB, {platform.python_implementation()} "
        f"{platform.python_version()}, Airflow {airflow.__version__}"
    )


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class FullCollections:
    """Full (generation 2) garbage collections while in the block: how many, the longest, the sum."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.durations.append(time.perf_counter() - self._started)

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)
