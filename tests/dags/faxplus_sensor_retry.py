"""A sensor whose first try fails after seeing the fax, and a retry that looks after it left."""

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

from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor

for name, mode_kwargs in {"poke": {"mode": "poke"}, "deferrable": {"deferrable": True}}.items():
    with DAG(
        dag_id=f"faxplus_sensor_retry_{name}",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params={"outbox_fax_id": ""},
    ) as dag:
        wait = OutboxFaxSensor(
            task_id="wait",
            outbox_fax_id="{{ params.outbox_fax_id }}",
            poke_interval=1,
            timeout=120,
            # The retry's not-found is past the grace period: only memory tells a left fax from a wrong id.
            not_found_grace_period=0,
            retries=1,
            # Long enough for the test to let the fax leave between the tries.
            retry_delay=timedelta(seconds=10),
            **mode_kwargs,
        )

        @task
        def show(result: dict[str, Any]) -> None:
            print("FAXPLUS-RESULT: " + json.dumps(result, sort_keys=True))

        show(wait.output)
    globals()[dag.dag_id] = dag
