"""DownloadFaxOperator mapped over the fax ids of the run's conf, marking each read; and the
confirmation report of one sent fax."""

from __future__ import annotations

import json
from typing import Any

import pendulum

try:
    from airflow.sdk import DAG, task
except ImportError:
    from airflow import DAG
    from airflow.decorators import task

from airflow_provider_faxplus.operators.records import DownloadFaxOperator

with DAG(
    dag_id="faxplus_download",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"fax_ids": [], "destination": "", "report_fax_id": ""},
) as dag:

    @task
    def fax_ids(**context: Any) -> list[str]:
        return list(context["params"]["fax_ids"])

    saved = DownloadFaxOperator.partial(
        task_id="download", destination="{{ params.destination }}", mark_read=True
    ).expand(fax_id=fax_ids())
    report = DownloadFaxOperator(
        task_id="report",
        fax_id="{{ params.report_fax_id }}",
        destination="{{ params.destination }}",
        report=True,
    )

    @task
    def show(results: list[dict[str, Any]], report_result: dict[str, Any]) -> None:
        print(
            "FAXPLUS-RESULT: " + json.dumps({"files": list(results), "report": report_result}, sort_keys=True)
        )

    show(saved.output, report.output)
