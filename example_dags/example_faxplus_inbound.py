"""Event-driven (Airflow 3): every fax received is saved to object storage, then marked read.

An ``AssetWatcher`` runs :class:`FaxRecordEventTrigger` (category ``inbox``) in the triggerer: one
*List fax records* per poll interval. Each fax received is an event of the asset
``faxplus_inbox_received``, which schedules ``example_faxplus_inbound``: the fax's PDF is written to
``<FAXPLUS_EXAMPLE_INBOUND_URI>/<user_id>/<fax_id>.pdf`` (any ``ObjectStoragePath`` URI: ``s3://...``
with its connection, or ``file://`` as in the demo) and the record is marked read.

An event may come twice (a triggerer stopped before its cursor was stored): a fax whose file exists
already is not downloaded again, only marked read. Needs a ``faxplus_default`` connection whose token has
``fax:fax:read`` and ``fax:fax:edit``, readable by the triggerer. Unpause the DAG: a watcher runs only
while a DAG schedules on its asset. On Airflow 2 this file defines no DAG (no asset watchers there).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import pendulum
from airflow import __version__ as airflow_version

log = logging.getLogger(__name__)
# The demo polls fast against the sandbox; against Fax.Plus keep it at a minute or more.
POLL_INTERVAL = float(os.environ.get("FAXPLUS_EXAMPLE_POKE_INTERVAL", "60"))
INBOUND_URI = os.environ.get("FAXPLUS_EXAMPLE_INBOUND_URI", "file:///tmp/faxplus-inbound").rstrip("/")
# A path segment that stays one: no '/', no '..', nothing a file system or URI reads otherwise.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def received(context: dict[str, Any]) -> list[dict[str, str]]:
    """The received faxes of this run's events (Airflow may gather several into one run), each once;
    an event that is not the watcher's, or whose fax or user id is not a safe file name (it names the
    destination, which must stay under ``INBOUND_URI``), is named in a warning and skipped."""
    from airflow_provider_faxplus.record_watch import read_event

    faxes: dict[str, dict[str, str]] = {}
    for asset, asset_events in context["triggering_asset_events"].items():
        for asset_event in asset_events:
            try:
                payload = read_event((asset_event.extra or {}).get("payload"))
            except ValueError as error:
                log.warning("Skipping an event of %s: %s", asset, error)
                continue
            unsafe = [payload[key] for key in ("user_id", "fax_id") if not _safe(payload[key])]
            if unsafe:
                # Skipped, not failed: no retry makes such an id safe, and failing would hold back the
                # run's other faxes (the hook refuses the id too, so it could not be downloaded anyway).
                log.warning(
                    "Skipping fax %r of %s: %r is not a safe file name", payload["fax_id"], asset, unsafe[0]
                )
                continue
            if payload["category"] == "inbox":
                fax = {"fax_id": payload["fax_id"], "user_id": payload["user_id"]}
                faxes[f"{fax['user_id']}/{fax['fax_id']}"] = fax
    return list(faxes.values())


def _safe(name: object) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


if int(airflow_version.split(".")[0]) >= 3:
    from airflow.sdk import DAG, Asset, AssetWatcher, ObjectStoragePath, get_current_context, task

    from airflow_provider_faxplus.operators.records import DownloadFaxOperator
    from airflow_provider_faxplus.triggers.fax_records import FaxRecordEventTrigger

    inbox = Asset(
        "faxplus_inbox_received",
        watchers=[
            AssetWatcher(
                name="faxplus_inbox_watcher",
                trigger=FaxRecordEventTrigger(
                    category="inbox",
                    report_existing=False,  # faxes already received when it first starts are not new
                    poll_interval=POLL_INTERVAL,
                ),
            )
        ],
    )

    with DAG(
        dag_id="example_faxplus_inbound",
        schedule=[inbox],
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,  # a repeated event's run looks for the file only after the first wrote it
        tags=["example", "faxplus"],
    ):

        @task
        def faxes_to_save() -> list[dict[str, str]]:
            """The faxes whose file is not saved yet; one already saved (a repeated event) is only
            marked read."""
            from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

            todo = []
            hook = FaxPlusHook()
            try:
                for fax in received(dict(get_current_context())):
                    destination = ObjectStoragePath(f"{INBOUND_URI}/{fax['user_id']}/{fax['fax_id']}.pdf")
                    if destination.exists():
                        print(f"FAXPLUS-ALREADY-SAVED: {fax['fax_id']} at {destination}")
                        hook.update_fax(fax["fax_id"], is_read=True, user_id=fax["user_id"])
                        continue
                    destination.parent.mkdir(parents=True, exist_ok=True)  # a local base needs it
                    todo.append({**fax, "destination": str(destination)})
            finally:
                hook.close()
            return todo

        # Written atomically (no half file on failure), then the record is marked read.
        DownloadFaxOperator.partial(task_id="save_fax", mark_read=True).expand_kwargs(faxes_to_save())
