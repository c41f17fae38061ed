"""Event-driven (Airflow 3): tag the comment of every fax that enters the outbox; report faxes leaving it.

An ``AssetWatcher`` runs :class:`OutboxEventTrigger` in the triggerer: one *List outgoing faxes* per
poll interval for the account. Each fax entering the outbox is an event of the asset
``faxplus_outbox_entered``, which schedules ``example_faxplus_tag_new_faxes``; each fax leaving it, an
event of ``faxplus_outbox_left``, which schedules ``example_faxplus_faxes_left``. Needs a
``faxplus_default`` connection whose token has ``fax:fax:read`` (the list) and ``fax:fax:edit`` (the
comment), readable by the triggerer. Unpause both DAGs: a watcher runs only while a DAG schedules on
its asset. On Airflow 2 this file defines no DAG (no asset watchers there).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pendulum
from airflow import __version__ as airflow_version

# The demo polls fast against the sandbox; against Fax.Plus keep it at a minute or more.
log = logging.getLogger(__name__)
POLL_INTERVAL = float(os.environ.get("FAXPLUS_EXAMPLE_POKE_INTERVAL", "60"))
TAG = "new fax seen "


def _payloads(context: dict[str, Any], event: str) -> list[dict[str, Any]]:
    """The fax events that triggered this run (Airflow may gather several into one run); an event
    that is not the watcher's (another producer of the asset) is named in a warning and skipped."""
    from airflow_provider_faxplus.triggers.outbox_events import read_event

    payloads = []
    for asset, asset_events in context["triggering_asset_events"].items():
        for asset_event in asset_events:
            try:
                payload = read_event((asset_event.extra or {}).get("payload"))
            except ValueError as error:
                log.warning("Skipping an event of %s: %s", asset, error)
                continue
            if payload["event"] == event:
                payloads.append(payload)
    return payloads


if int(airflow_version.split(".")[0]) >= 3:
    from airflow.sdk import DAG, Asset, AssetWatcher, get_current_context, task

    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
    from airflow_provider_faxplus.triggers.outbox_events import OutboxEventTrigger

    entered = Asset(
        "faxplus_outbox_entered",
        watchers=[
            AssetWatcher(
                name="faxplus_outbox_entered_watcher",
                trigger=OutboxEventTrigger(
                    report_existing=False,  # faxes already there when it first starts are not "new"
                    events=["entered"],
                    poll_interval=POLL_INTERVAL,
                ),
            )
        ],
    )
    left = Asset(
        "faxplus_outbox_left",
        watchers=[
            AssetWatcher(
                name="faxplus_outbox_left_watcher",
                trigger=OutboxEventTrigger(
                    report_existing=False, events=["left"], poll_interval=POLL_INTERVAL
                ),
            )
        ],
    )

    with DAG(
        dag_id="example_faxplus_tag_new_faxes",
        schedule=[entered],
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,  # a repeated event's run checks the comment only after the first run set it
        tags=["example", "faxplus"],
    ):

        @task
        def tag_new_faxes() -> list[str]:
            context = get_current_context()
            tagged = []
            hook = FaxPlusHook()
            try:
                for payload in _payloads(dict(context), "entered"):
                    fax_id = payload["outbox_fax_id"]
                    # An event can come twice (a triggerer killed before it stored its cursor): tag once.
                    if hook.get_outbox_fax(fax_id, user_id=payload["user_id"]).comment.text.startswith(TAG):
                        print(f"FAXPLUS-ALREADY-TAGGED: {fax_id}")
                        continue
                    comment = f"{TAG}{payload['detected_at']} (run {context['run_id']})"
                    hook.update_outbox_fax(fax_id, comment=comment, user_id=payload["user_id"])
                    print(f"FAXPLUS-TAGGED: {fax_id}")
                    tagged.append(fax_id)
            finally:
                hook.close()
            return tagged

        tag_new_faxes()

    with DAG(
        dag_id="example_faxplus_faxes_left",
        schedule=[left],
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        tags=["example", "faxplus"],
    ):

        @task
        def report_left() -> list[str]:
            gone = []
            for payload in _payloads(dict(get_current_context()), "left"):
                print(f"FAXPLUS-LEFT: {payload['outbox_fax_id']} (last status {payload['status']})")
                gone.append(payload["outbox_fax_id"])
            return gone

        report_left()
