"""Tag and follow several outgoing faxes at once with dynamic task mapping.

The fax ids come from the run's conf (or the ``outbox_fax_ids`` param):
``airflow dags trigger example_faxplus_mapped -c '{"outbox_fax_ids": ["id1", "id2"]}'``.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG, Param, task
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.param import Param

from airflow_provider_faxplus.operators.outbox import UpdateOutboxCommentOperator
from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor

POKE_INTERVAL = float(os.environ.get("FAXPLUS_EXAMPLE_POKE_INTERVAL", "60"))

with DAG(
    dag_id="example_faxplus_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"outbox_fax_ids": Param([], type="array", items={"type": "string"}, minItems=1)},
    tags=["example", "faxplus"],
) as dag:

    @task
    def fax_ids(**context: Any) -> list[str]:
        return list(context["params"]["outbox_fax_ids"])

    ids = fax_ids()

    tagged = UpdateOutboxCommentOperator.partial(
        task_id="tag_comment", comment="batch run {{ run_id }}"
    ).expand(outbox_fax_id=ids)

    waited = OutboxFaxSensor.partial(
        task_id="wait_until_sent", deferrable=True, poke_interval=POKE_INTERVAL, timeout=60 * 60
    ).expand(outbox_fax_id=ids)

    @task
    def summarize(results: list[dict[str, Any]]) -> dict[str, str]:
        summary = {
            result["outbox_fax_id"]: f"{result['reason']} (last {result['last_status']})"
            for result in results
        }
        print(f"FAXPLUS-REPORT: {summary}")
        return summary

    tagged >> waited
    summarize(waited.output)
