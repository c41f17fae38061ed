"""Deferred sensors whose fax never leaves: the deferral outlives ``timeout``."""

from __future__ import annotations

import pendulum

try:
    from airflow.sdk import DAG
except ImportError:
    from airflow import DAG

from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor

for name, soft_fail in (("faxplus_deferral_timeout", False), ("faxplus_deferral_timeout_soft_fail", True)):
    with DAG(
        dag_id=name,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params={"outbox_fax_id": ""},
    ) as dag:
        OutboxFaxSensor(
            task_id="wait",
            outbox_fax_id="{{ params.outbox_fax_id }}",
            deferrable=True,
            poke_interval=1,
            timeout=3,
            soft_fail=soft_fail,
        )
    globals()[dag.dag_id] = dag
