"""FaxDeliverySensor with retries=2, in poke and deferrable mode: a failed delivery must fail the task at
once (no retry), a transient failure must be retried."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pendulum

try:
    from airflow.sdk import DAG, task
except ImportError:
    from airflow import DAG
    from airflow.decorators import task

from airflow_provider_faxplus.sensors.delivery import FaxDeliverySensor

for name, mode_kwargs in {"poke": {"mode": "poke"}, "deferrable": {"deferrable": True}}.items():
    with DAG(
        dag_id=f"faxplus_delivery_retries_{name}",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params={"outbox_fax_id": ""},
    ) as dag:
        wait = FaxDeliverySensor(
            task_id="wait_for_delivery",
            outbox_fax_id="{{ params.outbox_fax_id }}",
            partial_as="failed",
            poke_interval=0.5,
            timeout=120,
            retries=2,
            retry_delay=timedelta(seconds=1),
            **mode_kwargs,
        )

        @task
        def show(result: dict[str, Any]) -> None:
            print("FAXPLUS-DELIVERY: " + json.dumps(result, sort_keys=True))

        show(wait.output)
    globals()[dag.dag_id] = dag
