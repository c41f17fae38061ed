"""A FaxDeliverySensor that starts in the triggerer (Airflow 3.3+); older lines defer from the worker."""

from __future__ import annotations

import json
from typing import Any

import pendulum

try:
    from airflow.sdk import DAG, task
except ImportError:
    from airflow import DAG
    from airflow.decorators import task

from airflow_provider_faxplus.sensors.delivery import FaxDeliverySensor

with DAG(
    dag_id="faxplus_delivery_start_from_trigger",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
) as dag:
    wait = FaxDeliverySensor(
        task_id="wait",
        # Rendered where the task starts: in the triggerer on Airflow 3.3+.
        outbox_fax_id="{{ dag_run.conf['outbox_fax_id'] }}",
        partial_as="failed",
        deferrable=True,
        start_from_trigger=True,
        poke_interval=1,
        timeout=600,
    )

    @task
    def show(result: dict[str, Any]) -> None:
        print("FAXPLUS-DELIVERY: " + json.dumps(result, sort_keys=True))

    show(wait.output)
