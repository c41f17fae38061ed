"""Tag an outgoing fax's comment, wait (deferrable) until it has left the outbox, then report.

Trigger with the fax's outbox id: ``airflow dags trigger example_faxplus_tag_and_wait
-c '{"outbox_fax_id": "13a4afb0585345639733857e8f36df8d"}'``. Needs a ``faxplus_default`` connection
whose token has ``fax:fax:edit`` (the comment) and ``fax:fax:read`` (the sensor).
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

# The demo polls fast against the sandbox; against Fax.Plus keep it at a minute or more.
POKE_INTERVAL = float(os.environ.get("FAXPLUS_EXAMPLE_POKE_INTERVAL", "60"))

with DAG(
    dag_id="example_faxplus_tag_and_wait",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"outbox_fax_id": Param("", type="string", description="Outbox id of the fax to follow")},
    tags=["example", "faxplus"],
) as dag:
    tag = UpdateOutboxCommentOperator(
        task_id="tag_comment",
        outbox_fax_id="{{ params.outbox_fax_id }}",
        comment="billing batch {{ ds }} (run {{ run_id }})",
    )

    wait = OutboxFaxSensor(
        task_id="wait_until_sent",
        outbox_fax_id="{{ params.outbox_fax_id }}",
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=60 * 60,
    )

    @task
    def report(result: dict[str, Any]) -> str:
        record = result["last_record"] or {}
        line = (
            f"fax {result['outbox_fax_id']} left the outbox ({result['reason']}) at {result['detected_at']}; "
            f"last status {result['last_status']}, comment {record.get('comment', {}).get('text')!r}"
        )
        print(f"FAXPLUS-REPORT: {line}")
        return line

    tag >> wait
    report(wait.output)
