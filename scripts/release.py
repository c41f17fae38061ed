"""The docs site's link check and the release check, run by ``scripts/dev.py`` (stdlib only).

The release check is what a new user meets: the sdist and wheel built from the checkout (the wheel from
the sdist, so a file missing from the sdist breaks it), ``twine check --strict``, the wheel installed in a
clean virtualenv outside the checkout (the Airflow 3.3 lock as constraints), one example DAG run with
``airflow dags test`` against the sandbox from that install, and ``airflow providers get`` showing the
documentation URL.
"""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_urls() -> dict[str, str]:
    urls: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    return urls


class _Ids(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def _ids_of(page: Path) -> set[str]:
    parser = _Ids()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.ids


def readme_links(text: str | None = None) -> list[str]:
    """Every link target of the README as PyPI renders it: inline links (with or without a title),
    reference definitions, HTML ``src``/``href`` attributes, autolinks and bare URLs."""
    text = (ROOT / "README.md").read_text() if text is None else text
    text = re.sub(r"(?s)```.*?```", "", text)  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)  # nor code spans
    found = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)", text)
    found += re.findall(r"(?m)^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", text)
    found += re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""", text, flags=re.IGNORECASE)
    found += [url.rstrip(".,;:!?*_'\"") for url in re.findall(r"https?://[^\s)<>\]\"'`]+", text)]
    return list(dict.fromkeys(found))


def readme_text() -> str:
    return (ROOT / "README.md").read_text()


def _topic_table(text: str, docs: str | None) -> list[str]:
    """The rows of "Where each topic is documented", links as the site's pages (``page.md``)."""
    section = text.split("## Where each topic is documented", 1)[-1]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    if docs is None:
        return rows
    relative = re.compile(re.escape(docs) + r"([\w-]+)/(#[\w-]+)?")
    return [relative.sub(lambda m: f"{m.group(1)}.md{m.group(2) or ''}", row) for row in rows]


def link_problems(links: list[str], site_dir: Path) -> list[str]:
    """What is wrong with the README's links: a relative one (it breaks on PyPI), or one into the docs
    site or the repository that does not resolve in the site built at ``site_dir`` or in this checkout
    (anchors included). Other hosts are not fetched."""
    urls = project_urls()
    docs, source = urls["Documentation"].rstrip("/") + "/", urls["Source Code"].rstrip("/")
    problems = []
    for link in links:
        target, _, anchor = link.partition("#")
        if not target.startswith(("https://", "http://")):
            problems.append(f"{link}: relative, it breaks on PyPI")
        elif target.startswith(docs) or target + "/" == docs:
            page = site_dir / target[len(docs) :] / "index.html"
            if not page.exists():
                problems.append(f"{link}: no page {page.relative_to(site_dir)} in the docs site")
            elif anchor and anchor not in _ids_of(page):
                problems.append(f"{link}: no anchor #{anchor} in {page.relative_to(site_dir)}")
        elif target.startswith(source + "/tree/main/") or target.startswith(source + "/blob/main/"):
            path = ROOT / target[len(source) + len("/tree/main/") :]
            if not path.exists():
                problems.append(f"{link}: no {path.relative_to(ROOT)} in the repository")
        elif target.startswith(source) and target not in (source, source + "/issues"):
            problems.append(f"{link}: a repository link of an unknown shape")
    return problems


def check_readme(site_dir: Path) -> None:
    """The README is the PyPI page: under 15 KB, every link absolute and resolving (``link_problems``),
    its table of topics the site's home page's."""
    problems = []
    size = len((ROOT / "README.md").read_bytes())
    if size >= 15 * 1024:
        problems.append(f"README.md is {size} bytes: keep it under 15 KB (the topics live in docs/)")
    links = readme_links()
    problems += link_problems(links, site_dir)
    docs = project_urls()["Documentation"].rstrip("/") + "/"
    if _topic_table(readme_text(), docs) != _topic_table((ROOT / "docs" / "index.md").read_text(), None):
        problems.append("its table of topics differs from docs/index.md's (the site's home page)")
    if problems:
        raise SystemExit("README.md:\n  " + "\n  ".join(problems))
    print(f"== README.md: {size} bytes, {len(links)} links resolve", flush=True)


def build_site(python: Path, out: Path, root: Path = ROOT) -> None:
    """``mkdocs build --strict`` of ``root``: a warning (a broken internal link or anchor) fails it.
    Never ``--quiet``: in mkdocs 1.6 it raises the log level above WARNING, so no warning is counted and
    strict never fails. The INFO lines are left out to keep the output short."""
    done = subprocess.run(
        [str(python), "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    shown = [line for line in done.stdout.splitlines() if not line.startswith("INFO")]
    if shown:
        print("\n".join(shown), flush=True)
    if done.returncode != 0:
        raise SystemExit(f"mkdocs build --strict failed (exit {done.returncode}): warnings count as errors")


def readme_first_dag() -> str:
    """The README's first DAG (its one Python block), polling every second instead of every minute."""
    [code] = re.findall(r"(?s)```python\n(.*?)```", (ROOT / "README.md").read_text())
    assert "poke_interval=60," in code, "the README's first DAG changed: update readme_first_dag()"
    return code.replace("poke_interval=60,", "poke_interval=1,")


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    names = {_USER_RUN: "<_USER_RUN of scripts/release.py>", _KNOWN_CLASSIFIERS: "<_KNOWN_CLASSIFIERS>"}
    shown = [names.get(str(part), str(part)) for part in cmd]
    print("+", " ".join(shown), flush=True)
    return subprocess.run(cmd, check=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


def check_dists(dist: Path) -> tuple[Path, Path]:
    """The sdist ships the package and what builds it, no tests; the wheel its license files and URLs."""
    [sdist] = dist.glob("*.tar.gz")
    [wheel] = dist.glob("*.whl")
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    problems = [
        f"sdist ships {name}" for name in names if name.split("/")[0] in ("tests", "bench", "scripts")
    ]
    problems += [f"sdist lacks {name}" for name in ("LICENSE", "NOTICE", "README.md") if name not in names]
    with zipfile.ZipFile(wheel) as archive:
        [meta_name] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(meta_name).decode())
        members = archive.namelist()
    if sorted(meta.get_all("License-File") or []) != ["LICENSE", "NOTICE"]:
        problems.append(f"wheel License-File: {meta.get_all('License-File')}")
    if meta.get("License-Expression") != "Apache-2.0":
        problems.append(f"wheel License-Expression: {meta.get('License-Expression')}")
    if not any(member.endswith("sandbox/outbox.openapi.yaml") for member in members):
        problems.append("wheel lacks the sandbox's spec")
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL") or [])
    if urls != project_urls():
        problems.append(f"wheel Project-URL: {urls}")
    extras = meta.get_all("Provides-Extra") or []
    if extras != ["sandbox"]:  # the test tools and deployment providers are dependency groups
        problems.append(f"wheel extras {extras}: only sandbox is a feature of the package")
    if problems:
        raise SystemExit("release check:\n  " + "\n  ".join(problems))
    return sdist, wheel


# Run by the tools' python: every classifier of the wheel is one PyPI knows.
_KNOWN_CLASSIFIERS = """
import sys, zipfile
from email.parser import Parser
from trove_classifiers import classifiers
with zipfile.ZipFile(sys.argv[1]) as archive:
    [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    meta = Parser().parsestr(archive.read(name).decode())
unknown = [c for c in meta.get_all("Classifier") or [] if c not in classifiers]
assert not unknown, f"classifiers PyPI does not know: {unknown}"
print(len(meta.get_all("Classifier")), "classifiers, all known to PyPI")
"""


# Run by the clean virtualenv's python, in a temporary directory outside the checkout.
_USER_RUN = """
import json, sys
from pathlib import Path
import airflow_provider_faxplus
from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowHome

environment, dags, documentation = sys.argv[1:4]
where = Path(airflow_provider_faxplus.__file__).resolve()
assert where.is_relative_to(Path(environment).resolve()), f"imported from {where}, not the install"
statuses = ("submitted", "converting", "scheduled_for_sending", "sending")
one_look_each = [{"status": status, "polls": 1} for status in statuses]
with SandboxServer() as sandbox:
    home = AirflowHome.create(
        dags_folder=dags,
        connections={"faxplus_default": sandbox},
        extra_env={"FAXPLUS_EXAMPLE_POKE_INTERVAL": "1"},
    )
    fax_id = sandbox.client.create_fax(lifecycle=one_look_each)["id"]
    run = home.dags_test("example_faxplus_tag_and_wait", conf={"outbox_fax_id": fax_id})
    assert run.succeeded, run.output[-4000:]
    [report] = run.lines_with("FAXPLUS-REPORT:")
    print("dags test:", report)
    fax_id = sandbox.client.create_fax(lifecycle=one_look_each)["id"]
    run = home.dags_test("faxplus_first", conf={"outbox_fax_id": fax_id})
    assert run.succeeded, run.output[-4000:]
    print("dags test: the README's first DAG succeeded;", sandbox.client.fax(fax_id)["comment"])
    got = home.airflow("providers", "get", "airflow-provider-faxplus", "--full", "-o", "json")
    assert got.returncode == 0, got.stderr[-3000:]
    [info] = json.loads(got.stdout)
    assert info["documentation-url"] == documentation, info.get("documentation-url")
    print("providers get: documentation-url", info["documentation-url"])
"""


def release_check(tools_python: Path, lock: Path, airflow: str) -> None:
    """Build, check and install the distributions as a user would; print how long it took."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faxplus-release-") as tmp:
        work = Path(tmp)
        dist = work / "dist"
        # --no-isolation: the build uses the locked setuptools of the tools' virtualenv, no download.
        source = work / "source"
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".venv", ".git", "*.egg-info", "build", "dist", "__pycache__", ".*_cache"
            ),
        )
        _run(
            [str(tools_python), "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
            capture_output=True,
        )
        sdist, wheel = check_dists(dist)
        _run([str(tools_python), "-m", "twine", "check", "--strict", str(sdist), str(wheel)])
        _run([str(tools_python), "-c", _KNOWN_CLASSIFIERS, str(wheel)])
        built = time.monotonic()
        env_dir = work / "user-venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        python = env_dir / "bin" / "python"
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
        pins = {
            line.split("==")[0].lower(): line.strip()
            for line in lock.read_text().splitlines()
            if "==" in line and not line.startswith("#")
        }
        _run([*pip, "install", pins["pip"]])
        # --no-compile: the bytecode of ~200 packages costs more time than this one run saves.
        _run([*pip, "install", "--no-compile", "-c", str(lock), airflow, f"{wheel}[sandbox]"])
        installed = time.monotonic()
        dags = work / "dags"
        dags.mkdir()
        shutil.copy(ROOT / "example_dags" / "example_faxplus_tag_and_wait.py", dags)
        (dags / "faxplus_first.py").write_text(readme_first_dag())
        documentation = project_urls()["Documentation"]
        _run([str(python), "-c", _USER_RUN, str(env_dir), str(dags), documentation], cwd=work)
    print(
        f"== release check passed in {time.monotonic() - started:.0f} s (build and twine "
        f"{built - started:.0f} s, clean install {installed - built:.0f} s, dags test and providers get "
        f"{time.monotonic() - installed:.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit("run through scripts/dev.py (site, release)")
