"""Several deferred sensors shared by two triggerers, each fax's departure recorded downstream once."""

from __future__ import annotations

from typing import Any

import pendulum

try:
    from airflow.sdk import DAG, Param, task
except ImportError:
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.param import Param

from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor

with DAG(
    dag_id="faxplus_triggerer_ha",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "outbox_fax_ids": Param([], type="array", items={"type": "string"}, minItems=1),
        "receipt_fax_id": Param("", type="string", minLength=1),
    },
) as dag:

    @task
    def fax_ids(**context: Any) -> list[str]:
        return list(context["params"]["outbox_fax_ids"])

    waited = OutboxFaxSensor.partial(
        task_id="wait", deferrable=True, poke_interval=1, timeout=60 * 60
    ).expand(outbox_fax_id=fax_ids())

    @task
    def record(results: list[dict[str, Any]], **context: Any) -> None:
        """The downstream effect: one comment PUT per fax on a receipt fax that stays in the outbox.
        One task, not one per fax: Airflow 2.11's executor runs tasks one at a time (~6 s each)."""
        from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

        hook = FaxPlusHook()
        for result in results:
            hook.update_outbox_fax(
                context["params"]["receipt_fax_id"], comment=f"left: {result['outbox_fax_id']}"
            )

    record(waited.output)
