#!/usr/bin/env python3
"""Project runner that needs nothing but python3: it creates and reuses its own virtualenvs.

python3 scripts/dev.py test              # lint + tests on Airflow 3.3 and 2.11 (at the same time)
python3 scripts/dev.py test --airflow 3.3 -- -k hook   # one line, extra pytest args
python3 scripts/dev.py demo              # the sandbox demo (see README)
python3 scripts/dev.py lint              # ruff + mypy
python3 scripts/dev.py bench             # the benchmarks (docs/benchmarks.md)
python3 scripts/dev.py docs              # rewrite the fault table of docs/reliability.md from the tests
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_LINES = {"3.3": "apache-airflow==3.3.2", "2.11": "apache-airflow==2.11.*"}
DEFAULT_LINE = "3.3"
# What the benchmarks compare against; installed only in the benchmark virtualenv.
BENCH_EXTRAS = ["apache-airflow-providers-http==6.3.0", "faxplus-api==3.0.5", "httpx==0.28.1"]


# Debian packages the tests use, each known by a file it installs: the browser of tests/test_browser.py
# (Debian's chromium, never a browser that Playwright downloads), and the metadata database and Celery
# broker of tests/test_production.py.
DEBIAN_PACKAGES = {
    "chromium": "usr/bin/chromium",
    "postgresql": "usr/lib/postgresql/*/bin/initdb",
    "redis-server": "usr/bin/redis-server",
}


def ensure_chromium() -> None:
    """Install the missing DEBIAN_PACKAGES when we may (root, apt-get), in one apt-get; otherwise the
    tests that need them skip and say why. Idempotent: nothing happens once they are installed."""
    missing = [name for name, file in DEBIAN_PACKAGES.items() if not any(Path("/").glob(file))]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"== {', '.join(missing)} missing and no root apt-get: the tests needing them will skip")
        return
    print(f"== installing {', '.join(missing)} for the tests (apt-get)", flush=True)
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(
                f"== {' '.join(cmd)} failed, the tests needing it will skip:\n{result.stderr[-2000:]}",
                flush=True,
            )
            return
    print(f"== {', '.join(missing)} installed in {time.monotonic() - started:.0f} s", flush=True)


def _venv_dir(line: str) -> Path:
    return ROOT / ".venv" / f"airflow-{line}"


def _run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(str(part) for part in cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def ensure_env(line: str, extras: list[str] | None = None) -> Path:
    """A virtualenv with the pinned Airflow line, this package (editable), the dev tools and ``extras``."""
    name = f"{line}-bench" if extras else line
    target = _venv_dir(name)
    python = target / "bin" / "python"
    inputs = (
        (ROOT / "pyproject.toml").read_bytes()
        + AIRFLOW_LINES[line].encode()
        + " ".join(extras or []).encode()
    )
    stamp = target / ".installed"
    digest = hashlib.sha256(inputs).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    print(f"== setting up {target.relative_to(ROOT)} ({AIRFLOW_LINES[line]})", flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", "--upgrade", "pip"])
    _run([*pip, "install", AIRFLOW_LINES[line], "-e", f"{ROOT}[sandbox,dev,deploy]", *(extras or [])])
    stamp.write_text(digest)
    return python


def lint(line: str = DEFAULT_LINE) -> None:
    python = str(ensure_env(line))
    _run([python, "-m", "ruff", "check", "."], cwd=ROOT)
    _run([python, "-m", "ruff", "format", "--check", "."], cwd=ROOT)
    _run([python, "-m", "mypy"], cwd=ROOT)


def test(lines: list[str], pytest_args: list[str], with_lint: bool, concurrent: bool) -> None:
    """pytest on each line. The lines run at the same time by default: much of a line's time is spent
    waiting on Airflow processes, so two lines on 2 cores take far less than twice one line. Each
    other line (its virtualenv set up if needed, then its tests) runs in a child ``dev.py test``
    started before the lint; the first line's output is shown as it comes, the others' after it."""
    ensure_chromium()  # before any child starts: one apt-get at a time
    others: dict[str, tuple[list[str], subprocess.Popen[bytes]]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faxplus-dev-") as outputs:
        try:
            if concurrent:
                for line in lines[1:]:
                    cmd = [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "test",
                        "--airflow",
                        line,
                        "--no-lint",
                    ]
                    cmd += ["--", *pytest_args]
                    print(
                        f"== tests on Airflow {line} in the background (its output comes after)", flush=True
                    )
                    with (Path(outputs) / f"{line}.out").open("wb") as sink:
                        # A session of its own: stopping it stops its pytest and Airflow processes too.
                        process = subprocess.Popen(
                            cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                        )
                    others[line] = (cmd, process)
            if with_lint:
                lint()
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
            failed: subprocess.CalledProcessError | None = None
            for line in lines if not concurrent else lines[:1]:
                python = str(ensure_env(line))
                print(f"== tests on Airflow {line}", flush=True)
                try:
                    _run([python, "-m", "pytest", *pytest_args], cwd=ROOT, env=env)
                except subprocess.CalledProcessError as exc:
                    if not others:
                        raise
                    failed = exc
                print(
                    f"== Airflow {line}: {'FAILED' if failed else 'passed'} ({_minutes(started)} in)",
                    flush=True,
                )
            for line, (cmd, process) in others.items():
                process.wait()
                print(f"\n== output of the tests on Airflow {line}", flush=True)
                sys.stdout.buffer.write((Path(outputs) / f"{line}.out").read_bytes())
                sys.stdout.flush()
                verdict = "passed" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
                print(f"== Airflow {line}: {verdict} (all lines done {_minutes(started)} in)", flush=True)
                if process.returncode != 0 and failed is None:
                    failed = subprocess.CalledProcessError(process.returncode, cmd)
            if failed is not None:
                raise failed
        finally:
            for _, process in others.values():
                if process.poll() is None:  # the lint, the first line or Ctrl-C stopped us
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait()


def _minutes(since: float) -> str:
    return f"{(time.monotonic() - since) / 60:.1f} min"  # since the start of `dev.py test`


def bench(args: list[str]) -> None:
    python = str(ensure_env(DEFAULT_LINE, BENCH_EXTRAS))
    _run([python, str(ROOT / "bench" / "run_all.py"), *args], cwd=ROOT)


def demo(line: str) -> None:
    python = str(ensure_env(line))
    _run([python, str(ROOT / "scripts" / "demo.py")], cwd=ROOT)


def docs() -> None:
    _run([str(ensure_env(DEFAULT_LINE)), "-m", "tests.fault_matrix"], cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_test = sub.add_parser("test", help="lint, then pytest on each Airflow line")
    p_test.add_argument("--airflow", choices=sorted(AIRFLOW_LINES), action="append", help="only this line")
    p_test.add_argument("--no-lint", action="store_true", help="skip ruff and mypy")
    p_test.add_argument(
        "--one-at-a-time", action="store_true", help="run the lines one after the other, not at the same time"
    )
    p_test.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    p_demo = sub.add_parser("demo", help="run the example DAGs against the sandbox")
    p_demo.add_argument("--airflow", choices=sorted(AIRFLOW_LINES), default=DEFAULT_LINE)
    sub.add_parser("lint", help="ruff and mypy")
    p_bench = sub.add_parser("bench", help="run the benchmarks and print their tables")
    p_bench.add_argument("bench_args", nargs="*", help="passed to bench/run_all.py (after --)")
    sub.add_parser("docs", help="rewrite the fault table of docs/reliability.md from tests/fault_matrix.py")
    args = parser.parse_args()
    try:
        if args.command == "test":
            test(args.airflow or ["3.3", "2.11"], args.pytest_args, not args.no_lint, not args.one_at_a_time)
        elif args.command == "demo":
            demo(args.airflow)
        elif args.command == "bench":
            bench(args.bench_args)
        elif args.command == "docs":
            docs()
        else:
            lint()
    except subprocess.CalledProcessError as exc:
        print(f"failed: {' '.join(map(str, exc.cmd))} (exit {exc.returncode})", file=sys.stderr)
        return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
