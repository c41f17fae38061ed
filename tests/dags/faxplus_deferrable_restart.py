"""A deferrable sensor whose first look comes before the fax is visible: the trigger sees it first."""

from __future__ import annotations

import json
from typing import Any

import pendulum

try:
    from airflow.sdk import DAG, task
except ImportError:
    from airflow import DAG
    from airflow.decorators import task

from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor

with DAG(
    dag_id="faxplus_deferrable_restart",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"outbox_fax_id": ""},
) as dag:
    wait = OutboxFaxSensor(
        task_id="wait",
        outbox_fax_id="{{ params.outbox_fax_id }}",
        deferrable=True,
        poke_interval=1,
        timeout=600,
        # Long enough for the fax to become visible however slow the machine; once it is over, only
        # memory tells a fax that left from a wrong id.
        not_found_grace_period=120,
    )

    @task
    def show(result: dict[str, Any]) -> None:
        print("FAXPLUS-RESULT: " + json.dumps(result, sort_keys=True))

    show(wait.output)
