"""Send a generated PDF, wait until Fax.Plus says whether it arrived, save the confirmation report.

Trigger with a destination:
``airflow dags trigger example_faxplus_send_and_confirm -c '{"to": "+16699990000"}'``.
Needs a ``faxplus_default`` connection whose token has ``fax:fax:edit`` (upload, send) and ``fax:fax:read``
(the outbox, the fax records and the report). The wait fails the run, naming the status, when the fax
was not delivered; a partly sent fax counts as failed here (``partial_as``).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG, Param, task
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.param import Param

from airflow_provider_faxplus.files import one_page_pdf
from airflow_provider_faxplus.operators.records import DownloadFaxOperator
from airflow_provider_faxplus.operators.send import SendFaxOperator
from airflow_provider_faxplus.sensors.delivery import FaxDeliverySensor

# The demo polls fast against the sandbox; against Fax.Plus keep it at a minute or more.
POKE_INTERVAL = float(os.environ.get("FAXPLUS_EXAMPLE_POKE_INTERVAL", "60"))
REPORTS = os.environ.get("FAXPLUS_EXAMPLE_REPORTS", "faxplus-reports/")  # relative: the worker's cwd

with DAG(
    dag_id="example_faxplus_send_and_confirm",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "to": Param("+16699990000", type="string", description="Destination fax number (E.164)"),
        "reports": Param(REPORTS, type="string", description="Where the confirmation report is saved"),
    },
    tags=["example", "faxplus"],
) as dag:

    @task
    def upload_letter(run_id: str | None = None) -> str:
        from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

        return FaxPlusHook().upload_file(one_page_pdf(f"Letter {run_id}"), file_name="letter.pdf").path

    send = SendFaxOperator(
        task_id="send_fax",
        to="{{ params.to }}",
        files=[upload_letter()],
        comment="letter {{ run_id }}",
        retries=2,
        retry_delay=timedelta(seconds=30),
    )

    delivered = FaxDeliverySensor(
        task_id="wait_for_delivery",
        outbox_fax_id="{{ ti.xcom_pull(task_ids='send_fax')['outbox_fax_ids'][params.to] }}",
        sent=send.output,  # destination, sender, submit time, comment: to find a record with its own id
        partial_as="failed",
        mode="reschedule",
        poke_interval=POKE_INTERVAL,
        timeout=2 * 60 * 60,
    )

    confirmation = DownloadFaxOperator(
        task_id="save_confirmation",
        fax_id="{{ ti.xcom_pull(task_ids='wait_for_delivery')['fax_id'] }}",
        destination="{{ params.reports }}",
        report=True,
    )

    @task
    def summary(result: dict[str, object], saved: dict[str, object]) -> None:
        print(
            f"FAXPLUS-CONFIRMED: fax {result['outbox_fax_id']} -> record {result['fax_id']} "
            f"({result['status']}, matched by {result['matched_by']}); report at {saved['destination']}"
        )

    delivered >> confirmation
    summary(delivered.output, confirmation.output)
