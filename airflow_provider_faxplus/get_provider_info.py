"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_faxplus import __version__

DEFAULT_BASE_URL = "https://restapi.fax.plus/v3"  # kept literal: importing config here would load more


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-faxplus",
        "name": "Fax.Plus",
        "description": "Fax.Plus REST API: outbox hook, sensor, comment operator and a local sandbox.",
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
            {"integration-name": "Fax.Plus", "python-modules": ["airflow_provider_faxplus.sensors.outbox"]}
        ],
        "operators": [
            {
                "integration-name": "Fax.Plus",
                "python-modules": [
                    "airflow_provider_faxplus.operators.outbox",
                    "airflow_provider_faxplus.operators.send",
                ],
            }
        ],
        "triggers": [
            {"integration-name": "Fax.Plus", "python-modules": ["airflow_provider_faxplus.triggers.outbox"]}
        ],
        "connection-types": [
            {
                "connection-type": "faxplus",
                "hook-class-name": "airflow_provider_faxplus.hooks.faxplus.FaxPlusHook",
                "hook-name": "Fax.Plus",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "schema", "port"],
                    "relabeling": {"host": "Base URL", "password": "API token (PAT or OAuth2 access token)"},
                    "placeholders": {"host": DEFAULT_BASE_URL, "password": "alohi_pat_..."},
                },
                "conn-fields": {
                    "client_id": {
                        "label": "OAuth2 client ID (x-fax-clientid)",
                        "description": "Only for OAuth2 access tokens (APIK-...); leave empty for a "
                        "Personal Access Token. Sent as the x-fax-clientid header when set.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": 30},
                    },
                    "verify": {
                        "label": "Verify TLS certificates",
                        "description": "true, false, or the path of a CA bundle.",
                        "schema": {"type": ["boolean", "string", "null"], "default": True},
                    },
                    "max_attempts": {
                        "label": "Attempts per call",
                        "description": "Retries 429, 500, 502, 503, 504 and network errors; never other 4xx.",
                        "schema": {"type": ["integer", "null"], "minimum": 1, "default": 5},
                    },
                    "max_retry_seconds": {
                        "label": "Retry time budget per call (seconds)",
                        "schema": {"type": ["number", "null"], "minimum": 0, "default": 120},
                    },
                },
            }
        ],
    }
