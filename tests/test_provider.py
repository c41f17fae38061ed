"""The provider as Airflow sees it: entry point, provider info, and the real ``airflow providers`` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest
from airflow import __version__ as airflow_version

from airflow_provider_faxplus.config import EXTRA_FIELDS
from airflow_provider_faxplus.get_provider_info import get_provider_info
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

AIRFLOW_3 = int(airflow_version.split(".")[0]) >= 3


def airflow_cli(*args: str, home: Path) -> str:
    airflow = shutil.which("airflow", path=str(Path(sys.executable).parent))
    assert airflow, "the airflow command is not installed next to this python"
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run([airflow, *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_package_name_matches_the_distribution():
    assert get_provider_info()["package-name"] == distribution("airflow-provider-faxplus").metadata["Name"]


def test_entry_point_is_registered():
    points = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_faxplus")
    ]
    assert [ep.value for ep in points] == ["airflow_provider_faxplus.get_provider_info:get_provider_info"]
    assert points[0].load() is get_provider_info


def test_hook_class_attributes():
    assert (
        FaxPlusHook.conn_type,
        FaxPlusHook.conn_name_attr,
        FaxPlusHook.default_conn_name,
        FaxPlusHook.hook_name,
    ) == ("faxplus", "faxplus_conn_id", "faxplus_default", "Fax.Plus")
    behaviour = FaxPlusHook.get_ui_field_behaviour()
    assert behaviour["hidden_fields"] == ["login", "schema", "port"]
    info = get_provider_info()["connection-types"][0]
    assert info["ui-field-behaviour"]["hidden-fields"] == behaviour["hidden_fields"]
    assert info["ui-field-behaviour"]["relabeling"] == behaviour["relabeling"]


def test_form_widgets_of_airflow_2_match_the_declarative_fields():
    pytest.importorskip("flask_appbuilder", reason="the wtforms widgets exist only on Airflow 2")
    from wtforms import BooleanField, IntegerField, PasswordField, StringField

    info = get_provider_info()["connection-types"][0]
    widgets = FaxPlusHook.get_connection_form_widgets()
    assert list(widgets) == list(info["conn-fields"])
    kinds = {name: widget.field_class for name, widget in widgets.items()}
    assert kinds == {
        "client_id": StringField,
        "client_secret": PasswordField,  # secrets: masked inputs, never shown back in the form
        "refresh_token": PasswordField,
        "token_url": StringField,
        "timeout": StringField,  # decimals: 2.11 offers no float field
        "verify": BooleanField,  # a yes/no box; the CA bundle path has its own field
        "ca_bundle": StringField,
        "max_attempts": IntegerField,
        "max_retry_seconds": StringField,
        "initial_backoff": StringField,
    }
    assert widgets["verify"].kwargs["default"] is True
    for name, widget in widgets.items():
        assert str(widget.args[0]) == info["conn-fields"][name]["label"]


def _readme_extras() -> list[str]:
    page = (Path(__file__).resolve().parent.parent / "docs" / "connection.md").read_text()
    return [line.split("`")[1] for line in page.splitlines() if line.startswith("| extra `")]


def test_every_extra_of_the_config_and_the_readme_is_a_form_field_with_words_for_the_user():
    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    assert list(fields) == list(EXTRA_FIELDS)
    assert _readme_extras() == list(EXTRA_FIELDS)
    for name, spec in fields.items():
        assert spec["label"], name
        assert "_" not in spec["label"], name  # words, not the key
        assert spec["description"].endswith("."), name
        assert "null" in spec["schema"]["type"], name  # every extra is optional


def test_verify_is_a_yes_no_field_and_the_ca_bundle_a_separate_path():
    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    assert fields["verify"]["schema"] == {"type": ["boolean", "null"], "default": True}
    assert fields["ca_bundle"]["schema"] == {"type": ["string", "null"]}
    assert fields["initial_backoff"]["schema"]["default"] == 1


def test_the_oauth_secrets_are_sensitive_fields():
    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    sensitive = {name for name, spec in fields.items() if spec["schema"].get("format") == "password"}
    assert sensitive == {"client_secret", "refresh_token"}


def test_labels_speak_the_users_words():
    info = get_provider_info()["connection-types"][0]
    assert info["ui-field-behaviour"]["relabeling"] == {"host": "Base URL", "password": "API token"}
    assert FaxPlusHook.get_ui_field_behaviour()["relabeling"] == {"host": "Base URL", "password": "API token"}
    placeholders = FaxPlusHook.get_ui_field_behaviour()["placeholders"]
    assert placeholders["host"] == "https://restapi.fax.plus/v3"
    assert (placeholders["timeout"], placeholders["initial_backoff"]) == ("30", "1")


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("airflow-home")


def test_airflow_providers_list_shows_the_package(airflow_home):
    listed = json.loads(airflow_cli("providers", "list", "-o", "json", home=airflow_home))
    [ours] = [p for p in listed if p["package_name"] == "airflow-provider-faxplus"]
    assert ours["version"] == "0.1.0"


def test_airflow_providers_hooks_shows_the_connection_type(airflow_home):
    hooks = json.loads(airflow_cli("providers", "hooks", "-o", "json", home=airflow_home))
    [ours] = [h for h in hooks if h["connection_type"] == "faxplus"]
    assert ours["class"] == "airflow_provider_faxplus.hooks.faxplus.FaxPlusHook"
    assert ours["package_name"] == "airflow-provider-faxplus"


def test_airflow_providers_widgets_include_the_extras(airflow_home):
    widgets = json.loads(airflow_cli("providers", "widgets", "-o", "json", home=airflow_home))
    ours = {
        w["connection_parameter_name"] for w in widgets if w["package_name"] == "airflow-provider-faxplus"
    }
    assert ours == {f"extra__faxplus__{name}" for name in EXTRA_FIELDS}


@pytest.mark.skipif(not AIRFLOW_3, reason="declarative conn-fields are read by Airflow 3.2+")
def test_providers_get_full_includes_declarative_fields(airflow_home):
    full = json.loads(
        airflow_cli("providers", "get", "airflow-provider-faxplus", "--full", "-o", "json", home=airflow_home)
    )
    [info] = full if isinstance(full, list) else [full]
    text = json.dumps(info)
    assert "conn-fields" in text
    assert "client_id" in text
    assert "hidden-fields" in text


def test_parsing_a_dag_file_loads_no_http_stack():
    """DAG files import the sensor and operator on every parse: the hook, the trigger and their HTTP
    clients must load only when a task runs (bench/import_cost.py measures the cost)."""
    code = (
        (
            "import sys; import airflow.sdk; before = set(sys.modules); "
            "from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor; "
            "from airflow_provider_faxplus.operators.outbox import UpdateOutboxCommentOperator; "
            "print(' '.join(sorted(set(sys.modules) - before)))"
        )
        if AIRFLOW_3
        else (
            "import sys; import airflow; from airflow.models import BaseOperator; "
            "from airflow.sensors.base import BaseSensorOperator; before = set(sys.modules); "
            "from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor; "
            "from airflow_provider_faxplus.operators.outbox import UpdateOutboxCommentOperator; "
            "print(' '.join(sorted(set(sys.modules) - before)))"
        )
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.split())
    heavy = {
        "requests",
        "aiohttp",
        "tenacity",
        "airflow_provider_faxplus.hooks.faxplus",
        "airflow_provider_faxplus.triggers.outbox",
        "airflow_provider_faxplus.protocol",
        "airflow_provider_faxplus.models",
    }
    assert not (loaded & heavy), sorted(loaded & heavy)
    assert "airflow_provider_faxplus.sensors.outbox" in loaded
