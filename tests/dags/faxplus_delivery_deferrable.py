"""FaxDeliverySensor deferred: the run's conf names an outbox fax; the sensor waits in the triggerer."""

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
    dag_id="faxplus_delivery_deferrable",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"outbox_fax_id": ""},
) as dag:
    delivered = FaxDeliverySensor(
        task_id="wait_for_delivery",
        outbox_fax_id="{{ params.outbox_fax_id }}",
        partial_as="delivered",
        deferrable=True,
        poke_interval=0.5,
        timeout=120,
    )

    @task
    def show(result: dict[str, Any]) -> None:
        print("FAXPLUS-DELIVERY: " + json.dumps(result, sort_keys=True))

    show(delivered.output)
