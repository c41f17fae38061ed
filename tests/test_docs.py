"""The README and the docs pages say what the code does: the changelog's public contract, the README's
quick start. (The site's build and every link are checked by `scripts/dev.py site`.)"""

from __future__ import annotations

import ast
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from airflow_provider_faxplus.config import EXTRA_FIELDS
from airflow_provider_faxplus.get_provider_info import AIRFLOW_3_TRIGGER_MODULES, TRIGGER_MODULES

ROOT = Path(__file__).resolve().parent.parent
CHANGELOG = (ROOT / "docs" / "changelog.md").read_text()


def _serialized_triggers() -> dict[str, list[str]]:
    """``{classpath: kwargs}`` of every trigger class, read from its ``serialize()`` without importing."""
    found = {}
    for module in (*TRIGGER_MODULES, *AIRFLOW_3_TRIGGER_MODULES):
        path = ROOT / (module.replace(".", "/") + ".py")
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "serialize":
                    [kwargs] = [d for d in ast.walk(item) if isinstance(d, ast.Dict)]
                    found[f"{module}.{node.name}"] = [key.value for key in kwargs.keys]  # type: ignore[union-attr]
    return found


def test_the_changelog_names_every_trigger_classpath_and_its_kwargs():
    triggers = _serialized_triggers()
    assert "airflow_provider_faxplus.triggers.outbox_events.OutboxEventTrigger" in triggers
    rows = {
        line.split("`")[1]: line for line in CHANGELOG.splitlines() if line.startswith("| `airflow_provider")
    }
    assert set(rows) == set(triggers)
    for classpath, kwargs in triggers.items():
        named = set(re.findall(r"`(\w+)`", rows[classpath].split("|")[2]))
        assert set(kwargs) <= named, (classpath, set(kwargs) - named)


def test_the_changelog_names_every_connection_extra_and_the_event_payload():
    source = (ROOT / "airflow_provider_faxplus" / "triggers" / "outbox_events.py").read_text()
    [keys] = [
        ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PAYLOAD_KEYS"
    ]
    section = CHANGELOG.split("### Connection extras", 1)[1].split("###", 1)[0]
    assert all(f"`{name}`" in section for name in EXTRA_FIELDS)
    [payload_row] = [
        line for line in CHANGELOG.splitlines() if line.startswith("| `OutboxEventTrigger` event")
    ]
    assert all(f'"{key}"' in payload_row for key in keys)


def test_the_readme_is_short_and_keeps_the_two_command_quick_start():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 15 * 1024
    demo = "python3 scripts/dev.py demo   # run the example DAGs end to end against the sandbox"
    test = (
        "python3 scripts/dev.py test   # ruff + mypy, then the test suite on Airflow 3.3 and on Airflow 2.11"
    )
    assert f"```bash\n{demo}\n{test}\n```" in readme


# scripts/release.py: the README link check and the site build, run by `scripts/dev.py site` (stdlib only).
sys.path.insert(0, str(ROOT / "scripts"))
import release  # noqa: E402

DOCS = "https://faxplus-airflow.github.io/airflow-provider-faxplus/"


@pytest.mark.parametrize(
    "markdown",
    [
        "[the sandbox][s]\n\n[s]: docs/sandbox.md\n",
        '<img src="docs/dag.png" alt="a DAG">\n',
        '[the sandbox](docs/sandbox.md "The sandbox")\n',
        '<a href="docs/sandbox.md">the sandbox</a>\n',
    ],
)
def test_a_relative_readme_link_of_any_form_is_refused(markdown, tmp_path):
    problems = release.link_problems(release.readme_links(f"Intro.\n\n{markdown}"), tmp_path)
    assert len(problems) == 1, problems
    assert "relative, it breaks on PyPI" in problems[0]


@pytest.mark.parametrize(
    "markdown",
    [
        f"[the sandbox][s]\n\n[s]: {DOCS}no-such-page/\n",
        f'<img src="{DOCS}no-such-page/">\n',
        f"See {DOCS}no-such-page/.\n",
        f'[the sandbox]({DOCS}no-such-page/ "The sandbox")\n',
        f"[the sandbox]({DOCS}sandbox/#no-such-anchor)\n",
    ],
)
def test_a_readme_link_into_the_site_of_any_form_must_resolve(markdown, tmp_path):
    (tmp_path / "sandbox").mkdir()
    (tmp_path / "sandbox" / "index.html").write_text('<h2 id="cli">CLI</h2>')
    links = release.readme_links(markdown)
    assert release.link_problems(links, tmp_path), links
    fixed = markdown.replace("no-such-page/", "sandbox/").replace("no-such-anchor", "cli")
    assert release.link_problems(release.readme_links(fixed), tmp_path) == []


def _docs_python() -> Path:
    """The docs virtualenv's python (`scripts/dev.py test` sets it up before the tests)."""
    python = Path(os.environ.get("FAXPLUS_DOCS_PYTHON") or ROOT / ".venv" / "docs" / "bin" / "python")
    if not python.exists():
        pytest.skip(f"no docs virtualenv at {python}: `python3 scripts/dev.py site` makes it")
    return python


@pytest.mark.parametrize(
    ("bad", "named"),
    [("See [a](nope.md).", "nope.md"), ("See [b](sandbox.md#no-such-anchor).", "no-such-anchor")],
)
def test_a_broken_internal_link_or_anchor_fails_the_site_build(bad, named, tmp_path, capsys):
    """The build `scripts/dev.py site` runs, on a copy of the site with one bad link in docs/hook.md."""
    for name in ("docs", "airflow_provider_faxplus"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    with (tmp_path / "docs" / "hook.md").open("a") as page:
        page.write(f"\n{bad}\n")
    with pytest.raises(SystemExit, match="mkdocs build --strict failed"):
        release.build_site(_docs_python(), tmp_path / "site", root=tmp_path)
    assert named in capsys.readouterr().out


def test_the_readme_says_how_long_seeded_sandbox_faxes_last():
    """What tests/test_sandbox_cli.py proves, said before the README's first DAG, with the CLI's default."""
    from airflow_provider_faxplus.sandbox.cli import _parser

    readme = (ROOT / "README.md").read_text()
    before_the_dag = readme.split("```python", 1)[0]
    default = _parser().get_default("stage_seconds")
    assert default == 10
    assert (
        "Seeded sandbox faxes stay `submitted` until their first look (a GET\nor a list answer "
        f"showing them), then spend `--stage-seconds` (default {default:g}) in each status" in before_the_dag
    )


def test_the_package_summary_and_provider_description_name_what_it_has():
    from airflow_provider_faxplus.get_provider_info import get_provider_info

    summary = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["description"]
    described = get_provider_info()["description"]
    for text in (summary, described):
        parts = ("send", "download", "comment operators", "delivery", "sensors", "event triggers", "sandbox")
        for part in parts:
            assert part in text, (part, text)
