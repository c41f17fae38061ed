#!/usr/bin/env python3
"""Project runner that needs nothing but python3: it creates and reuses its own virtualenvs, installed
from the locks in locks/ (one per Airflow line and Python version).

python3 scripts/dev.py test              # lint + tests on Airflow 3.3 and 2.11 (at the same time)
python3 scripts/dev.py test --airflow 3.3 -- -k hook   # one line, extra pytest args
python3 scripts/dev.py test --unlocked   # the same on the newest releases, not the locks
python3 scripts/dev.py lock              # newest releases: lint + tests, then rewrite locks/ if green
python3 scripts/dev.py lock --keep       # the same, resolving only what the locks lack (a new dependency)
python3 scripts/dev.py demo              # the sandbox demo (docs/development.md)
python3 scripts/dev.py lint              # ruff + mypy
python3 scripts/dev.py bench             # the benchmarks (docs/benchmarks.md)
python3 scripts/dev.py docs              # rewrite the fault table of docs/reliability.md from the tests
python3 scripts/dev.py site              # the docs site (strict: warnings, links, anchors), README links
python3 scripts/dev.py release           # the release check: sdist + wheel, twine, clean install, a DAG run
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
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
# Every install comes from a lock per line and Python (`lock`): a fresh clone gets what passed the suite.
LOCKS = ROOT / "locks"
# Upstream releases that break a line (Airflow's bugs, docs/getting-started.md), kept out when resolving anew.
KNOWN_CAPS = {"2.11": ["cryptography<51"]}
DEFAULT_LINE = "3.3"
# What the benchmarks compare against; installed only in the benchmark virtualenv.
# httpx, the other client they measure, comes with Airflow (its version from the lock).
BENCH_EXTRAS = ["apache-airflow-providers-http==6.3.0", "faxplus-api==3.0.5"]


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


def _venv_dir(name: str) -> Path:
    return ROOT / ".venv" / f"airflow-{name}"


def _run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(str(part) for part in cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def lock_file(line: str, flavour: str = "") -> Path:
    """The lock of a line for this Python: ``locks/airflow-3.3-py3.11.txt`` (``-bench``: benchmarks)."""
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return LOCKS / ("-".join(part for part in (f"airflow-{line}", flavour, python) if part) + ".txt")


def _locked_pins(lock: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a lock (``pip freeze`` lines; comments ignored)."""
    return _pins_of([line for raw in lock.read_text().splitlines() if (line := raw.split("#", 1)[0].strip())])


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _freeze(python: Path) -> list[str]:
    """What a virtualenv holds, as pinned lines, this checkout (editable) left out."""
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", "freeze", "--all", "--exclude-editable"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return sorted((line for line in out.splitlines() if line and not line.startswith("#")), key=str.lower)


_RESOLVED: set[str] = set()  # unlocked virtualenvs re-resolved by this process


def _groups(*names: str) -> list[str]:
    """pip arguments installing dependency groups of pyproject.toml (PEP 735; never published)."""
    return [f"--group={ROOT / 'pyproject.toml'}:{name}" for name in names]


def ensure_env(
    line: str, extras: list[str] | None = None, *, unlocked: bool = False, within: Path | None = None
) -> Path:
    """A virtualenv with the Airflow line, this package (editable), the dev tools and ``extras``.

    Locked (the default): exactly the versions of ``lock_file(line)``, nothing more; a virtualenv whose
    lock, ``pyproject.toml`` or extras changed is made anew, and one that ends up different from its lock
    stops the command. Unlocked: the newest releases that the line and ``KNOWN_CAPS`` allow, re-resolved
    once per command, in a virtualenv of its own (``within``: a lock the resolution must keep to)."""
    flavour = "bench" if extras else ""
    name = "-".join(part for part in (line, flavour, "unlocked" if unlocked else "") if part)
    wanted = [AIRFLOW_LINES[line], f"{ROOT}[sandbox]", *(extras or []), *_groups("dev", "deploy")]
    return _ensure(
        _venv_dir(name),
        wanted,
        lock_file(line, flavour),
        caps=KNOWN_CAPS.get(line, []),
        unlocked=unlocked,
        within=within,
    )


def docs_lock_file() -> Path:
    """The lock of the docs and release tools for this Python: ``locks/docs-py3.11.txt``."""
    return LOCKS / f"docs-py{sys.version_info.major}.{sys.version_info.minor}.txt"


def ensure_docs_env(*, unlocked: bool = False) -> Path:
    """The docs site's and the release check's tools (groups ``docs`` and ``release``), without Airflow:
    the API reference is read from the source (griffe), never imported."""
    target = ROOT / ".venv" / ("docs-unlocked" if unlocked else "docs")
    return _ensure(target, _groups("docs", "release"), docs_lock_file(), caps=[], unlocked=unlocked)


def _ensure(
    target: Path,
    wanted: list[str],
    lock: Path,
    *,
    caps: list[str],
    unlocked: bool,
    within: Path | None = None,
) -> Path:
    python = target / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    name = target.name
    if unlocked:
        if name in _RESOLVED:
            return python
        if within is None and os.environ.get("FAXPLUS_LOCK_KEEP") == "1" and lock.exists():
            within = lock  # `lock --keep`: only what the lock lacks is resolved anew
        print(f"== resolving the newest releases in {target.relative_to(ROOT)}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
        _run([*pip, "install", "--upgrade", "pip", "setuptools"])
        newest = [*_editable(wanted), *caps, *(["-c", str(within)] if within else [])]
        _run([*pip, "install", "--upgrade", "--upgrade-strategy", "eager", *newest])
        _RESOLVED.add(name)
        return python
    if not lock.exists():
        raise SystemExit(
            f"no lock file {lock.relative_to(ROOT)} for this Python ({sys.version.split()[0]}): "
            "`python3 scripts/dev.py lock` makes one (it runs the suite on the newest releases first), "
            "or `test --unlocked` runs without"
        )
    stamp = target / ".installed"
    inputs = (ROOT / "pyproject.toml").read_bytes() + lock.read_bytes() + " ".join(wanted).encode()
    digest = hashlib.sha256(inputs).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    print(f"== setting up {target.relative_to(ROOT)} from {lock.relative_to(ROOT)}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(target)  # anew: nothing left from an older lock
    pins = _locked_pins(lock)
    tools = [f"{tool}=={pins[tool]}" for tool in ("pip", "setuptools", "wheel") if tool in pins]
    _run([*pip, "install", *tools])
    _run([*pip, "install", "-c", str(lock), *_editable(wanted)])
    drift = _drift(_pins_of(_freeze(python)), pins)
    if drift:
        raise SystemExit(
            f"{target.relative_to(ROOT)} differs from {lock.relative_to(ROOT)} (a dependency the lock "
            f"lacks?): {drift}; `python3 scripts/dev.py lock` re-resolves"
        )
    stamp.write_text(digest)
    return python


def _editable(wanted: list[str]) -> list[str]:
    return [arg for item in wanted for arg in (["-e", item] if item.startswith(str(ROOT)) else [item])]


def _pins_of(lines: list[str]) -> dict[str, str]:
    return {_canonical(name): version for name, _, version in (line.partition("==") for line in lines)}


def _drift(installed: dict[str, str], pins: dict[str, str]) -> str:
    """What differs between two ``{name: version}`` maps, in words; empty when they are equal."""
    names = sorted(set(installed) | set(pins))
    return ", ".join(
        f"{name} {installed.get(name, 'missing')} (lock: {pins.get(name, 'none')})"
        for name in names
        if installed.get(name) != pins.get(name)
    )


def lint(line: str = DEFAULT_LINE, *, unlocked: bool = False) -> None:
    python = str(ensure_env(line, unlocked=unlocked))
    _run([python, "-m", "ruff", "check", "."], cwd=ROOT)
    _run([python, "-m", "ruff", "format", "--check", "."], cwd=ROOT)
    _run([python, "-m", "mypy"], cwd=ROOT)


def test(
    lines: list[str],
    pytest_args: list[str],
    with_lint: bool,
    concurrent: bool,
    unlocked: bool,
    checks: bool,
) -> None:
    """pytest on each line. The lines run at the same time by default: much of a line's time is spent
    waiting on Airflow processes, so two lines on 2 cores take far less than twice one line. Each
    other line (its virtualenv set up if needed, then its tests) runs in a child ``dev.py test``
    started before the lint; the first line's output is shown as it comes, the others' after it.
    ``checks``: the docs site and the release check (``dev.py checks``) run in the background too."""
    ensure_chromium()  # before any child starts: one apt-get at a time
    if docs_lock_file().exists():  # tests/test_docs.py builds a broken copy of the site with it
        os.environ["FAXPLUS_DOCS_PYTHON"] = str(ensure_docs_env())
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
                        "--no-checks",
                        *(["--unlocked"] if unlocked else []),
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
            if checks:
                cmd = [sys.executable, str(Path(__file__).resolve()), "checks"]
                print(
                    "== docs site and release check in the background (their output comes after)", flush=True
                )
                with (Path(outputs) / "checks.out").open("wb") as sink:
                    process = subprocess.Popen(
                        cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                    )
                others["checks"] = (cmd, process)
            if with_lint:
                lint(unlocked=unlocked)
            # tests/test_lock.py compares the virtualenv with its lock, except on unlocked releases.
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "FAXPLUS_UNLOCKED": "1" if unlocked else ""}
            failed: subprocess.CalledProcessError | None = None
            for line in lines if not concurrent else lines[:1]:
                python = str(ensure_env(line, unlocked=unlocked))
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
                what = (
                    "the docs site and release check" if line == "checks" else f"the tests on Airflow {line}"
                )
                print(f"\n== output of {what}", flush=True)
                sys.stdout.buffer.write((Path(outputs) / f"{line}.out").read_bytes())
                sys.stdout.flush()
                verdict = "passed" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
                name = "docs site and release check" if line == "checks" else f"Airflow {line}"
                print(f"== {name}: {verdict} (all done {_minutes(started)} in)", flush=True)
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


def lock(lines: list[str], keep: bool) -> None:
    """Re-resolve the newest releases, run lint and the suite on them, and only if all passed write each
    line's lock (and the benchmarks', resolved against the new 3.3 lock) from what was installed.
    ``keep``: keep every locked version and resolve only what the locks lack (a new dependency)."""
    if keep:
        os.environ["FAXPLUS_LOCK_KEEP"] = "1"  # read by ensure_env here and in the child of each line
    test(lines, [], True, True, True, False)
    _write_locks(lines)


def _write_locks(lines: list[str]) -> None:
    LOCKS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    for line in lines:  # the virtualenvs the passing run used (some resolved by a child process)
        python = _venv_dir(f"{line}-unlocked") / "bin" / "python"
        _write_lock(lock_file(line), python, f"Airflow {line}; passed `dev.py test --unlocked` on {stamp}")
    if DEFAULT_LINE in lines:
        python = ensure_env(DEFAULT_LINE, BENCH_EXTRAS, unlocked=True, within=lock_file(DEFAULT_LINE))
        _write_lock(lock_file(DEFAULT_LINE, "bench"), python, f"benchmarks, Airflow {DEFAULT_LINE}; {stamp}")
        # The docs and release tools: the site must build and the release check pass on them first.
        python = ensure_docs_env(unlocked=True)
        site(python)
        release_check(python)
        _write_lock(docs_lock_file(), python, f"docs site and release check; passed both on {stamp}")


def _write_lock(lock: Path, python: Path, origin: str) -> None:
    header = (
        f"# {origin}. Written by `python3 scripts/dev.py lock`; every install of scripts/dev.py uses it.\n"
    )
    lock.write_text(header + "\n".join(_freeze(python)) + "\n")
    print(f"== wrote {lock.relative_to(ROOT)}", flush=True)


def bench(args: list[str]) -> None:
    python = str(ensure_env(DEFAULT_LINE, BENCH_EXTRAS))
    _run([python, str(ROOT / "bench" / "run_all.py"), *args], cwd=ROOT)


def demo(line: str) -> None:
    python = str(ensure_env(line))
    _run([python, str(ROOT / "scripts" / "demo.py")], cwd=ROOT)


def docs() -> None:
    _run([str(ensure_env(DEFAULT_LINE)), "-m", "tests.fault_matrix"], cwd=ROOT)


def site(python: Path | None = None, site_dir: Path | None = None) -> None:
    """Build the docs site with warnings as errors (a broken internal link or anchor is one), then check
    the README's links against it."""
    import release  # scripts/release.py, beside this file

    python = python or ensure_docs_env()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faxplus-site-") as tmp:
        out = site_dir or Path(tmp)
        release.build_site(python, out)
        release.check_readme(out)
    print(f"== docs site built in {time.monotonic() - started:.1f} s", flush=True)


def release_check(python: Path | None = None) -> None:
    """Build sdist and wheel, twine check, install the wheel in a clean virtualenv (the 3.3 lock as
    constraints) and run an example DAG against the sandbox from it (scripts/release.py)."""
    import release

    release.release_check(python or ensure_docs_env(), lock_file(DEFAULT_LINE), AIRFLOW_LINES[DEFAULT_LINE])


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
    p_test.add_argument(
        "--unlocked",
        action="store_true",
        help="on the newest releases instead of the locks (upstream breakage)",
    )
    p_test.add_argument(
        "--no-checks",
        action="store_true",
        help="skip the docs site and release check (they run with the whole suite: no pytest arguments)",
    )
    p_test.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    p_lock = sub.add_parser(
        "lock", help="run the suite on the newest releases; if it passes, rewrite the locks"
    )
    p_lock.add_argument("--airflow", choices=sorted(AIRFLOW_LINES), action="append", help="only this line")
    p_lock.add_argument(
        "--keep", action="store_true", help="keep the locked versions; resolve only what the locks lack"
    )
    p_demo = sub.add_parser("demo", help="run the example DAGs against the sandbox")
    p_demo.add_argument("--airflow", choices=sorted(AIRFLOW_LINES), default=DEFAULT_LINE)
    sub.add_parser("lint", help="ruff and mypy")
    p_bench = sub.add_parser("bench", help="run the benchmarks and print their tables")
    p_bench.add_argument("bench_args", nargs="*", help="passed to bench/run_all.py (after --)")
    sub.add_parser("docs", help="rewrite the fault table of docs/reliability.md from tests/fault_matrix.py")
    p_site = sub.add_parser("site", help="build the docs site (mkdocs, strict) and check the README's links")
    p_site.add_argument("--site-dir", type=Path, help="keep the built site here (default: a temporary dir)")
    sub.add_parser("release", help="the release check: build, twine check, install the wheel, run a DAG")
    sub.add_parser("checks", help="the docs site, then the release check (what `test` runs beside the suite)")
    args = parser.parse_args()
    try:
        if args.command == "test":
            lines = args.airflow or ["3.3", "2.11"]
            # Beside the whole suite only (CI's command): a run of chosen tests stays quick.
            checks = not (args.no_checks or args.pytest_args or args.unlocked)
            test(lines, args.pytest_args, not args.no_lint, not args.one_at_a_time, args.unlocked, checks)
        elif args.command == "lock":
            lock(args.airflow or ["3.3", "2.11"], args.keep)
        elif args.command == "demo":
            demo(args.airflow)
        elif args.command == "bench":
            bench(args.bench_args)
        elif args.command == "docs":
            docs()
        elif args.command == "site":
            site(site_dir=args.site_dir)
        elif args.command == "release":
            release_check()
        elif args.command == "checks":
            site()
            release_check()
        else:
            lint()
    except subprocess.CalledProcessError as exc:
        print(f"failed: {' '.join(map(str, exc.cmd))} (exit {exc.returncode})", file=sys.stderr)
        return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
