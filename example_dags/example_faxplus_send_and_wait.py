"""Send a generated PDF, tag the fax's comment, wait (deferrable) until it has left the outbox, report.

Trigger with a destination:
``airflow dags trigger example_faxplus_send_and_wait -c '{"to": "+16699990000"}'``.
Needs a ``faxplus_default`` connection whose token has ``fax:fax:edit`` (upload, send, comment) and
``fax:fax:read`` (the sensor, and the outbox lookup of a retried send). Sending a fax costs money:
SendFaxOperator never sends twice (see the README), and its retries look for the fax first.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG, Param, task
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.param import Param

from airflow_provider_faxplus.files import one_page_pdf
from airflow_provider_faxplus.operators.outbox import UpdateOutboxCommentOperator
from airflow_provider_faxplus.operators.send import SendFaxOperator
from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor

# The demo polls fast against the sandbox; against Fax.Plus keep it at a minute or more.
POKE_INTERVAL = float(os.environ.get("FAXPLUS_EXAMPLE_POKE_INTERVAL", "60"))
FAX_ID = "{{ ti.xcom_pull(task_ids='send_fax')['outbox_fax_ids'][params.to] }}"
# On Airflow 3 a run triggered without a logical date (`airflow dags trigger`) has no `ds`: fall back to
# the date the run was due.
DAY = "{{ ds if ds is defined else dag_run.run_after | ds }}"


with DAG(
    dag_id="example_faxplus_send_and_wait",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"to": Param("+16699990000", type="string", description="Destination fax number (E.164)")},
    tags=["example", "faxplus"],
) as dag:

    @task
    def upload_report(ds: str | None = None, run_id: str | None = None) -> str:
        from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

        pdf = one_page_pdf(f"Daily report {ds or run_id}")  # no ds: see DAY
        return FaxPlusHook().upload_file(pdf, file_name="report.pdf").path

    send = SendFaxOperator(
        task_id="send_fax",
        to="{{ params.to }}",
        files=[upload_report()],
        comment=f"daily report {DAY}",
        comment_tags=["report"],
        # Retries look in the outbox for this task's fax before sending again; Fax.Plus can take
        # about 30 s to show a new fax, so wait at least that long between tries.
        retries=2,
        retry_delay=timedelta(seconds=30),
    )

    tag = UpdateOutboxCommentOperator(
        task_id="tag_comment", outbox_fax_id=FAX_ID, comment=f"daily report {DAY} (run {{{{ run_id }}}})"
    )

    wait = OutboxFaxSensor(
        task_id="wait_until_sent",
        outbox_fax_id=FAX_ID,
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=60 * 60,
    )

    @task
    def report(sent: dict[str, Any], result: dict[str, Any]) -> str:
        line = (
            f"fax {result['outbox_fax_id']} to {', '.join(sent['outbox_fax_ids'])} left the outbox "
            f"({result['reason']}) at {result['detected_at']}; last status {result['last_status']}"
        )
        print(f"FAXPLUS-REPORT: {line}")
        return line

    send >> tag >> wait
    report(send.output, wait.output)
