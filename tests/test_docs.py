"""The README and the docs pages say what the code does: the changelog's public contract, the README's
quick start. (The site's build and every link are checked by `scripts/dev.py site`.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

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
