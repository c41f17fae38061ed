"""SendFaxOperator with Airflow retries: the never-twice policy in real runs (tests/test_send_dags.py).

The conf gives ``to`` (and ``to2``) and ``file`` (a path the test wrote); the DAGs differ in
``on_ambiguous`` and the number of destinations."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pendulum

try:
    from airflow.sdk import DAG, task, task_group
except ImportError:
    from airflow import DAG
    from airflow.decorators import task, task_group

from airflow_provider_faxplus.operators.send import SendFaxOperator

for name, on_ambiguous, two in (
    ("faxplus_send_fail", "fail", False),
    ("faxplus_send_resend", "resend", False),
    ("faxplus_send_two", "fail", True),
    ("faxplus_send_two_resend", "resend", True),
):
    with DAG(
        dag_id=name,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params={"to": "", "to2": "", "file": ""},
        default_args={"retries": 2, "retry_delay": timedelta(seconds=1)},
    ) as dag:
        sent = SendFaxOperator(
            task_id="send",
            to=["{{ params.to }}", "{{ params.to2 }}"] if two else "{{ params.to }}",
            files=["{{ params.file }}"],
            comment="run {{ run_id }}",
            on_ambiguous=on_ambiguous,
        )

        @task
        def report(result: dict[str, Any]) -> None:
            print("FAXPLUS-SENT:", json.dumps(result))

        report(sent.output)
    globals()[dag.dag_id] = dag

with DAG(
    dag_id="faxplus_send_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"file": ""},
) as mapped_dag:
    SendFaxOperator.partial(task_id="send", files=["{{ params.file }}"], comment="mapped").expand(
        to=["+16699990001", "+16699990002"]
    )

with DAG(
    dag_id="faxplus_send_mapped_twice",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"file": ""},
) as mapped_twice_dag:
    SendFaxOperator.partial(task_id="send", files=["{{ params.file }}"], comment="mapped").expand(
        to=["+16699990001", "+16699990002", "+16699990001"]
    )

with DAG(
    dag_id="faxplus_send_kwargs_twice",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"file": ""},
) as kwargs_twice_dag:
    SendFaxOperator.partial(task_id="send", files=["{{ params.file }}"]).expand_kwargs(
        [
            {"to": "+16699990001", "comment": "same"},
            {"to": "+16699990002", "comment": "same"},
            {"to": "+16699990001", "comment": "same"},
            {"to": "+16699990003", "comment": "one"},
            {"to": "+16699990003", "comment": "another"},  # another fax: it differs in its comment
        ]
    )

with DAG(
    dag_id="faxplus_send_group_twice",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"file": ""},
) as group_twice_dag:

    @task_group
    def fan(number: str) -> None:
        SendFaxOperator(task_id="send", to=number, files=["{{ params.file }}"], comment="group")

    fan.expand(number=["+16699990001", "+16699990002", "+16699990001"])
