"""One DAG per sensor mode, for the tests: wait for a fax, then print the sensor's XCom as JSON."""

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

MODES = {
    "poke": {"mode": "poke"},
    "reschedule": {"mode": "reschedule"},
    "deferrable": {"deferrable": True},
}

for name, mode_kwargs in MODES.items():
    with DAG(
        dag_id=f"faxplus_sensor_{name}",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params={"outbox_fax_id": "", "waiting_statuses": None, "conn_id": "faxplus_default"},
    ) as dag:
        wait = OutboxFaxSensor(
            task_id="wait",
            outbox_fax_id="{{ params.outbox_fax_id }}",
            faxplus_conn_id="{{ params.conn_id }}",  # templated: the hook uses the rendered id
            poke_interval=1,
            timeout=120,
            not_found_grace_period=3,
            **mode_kwargs,
        )

        @task
        def show(result: dict[str, Any]) -> None:
            print("FAXPLUS-RESULT: " + json.dumps(result, sort_keys=True))

        show(wait.output)
    globals()[dag.dag_id] = dag
