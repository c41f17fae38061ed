"""FaxDeliveryTrigger over real async HTTP against the sandbox: the OAuth2 401 refresh, the record grace
period when deferred, start_from_trigger and its checkpoint, and the account's shared listing of sent
records. The sensor's poke mode and the matching rule are in test_delivery.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred

from airflow_provider_faxplus.sensors.delivery import TRIGGER_CLASSPATH, FaxDeliverySensor
from airflow_provider_faxplus.sensors.outbox import TRIGGERER_RENDERS_TEMPLATES
from airflow_provider_faxplus.triggers.delivery import FaxDeliveryTrigger
from tests.test_oauth import CLIENT_ID, CLIENT_SECRET, assert_no_secret, use_oauth

LEAVES_IN_AN_HOUR = [{"status": "sending", "seconds": 3600}]


def sensor(**kwargs) -> FaxDeliverySensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("outbox_fax_id", "o1")
    kwargs.setdefault("partial_as", "failed")
    kwargs.setdefault("poke_interval", 0.1)
    kwargs.setdefault("deferrable", True)
    return FaxDeliverySensor(**kwargs)


def deferred(task: FaxDeliverySensor, context: dict | None = None) -> FaxDeliveryTrigger:
    with pytest.raises(TaskDeferred) as caught:
        task.execute(context if context is not None else {})
    return caught.value.trigger


def rebuilt(trigger: FaxDeliveryTrigger) -> FaxDeliveryTrigger:
    """As a triggerer builds it: from the stored (JSON) kwargs."""
    _, kwargs = trigger.serialize()
    return FaxDeliveryTrigger(**json.loads(json.dumps(kwargs)))


async def collect(trigger: FaxDeliveryTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def events(trigger: FaxDeliveryTrigger, timeout: float = 30) -> list[dict]:
    return asyncio.run(asyncio.wait_for(collect(rebuilt(trigger)), timeout))


def sent_listings(control) -> list[dict]:
    """The listings of sent records (each pages from offset 0)."""
    return [
        e
        for e in control.requests()
        if e["path"] == "/v3/accounts/self/faxes"
        and "category=sent" in e["query"]
        and "offset=0" in e["query"]
    ]


# OAuth2: a 401 refreshes once, for every trigger of the identity --------------------------------------


@pytest.fixture
def oauth_sandbox(sandbox, control):
    control.oauth_settings(clients={CLIENT_ID: CLIENT_SECRET})
    return sandbox


@pytest.fixture
def refresh_token(oauth_sandbox, control) -> str:
    return control.mint_refresh_token(CLIENT_ID)


def test_a_401_refreshes_the_oauth_token_once_for_all_triggers_and_they_go_on(
    oauth_sandbox, control, refresh_token, monkeypatch
):
    """The sandbox's clock jumps past the access token's lifetime while two delivery triggers of one
    connection wait: the next shared list answers 401, the token is refreshed once, and both find their
    records."""
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.record_settings(id_policy="same")
    control.create_faxes([{"id": f"o{i}", "lifecycle": [{"status": "sending", "polls": 3}]} for i in (1, 2)])
    triggers = [deferred(sensor(outbox_fax_id=f"o{i}", poke_interval=0.2)) for i in (1, 2)]
    assert len(control.token_requests()) == 1  # the worker's looks
    state = oauth_sandbox.state

    async def scenario() -> list[list[dict]]:
        waiting = asyncio.gather(*(collect(rebuilt(t)) for t in triggers))
        while min(state.faxes[f"o{i}"].polls_seen for i in (1, 2)) < 2:  # one list in the triggerer
            await asyncio.sleep(0.02)
        state.clock.advance(3600)  # in-process: the access token expires before the client expects it
        return await waiting

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [event["status"] for [event] in results] == ["found", "found"], results
    assert [e["status"] for e in control.token_requests()] == [200, 200]  # one refresh for both
    refused = [e for e in control.requests() if e["status"] == 401]
    assert len(refused) == 1, refused  # the shared list, refused once, for both triggers
    assert_no_secret(json.dumps(results), oauth_sandbox, refresh_token, CLIENT_SECRET)


def test_a_second_401_after_the_refresh_fails_the_task(oauth_sandbox, control, refresh_token, monkeypatch):
    """One refresh per refusal, not a loop: refused again with the fresh token, the wait ends."""
    use_oauth(monkeypatch, oauth_sandbox, refresh_token)
    control.create_fax(id="o1", lifecycle=LEAVES_IN_AN_HOUR)
    trigger = deferred(sensor(outbox_fax_id="o1"))
    control.add_fault(status=401, path_endswith="/outbox", times=2)
    [event] = events(trigger)
    assert (event["status"], event["kind"]) == ("error", "fatal"), event
    assert "401" in event["message"]
    assert [e["status"] for e in control.token_requests()] == [200, 200]  # the worker's, and one refresh
    with pytest.raises(AirflowFailException):
        sensor(outbox_fax_id="o1").execute_complete({}, event)


# record_grace_period, deferred ------------------------------------------------------------------------


def _gone_without_fields(control) -> None:
    """o1 left the outbox before the sensor's first look, and its record has an id of its own."""
    control.record_settings(id_policy="new")
    control.create_fax(id="o1", lifecycle=[{"status": "sending", "polls": 1}])
    for _ in range(2):
        FaxDeliverySensor(task_id="w", outbox_fax_id="o1", partial_as="failed").poke({})


def test_deferred_the_record_grace_period_ends_the_wait_as_in_poke_mode(faxplus_conn, control):
    _gone_without_fields(control)
    task = sensor(record_grace_period=0.5, not_found_grace_period=0)
    trigger = deferred(task)  # the first look: left, no record with the outbox id, within the grace
    assert (trigger.left, trigger.record_grace_period) == (True, 0.5)
    assert trigger.left_at is not None
    [event] = events(trigger)
    assert (event["status"], event["kind"]) == ("error", "fatal")
    with pytest.raises(AirflowFailException, match=r"destination and submit time are unknown.*pass sent="):
        task.execute_complete({}, event)


def test_a_rebuilt_trigger_counts_the_grace_from_when_the_fax_left_not_from_its_start(faxplus_conn, control):
    """A triggerer restart rebuilds the trigger from its kwargs: the grace runs from ``left_at`` in them."""
    _gone_without_fields(control)
    control.requests(clear=True)
    trigger = FaxDeliveryTrigger(
        outbox_fax_id="o1",
        user_id="self",
        faxplus_conn_id="faxplus_default",
        poke_interval=0.1,
        sent={"outbox_fax_id": "o1"},
        left=True,
        record_grace_period=60,
        left_at=time.time() - 100,
        deferred_at=time.time() - 100,
    )
    [event] = events(trigger)
    assert (event["status"], event["kind"]) == ("error", "fatal")
    assert [e["path"] for e in control.requests()] == ["/v3/accounts/self/faxes/o1"]  # one look, then over


def test_kwargs_stored_before_the_grace_existed_still_run_and_wait_without_it(faxplus_conn, control):
    """A triggerer holding kwargs from before the upgrade: no grace period, the wait goes on."""
    _gone_without_fields(control)
    old = {
        "outbox_fax_id": "o1",
        "user_id": "self",
        "faxplus_conn_id": "faxplus_default",
        "poke_interval": 0.1,
        "sent": {"outbox_fax_id": "o1"},
        "left": True,
    }
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(collect(FaxDeliveryTrigger(**old)), 1))


# start_from_trigger --------------------------------------------------------------------------------------


def test_start_from_trigger_needs_deferrable():
    with pytest.raises(ValueError, match=r"start_from_trigger=True needs deferrable=True"):
        sensor(deferrable=False, start_from_trigger=True)
    with pytest.raises(TypeError, match="start_from_trigger must be True or False"):
        sensor(start_from_trigger="yes")


@pytest.mark.skipif(not TRIGGERER_RENDERS_TEMPLATES, reason="Airflow 3.3+ starts tasks in the triggerer")
def test_the_start_trigger_args_hold_the_templates_and_the_sensor_timeout():
    template = "{{ dag_run.conf['outbox_fax_id'] }}"
    sent = "{{ ti.xcom_pull(task_ids='send') | tojson }}"
    task = sensor(
        outbox_fax_id=template, sent=sent, start_from_trigger=True, timeout=300, record_grace_period=30
    )
    args = task.start_trigger_args
    assert (args.trigger_cls, args.next_method, args.timeout) == (
        TRIGGER_CLASSPATH,
        "execute_complete",
        timedelta(seconds=300),
    )
    kwargs = args.trigger_kwargs
    assert (kwargs["outbox_fax_id"], kwargs["sent"]) == (template, sent)  # rendered in the triggerer
    assert set(task.template_fields) <= set(kwargs)
    assert "deferred_at" not in kwargs
    assert (kwargs["timeout"], kwargs["record_grace_period"]) == (300.0, 30.0)
    trigger = FaxDeliveryTrigger(**json.loads(json.dumps(kwargs)))
    assert trigger.first_look_here is True
    assert all(hasattr(trigger, name) for name in task.template_fields)


@pytest.mark.skipif(TRIGGERER_RENDERS_TEMPLATES, reason="before Airflow 3.3")
def test_before_3_3_the_task_does_not_start_in_the_triggerer():
    task = sensor(start_from_trigger=True)
    assert (task.start_from_trigger, task.start_trigger_args) == (False, None)


def test_on_a_worker_it_looks_once_and_defers_with_one_warning(faxplus_conn, control, caplog):
    control.create_fax(id="o1", lifecycle=LEAVES_IN_AN_HOUR)
    with caplog.at_level(logging.WARNING):
        trigger = deferred(sensor(start_from_trigger=True))
    warnings = [r.getMessage() for r in caplog.records if "start_from_trigger" in r.getMessage()]
    assert len(warnings) == 1, warnings
    if TRIGGERER_RENDERS_TEMPLATES:
        assert "Airflow started this task on a worker" in warnings[0]
    else:
        assert "renders templated fields in the triggerer only from 3.3" in warnings[0]
    assert trigger.first_look_here is False
    assert [e["path"] for e in control.requests()] == ["/v3/accounts/self/outbox/o1"]


def test_started_in_the_triggerer_it_checkpoints_what_it_learned_and_keeps_the_deadline(
    faxplus_conn, control
):
    """Finding 8 of issue 19: the deferral time comes from the deadline Airflow stored (``timeout_after``
    less the timeout), and the worker's next deferral keeps it; what the trigger saw in the outbox (the
    fields a record with its own id is found by) reaches the next deferral's kwargs."""
    control.record_settings(id_policy="new")
    control.create_fax(id="o1", comment="letter", lifecycle=LEAVES_IN_AN_HOUR)
    task = sensor(start_from_trigger=True, timeout=300, record_grace_period=30)
    kwargs = {
        "outbox_fax_id": "o1",
        "sent": None,
        "user_id": "self",
        "faxplus_conn_id": "faxplus_default",
        "poke_interval": 0.1,
        "record_grace_period": 30.0,
        "timeout": 300.0,
    }
    first = FaxDeliveryTrigger(**kwargs)
    deferred_at = datetime.now(UTC) - timedelta(seconds=200)  # the task deferred 200 s ago
    first.timeout_after = deferred_at + timedelta(seconds=300)  # as the triggerer sets it

    async def until_it_leaves() -> list[dict]:
        run = asyncio.ensure_future(collect(first))
        while not any(e["path"] == "/v3/accounts/self/outbox" for e in control.requests()):
            await asyncio.sleep(0.02)
        control.advance(3600)
        return await run

    [checkpoint] = asyncio.run(asyncio.wait_for(until_it_leaves(), 30))
    assert checkpoint["status"] == "checkpoint", checkpoint
    assert abs(checkpoint["deferred_at"] - deferred_at.timestamp()) < 0.01
    assert (checkpoint["sent"]["to"], checkpoint["sent"]["comment"]) == ("+16699990000", "letter")
    # The worker records it and defers again, with the first deferral's deadline.
    with pytest.raises(TaskDeferred) as again:
        task.execute_complete({}, checkpoint)
    second = again.value.trigger
    assert (second.left, second.left_at, second.deferred_at) == (
        True,
        checkpoint["left_at"],
        checkpoint["deferred_at"],
    )
    assert 99 <= again.value.timeout.total_seconds() <= 101
    [event] = events(second)
    assert event["status"] == "found", event
    result = task.execute_complete({}, event)
    assert (result["outbox_fax_id"], result["matched_by"], result["outcome"]) == ("o1", "fields", "delivered")


# One listing of sent records per account and interval ------------------------------------------------


def test_the_delivery_triggers_of_an_account_share_one_listing_of_sent_records(faxplus_conn, control):
    """Five faxes that left together: one outbox list and one listing of sent records for all five
    triggers, no GET per fax; each finds its own record among the others' (matched by its fields)."""
    count = 5
    control.record_settings(id_policy="new")
    control.create_faxes(
        [{"id": f"o{i}", "comment": f"c{i}", "lifecycle": LEAVES_IN_AN_HOUR} for i in range(count)]
    )
    triggers = [deferred(sensor(outbox_fax_id=f"o{i}", poke_interval=5)) for i in range(count)]
    control.advance(3600)
    control.requests(clear=True)

    async def together() -> list[list[dict]]:
        return await asyncio.gather(*(collect(rebuilt(t)) for t in triggers))

    results = asyncio.run(asyncio.wait_for(together(), 30))
    found = {event["result"]["outbox_fax_id"]: event["result"] for [event] in results}
    assert sorted(found) == [f"o{i}" for i in range(count)]
    records = {r["outbox_fax_id"]: r["id"] for r in control.records()}
    assert all(found[o]["fax_id"] == records[o] and found[o]["matched_by"] == "fields" for o in found)
    paths = [e["path"] for e in control.requests()]
    assert paths.count("/v3/accounts/self/outbox") == 1
    assert len(sent_listings(control)) == 1
    assert not [p for p in paths if p.startswith("/v3/accounts/self/faxes/")]


# Absence from the outbox list is no verdict; a record of another fax is not this one's -----------------


@pytest.mark.parametrize("id_policy", ["same", "new"])
def test_a_list_answer_without_the_fax_is_confirmed_before_it_counts_as_left(
    faxplus_conn, control, id_policy
):
    """The shared outbox list omits the fax once (a listing that drops a record) while an earlier fax to
    the same number with the same comment has its record: one GET confirms the fax is still there, and
    the earlier fax's record is never reported as this fax's."""
    control.record_settings(id_policy=id_policy)
    control.create_fax(id="oA", comment="Invoice", lifecycle=[{"status": "sending", "polls": 1}])
    for _ in range(2):
        FaxDeliverySensor(task_id="w", outbox_fax_id="oA", partial_as="failed").poke({})
    control.advance(30)  # B is submitted after A, by Fax.Plus's clock
    control.create_fax(id="oB", comment="Invoice", lifecycle=[{"status": "sending", "polls": 3}])
    control.set_record_outcome("oB", "failed_no_answer", description="no answer")
    task = sensor(outbox_fax_id="oB", poke_interval=0.2)
    trigger = deferred(task)  # the worker's look saw B in the outbox
    assert not trigger.left
    control.add_fault(method="GET", path_endswith="/outbox", status=200, body='{"records": []}', times=1)
    control.requests(clear=True)
    [event] = events(trigger)
    paths = [e["path"] for e in control.requests()]
    while event["status"] == "checkpoint":  # the sensor defers again with what the trigger learned
        with pytest.raises(TaskDeferred) as again:
            task.execute_complete({}, event)
        [event] = events(again.value.trigger)
    assert "/v3/accounts/self/outbox/oB" in paths  # the absence was confirmed by a GET
    if id_policy == "same":
        with pytest.raises(AirflowFailException, match="status failed_no_answer"):
            task.execute_complete({}, event)
    else:  # A's record (before B's) and B's: two candidates, no guess
        assert (event["status"], event["kind"]) == ("error", "ambiguous")
        for rec in control.records():
            assert rec["id"] in event["message"]


# The shared listing of sent records: bounded, and too large is no verdict -----------------------------


def test_an_old_fax_does_not_widen_the_shared_listing_and_too_many_records_is_no_verdict(
    faxplus_conn, control, monkeypatch, caplog
):
    """A trigger for a fax sent days ago (a cleared task) beside a trigger for a fax sent now: the shared
    listing covers the recent one only; the old one lists alone, and its listing past MAX_RECORDS (patched
    to 5) is a failed look, retried, not an error event for anyone."""
    from airflow_provider_faxplus.exceptions import FaxPlusNotFoundError
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
    from airflow_provider_faxplus.models import format_utc
    from airflow_provider_faxplus.triggers import sent_poll

    monkeypatch.setattr(sent_poll, "MAX_RECORDS", 5)
    control.record_settings(id_policy="new")
    leaves = [{"status": "sending", "polls": 1}]
    control.create_faxes([{"id": f"old{i}", "lifecycle": leaves} for i in range(8)])
    hook = FaxPlusHook()
    for i in range(8):
        hook.get_outbox_fax(f"old{i}")  # each leaves at its next look: the listing below
    old_submit = min(r.submit_time for r in hook.list_faxes("sent"))
    control.advance(3 * 86400)
    control.create_fax(id="oB", comment="B", lifecycle=leaves)
    fax_b = hook.get_outbox_fax("oB")
    with pytest.raises(FaxPlusNotFoundError):
        hook.get_outbox_fax("oB")  # B left: its record exists

    def waiting(oid: str, to: str, submitted, comment: str) -> FaxDeliveryTrigger:
        sent = {"outbox_fax_id": oid, "to": to, "from_number": None, "submitted_at": format_utc(submitted)}
        return FaxDeliveryTrigger(
            outbox_fax_id=oid,
            user_id="self",
            faxplus_conn_id="faxplus_default",
            poke_interval=0.2,
            sent={**sent, "comment": comment},
            left=True,
            deferred_at=time.time(),
        )

    trigger_b = waiting("oB", fax_b.to[0], fax_b.submit_time, "B")
    trigger_old = waiting("oX", "+19999999999", old_submit, "never")
    too_large = "more than 5 sent fax records"

    async def both():
        old = asyncio.ensure_future(collect(rebuilt(trigger_old)))
        [found] = await asyncio.wait_for(collect(rebuilt(trigger_b)), 20)
        assert found["status"] == "found", found  # the old fax widened nothing

        async def two_failed_looks():
            while sum(too_large in r.getMessage() for r in caplog.records) < 2:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(two_failed_looks(), 20)
        assert not old.done()  # no event: still waiting
        old.cancel()
        return found

    with caplog.at_level(logging.WARNING, logger="airflow_provider_faxplus"):
        found = asyncio.run(both())
    assert found["status"] == "found", found
    assert found["result"]["matched_by"] == "fields"
    assert all(r.levelno == logging.WARNING for r in caplog.records if too_large in r.getMessage())


def test_one_malformed_answer_to_the_shared_listing_is_retried_by_every_trigger(
    faxplus_conn, control, caplog
):
    """Issue 19's rule: a malformed list answer (a proxy's HTML page) is a transient failure of the poll:
    the three triggers of the account back off and look again, and each finds its record."""
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
    from airflow_provider_faxplus.models import format_utc

    control.record_settings(id_policy="new")
    leaves = [{"status": "sending", "polls": 1}]
    control.create_faxes([{"id": f"o{i}", "comment": f"c{i}", "lifecycle": leaves} for i in range(3)])
    hook = FaxPlusHook()
    triggers = []
    for i in range(3):
        fax = hook.get_outbox_fax(f"o{i}")
        sent = {"outbox_fax_id": f"o{i}", "to": fax.to[0], "from_number": fax.src, "comment": f"c{i}"}
        triggers.append(
            FaxDeliveryTrigger(
                outbox_fax_id=f"o{i}",
                user_id="self",
                faxplus_conn_id="faxplus_default",
                poke_interval=0.2,
                sent={**sent, "submitted_at": format_utc(fax.submit_time)},
                left=True,
                deferred_at=time.time(),
            )
        )
        sensor(outbox_fax_id=f"o{i}", not_found_grace_period=0).poke({})  # it leaves: its record exists
    control.add_fault(
        method="GET",
        path_endswith="/faxes",
        status=200,
        body="<html>502 from proxy</html>",
        content_type="text/html",
        times=1,
    )

    async def all_three():
        return await asyncio.wait_for(asyncio.gather(*(collect(rebuilt(t)) for t in triggers)), 30)

    with caplog.at_level(logging.WARNING, logger="airflow_provider_faxplus"):
        results = asyncio.run(all_three())
    assert not control.faults()  # the malformed answer was served
    assert [[e["status"] for e in r] for r in results] == [["found"]] * 3, results
    assert any("transient error #1" in r.getMessage() for r in caplog.records)


def test_poke_mode_a_malformed_listing_waits_with_a_warning(faxplus_conn, control, caplog):
    control.record_settings(id_policy="new")
    control.create_fax(id="o1", comment="letter", lifecycle=[{"status": "sending", "polls": 1}])
    task = sensor(deferrable=False)
    assert task.poke({}) is False  # in the outbox: its fields are remembered
    html = {"status": 200, "body": "<html>502</html>", "content_type": "text/html"}
    control.add_fault(method="GET", path_endswith="/faxes", times=1, **html)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_faxplus"):
        assert task.poke({}) is False  # it left; the listing's answer is malformed: look again
    assert any(r.levelno == logging.WARNING and "looking again" in r.getMessage() for r in caplog.records)
    assert task.poke({}).xcom_value["matched_by"] == "fields"
