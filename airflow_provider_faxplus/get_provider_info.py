"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from airflow_provider_faxplus import __version__

DEFAULT_BASE_URL = "https://restapi.fax.plus/v3"  # kept literal: importing config here would load more
DEFAULT_TOKEN_URL = "https://accounts.fax.plus/token"  # noqa: S105 - a URL

# The connection form, in the user's words. Airflow 3.2+ reads these declaratively; the hook builds
# Airflow 2.11's form (get_connection_form_widgets / get_ui_field_behaviour) from the same values.
HIDDEN_FIELDS = ("login", "schema", "port")
RELABELING = {"host": "Base URL", "password": "API token"}
PLACEHOLDERS = {
    "host": DEFAULT_BASE_URL,
    "password": "alohi_pat_... or an OAuth2 access token (may stay empty with a refresh token)",
    "client_id": "APIK-...",
    "token_url": DEFAULT_TOKEN_URL,
    "ca_bundle": "/etc/ssl/certs/ca-certificates.crt",
}
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "client_id": {
        "label": "OAuth2 client ID",
        "description": "Only for OAuth2 access tokens (APIK-...), sent as the x-fax-clientid header; "
        "leave empty for a Personal Access Token.",
        "schema": {"type": ["string", "null"]},
    },
    # "format": "password" marks a secret: a masked input on 3.3, a PasswordField on 2.11 (see the hook).
    "client_secret": {
        "label": "OAuth2 client secret",
        "description": "With the client ID and a refresh token, access tokens are fetched and renewed; "
        "the API token field may then stay empty.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "refresh_token": {
        "label": "OAuth2 refresh token",
        "description": "Printed by the faxplus-oauth command after the one browser step.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "token_url": {
        "label": "OAuth2 token URL",
        "description": f"Default {DEFAULT_TOKEN_URL}; https only (http for a loopback sandbox).",
        "schema": {"type": ["string", "null"]},
    },
    "timeout": {
        "label": "Request timeout (seconds)",
        "description": "Seconds to wait for each answer. Default 30.",
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": 30},
    },
    "verify": {
        "label": "Verify TLS certificates",
        "description": "Leave on. Turn off only for a test server you trust; to trust a private CA, "
        "give its CA bundle below instead.",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
    "ca_bundle": {
        "label": "CA bundle path",
        "description": "Path of a PEM CA bundle on the workers and the triggerer, to verify the "
        "server's certificate (e.g. behind a TLS-inspecting proxy). Empty: the system's CAs.",
        "schema": {"type": ["string", "null"]},
    },
    "max_attempts": {
        "label": "Attempts per call",
        "description": "First attempt included; retries 429, 500, 502, 503, 504 and network errors, "
        "never other 4xx. Default 5.",
        "schema": {"type": ["integer", "null"], "minimum": 1, "default": 5},
    },
    "max_retry_seconds": {
        "label": "Retry time budget per call (seconds)",
        "description": "A retry wait that would cross this budget is not started. Default 120.",
        "schema": {"type": ["number", "null"], "minimum": 0, "default": 120},
    },
    "initial_backoff": {
        "label": "First retry backoff (seconds)",
        "description": "Doubles per attempt (with jitter), capped at 30. Default 1.",
        "schema": {"type": ["number", "null"], "minimum": 0, "default": 1},
    },
}


# Trigger modules, each defining a trigger class (tests/test_provider.py finds every one under triggers/).
TRIGGER_MODULES = ("airflow_provider_faxplus.triggers.delivery", "airflow_provider_faxplus.triggers.outbox")
# These import BaseEventTrigger (asset watchers), which Airflow 2 lacks: listed on Airflow 3 only, so
# that nothing on 2.11 is told to import a module that cannot load there.
AIRFLOW_3_TRIGGER_MODULES = (
    "airflow_provider_faxplus.triggers.fax_records",
    "airflow_provider_faxplus.triggers.outbox_events",
)


def _airflow_major() -> int:
    try:  # the version from the metadata: importing airflow here would load it for every provider scan
        return int(version("apache-airflow").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 3


def trigger_modules() -> list[str]:
    """The trigger modules this Airflow can import."""
    return [*TRIGGER_MODULES, *(AIRFLOW_3_TRIGGER_MODULES if _airflow_major() >= 3 else ())]


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-faxplus",
        "name": "Fax.Plus",
        "description": "Fax.Plus REST API: hook, send, download and comment operators, outbox and delivery "
        "sensors, event triggers and a local sandbox.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Fax.Plus",
                "external-doc-url": "https://apidoc.fax.plus/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {"integration-name": "Fax.Plus", "python-modules": ["airflow_provider_faxplus.hooks.faxplus"]}
        ],
        "sensors": [
            {
                "integration-name": "Fax.Plus",
                "python-modules": [
                    "airflow_provider_faxplus.sensors.delivery",
                    "airflow_provider_faxplus.sensors.outbox",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": "Fax.Plus",
                "python-modules": [
                    "airflow_provider_faxplus.operators.outbox",
                    "airflow_provider_faxplus.operators.records",
                    "airflow_provider_faxplus.operators.send",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": "Fax.Plus",
                "python-modules": trigger_modules(),
            }
        ],
        "connection-types": [
            {
                "connection-type": "faxplus",
                "hook-class-name": "airflow_provider_faxplus.hooks.faxplus.FaxPlusHook",
                "hook-name": "Fax.Plus",
                "ui-field-behaviour": {
                    "hidden-fields": list(HIDDEN_FIELDS),
                    "relabeling": dict(RELABELING),
                    "placeholders": dict(PLACEHOLDERS),
                },
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
