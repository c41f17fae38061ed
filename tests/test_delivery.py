"""FaxDeliverySensor called directly against the sandbox, and the matching rule of delivery.py.

Real DAG runs (both Airflow lines, both sandbox id policies) are in test_delivery_dags.py.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pendulum
import pytest
from airflow.exceptions import AirflowException
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred

from airflow_provider_faxplus.delivery import (
    AmbiguousRecordError,
    SentFax,
    match_by_fields,
    match_by_id,
    sent_fax_from_send_result,
)
from airflow_provider_faxplus.records import FaxRecord
from airflow_provider_faxplus.sensors.delivery import FaxDeliverySensor
from tests.conftest import TOKEN

T0 = pendulum.datetime(2026, 12, 7, 12, 0, 0, tz="UTC")
# The fax leaves the outbox at its second look (counted in looks, not seconds).
TWO_LOOKS = [{"status": "sending", "polls": 1}]
LEAVES_IN_AN_HOUR = [{"status": "sending", "seconds": 3600}]


def record(fax_id, **kw):
    values = {
        "to": "+16699990001",
        "from_number": "+16699990000",
        "submit_time": T0,
        "comment": "letter",
        "direction": "outgoing",
        "status": "success",
    }
    values.update(kw)
    return FaxRecord(id=fax_id, **values)


SENT = SentFax("o1", "+16699990001", "+16699990000", T0, "letter")


def test_one_record_fitting_every_field_is_the_match():
    others = [
        record("a", to="+16699990002"),
        record("b", from_number="+16699990009"),
        record("c", submit_time=T0 + timedelta(minutes=3)),
        record("d", comment="another letter"),
        record("e", direction="incoming"),
    ]
    match = match_by_fields([*others, record("f", submit_time=T0 + timedelta(seconds=40))], SENT)
    assert match is not None
    assert (match.record.id, match.matched_by) == ("f", "fields")
    assert match_by_fields(others, SENT) is None  # not there yet: the sensor waits


def test_two_fitting_records_fail_naming_both_never_a_guess():
    with pytest.raises(AmbiguousRecordError, match="2 sent records fit") as caught:
        match_by_fields([record("r1"), record("r2", status="failed_no_answer")], SENT)
    assert "r1 (to +16699990001" in str(caught.value)
    assert "r2 (to" in str(caught.value)
    assert "status failed_no_answer" in str(caught.value)


def test_no_number_sender_matches_any_sender():
    sent = SentFax("o1", "+16699990001", "no_number", T0, "letter")
    assert match_by_fields([record("r", from_number="+18885550000")], sent) is not None


def test_a_record_with_the_outbox_id_but_another_destination_is_not_taken():
    assert match_by_id(record("o1"), SENT).matched_by == "id"
    with pytest.raises(AmbiguousRecordError, match="another destination"):
        match_by_id(record("o1", to="+16699990002"), SENT)


def test_the_send_result_gives_the_fields_and_bad_ones_are_named():
    result = {
        "outbox_fax_ids": {"+16699990001": "o1"},
        "faxes": {"o1": {**SENT.to_dict(), "outbox_fax_id": None}},
    }
    assert sent_fax_from_send_result("o1", json.loads(json.dumps(result))) == SENT
    with pytest.raises(ValueError, match="does not list outbox fax 'o2'"):
        sent_fax_from_send_result("o2", result)
    with pytest.raises(ValueError, match="got str"):
        sent_fax_from_send_result("o1", "{'faxes': {}}")


@pytest.fixture
def single_attempt(sandbox, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(max_attempts=1))


def sensor(**kwargs) -> FaxDeliverySensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("outbox_fax_id", "o1")
    kwargs.setdefault("partial_as", "failed")
    kwargs.setdefault("poke_interval", 0.1)
    return FaxDeliverySensor(**kwargs)


@pytest.mark.parametrize(("id_policy", "matched_by"), [("same", "id"), ("new", "fields")])
def test_waits_while_in_the_outbox_then_matches_its_record(single_attempt, control, id_policy, matched_by):
    control.record_settings(id_policy=id_policy)
    control.create_fax(id="o1", comment="letter", lifecycle=TWO_LOOKS)
    task = sensor()
    assert task.poke({}) is False  # in the outbox: its fields are remembered
    done = task.poke({})
    assert done.is_done
    result = done.xcom_value
    [rec] = [r for r in control.records() if r.get("outbox_fax_id") == "o1"]
    assert (result["outbox_fax_id"], result["fax_id"], result["matched_by"]) == ("o1", rec["id"], matched_by)
    assert (result["status"], result["outcome"]) == ("success", "delivered")
    assert result["record"]["comment"] == "letter"
    assert json.loads(json.dumps(result)) == result


def test_two_faxes_alike_with_their_own_ids_fail_naming_both(single_attempt, control):
    control.record_settings(id_policy="new")
    control.create_faxes([{"id": i, "comment": "same", "lifecycle": TWO_LOOKS} for i in ("o1", "o2")])
    task = sensor()
    assert task.poke({}) is False
    sensor(outbox_fax_id="o2").poke({})  # o2 leaves the outbox too
    with pytest.raises(AirflowFailException, match="2 sent records fit") as caught:
        task.poke({})
    for rec in control.records():
        assert rec["id"] in str(caught.value)


@pytest.mark.parametrize(("partial_as", "done"), [("delivered", True), ("failed", False)])
def test_partially_sent_follows_partial_as(single_attempt, control, partial_as, done):
    control.create_fax(id="o1", lifecycle=TWO_LOOKS)
    control.set_record_outcome("o1", "partially_sent", description="2 of 3 pages")
    task = sensor(partial_as=partial_as)
    assert task.poke({}) is False
    if done:
        assert task.poke({}).xcom_value["outcome"] == "partial"
    else:
        with pytest.raises(AirflowFailException, match="status partially_sent, description '2 of 3 pages'"):
            task.poke({})


def test_a_fax_gone_before_the_first_look_without_its_fields_fails_after_the_grace(single_attempt, control):
    control.record_settings(id_policy="new")
    control.create_fax(id="o1", lifecycle=TWO_LOOKS)
    sensor(outbox_fax_id="o1").poke({})
    sensor(outbox_fax_id="o1").poke({})  # it left; this new sensor never saw it
    late = sensor(record_grace_period=0, not_found_grace_period=0)
    with pytest.raises(AirflowFailException, match=r"destination and submit time are unknown.*pass sent="):
        late.poke({})


def test_a_record_of_another_fax_of_the_send_or_from_before_this_fax_is_never_taken():
    # The id of a sibling outbox fax of the same send (SendFaxOperator's ``faxes``) is not a candidate.
    sent = SentFax("o1", "+16699990001", "+16699990000", T0, "letter", siblings=("o2",))
    assert match_by_fields([record("o2")], sent) is None
    assert match_by_fields([record("o2"), record("r1")], sent).record.id == "r1"
    # Submitted before this fax by Fax.Plus's clock (the outbox's submit time): perhaps an earlier fax's.
    exact = SentFax("o1", "+16699990001", "+16699990000", T0, "letter", exact_time=True)
    earlier = record("rA", submit_time=T0 - timedelta(seconds=30))
    assert match_by_fields([earlier], exact) is None  # the wait goes on: no guess
    assert match_by_fields([record("rB")], exact).record.id == "rB"
    with pytest.raises(AmbiguousRecordError, match="2 sent records fit"):
        match_by_fields([earlier, record("rB")], exact)
    # The send's own clock (no outbox sighting) says nothing of "before": the tolerance rule alone.
    assert match_by_fields([earlier], SENT) is not None
    send_result = {"faxes": {"o1": SENT.to_dict(), "o2": {**SENT.to_dict(), "to": "+16699990002"}}}
    assert sent_fax_from_send_result("o1", send_result).siblings == ("o2",)


@pytest.mark.parametrize("id_policy", ["same", "new"])
def test_a_new_fax_not_yet_in_the_outbox_is_not_taken_for_an_earlier_one_alike(
    single_attempt, control, id_policy
):
    """A fax to the same number with the same comment was sent a moment before; this one's id is not
    known yet (a 404): it has not left, and the earlier fax's record is not its record."""
    control.record_settings(id_policy=id_policy)
    control.create_fax(id="oA", comment="Invoice", lifecycle=TWO_LOOKS)
    sensor(outbox_fax_id="oA").poke({})
    sensor(outbox_fax_id="oA").poke({})  # A left: its record exists
    control.create_fax(id="oB", comment="Invoice", visible_after=30, lifecycle=LEAVES_IN_AN_HOUR)
    control.set_record_outcome("oB", "failed_no_answer", description="no answer")
    submitted = pendulum.now("UTC").isoformat()
    send_result = {
        "faxes": {
            "oB": {
                "to": "+16699990000",
                "from_number": "no_number",
                "comment": "Invoice",
                "submitted_at": submitted,
            }
        }
    }
    task = sensor(outbox_fax_id="oB", sent=send_result)
    assert task.poke({}) is False  # unknown id, within the grace period
    control.advance(31)
    assert task.poke({}) is False  # in the outbox now
    assert task._left_at is None


def test_oversized_fields_are_cut_in_messages():
    from airflow_provider_faxplus.delivery import Match, delivery_xcom, failure_message

    huge = "x" * 100_000
    bad = record("r1", status="failed_no_answer", description=huge)
    message = failure_message(delivery_xcom(Match(bad, "id"), SENT))
    assert len(message) < 1_000
    assert "more characters]" in message
    with pytest.raises(AmbiguousRecordError) as caught:
        match_by_fields([record(f"r{i}", status=huge) for i in range(15)], SENT)
    assert len(str(caught.value)) < 10_000
    assert "15 sent records fit" in str(caught.value)
    assert "and 5 more" in str(caught.value)


def test_partial_as_is_required_and_checked():
    # Airflow 3: TypeError; Airflow 2.11's apply_defaults: AirflowException. Both name the argument.
    with pytest.raises((TypeError, AirflowException), match="partial_as"):
        FaxDeliverySensor(task_id="w", outbox_fax_id="o1")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="partial_as must be one of delivered, failed"):
        sensor(partial_as="ok")


# Deferrable: the trigger over real async HTTP, as a triggerer rebuilds it from its stored kwargs.


def run_trigger(trigger, timeout: float = 30) -> list[dict]:
    _, kwargs = trigger.serialize()
    rebuilt = type(trigger)(**json.loads(json.dumps(kwargs)))
    return asyncio.run(asyncio.wait_for(collect_from(rebuilt), timeout))


async def collect_from(trigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def deferred(task: FaxDeliverySensor):
    with pytest.raises(TaskDeferred) as caught:
        task.execute({})
    return caught.value.trigger


@pytest.mark.parametrize(("id_policy", "matched_by"), [("same", "id"), ("new", "fields")])
def test_deferred_it_rides_the_shared_outbox_list_then_matches(faxplus_conn, control, id_policy, matched_by):
    control.record_settings(id_policy=id_policy)
    control.create_fax(id="o1", comment="letter", lifecycle=[{"status": "sending", "polls": 3}])
    control.requests(clear=True)
    trigger = deferred(sensor(deferrable=True, poke_interval=0.2))
    assert TOKEN not in json.dumps(trigger.serialize())
    [event] = run_trigger(trigger)
    assert event["status"] == "found"
    result = sensor(deferrable=True).execute_complete({}, event)
    assert (result["outbox_fax_id"], result["matched_by"], result["outcome"]) == (
        "o1",
        matched_by,
        "delivered",
    )
    paths = [e["path"].split("?")[0] for e in control.requests()]
    # The first look was the worker's GET; in the triggerer the outbox was read by the account's list,
    # and one GET confirmed the fax's absence from it.
    assert paths.count("/v3/accounts/self/outbox/o1") == 2
    assert paths.count("/v3/accounts/self/outbox") >= 1


def test_deferred_a_failure_fails_naming_the_status(faxplus_conn, control):
    control.create_fax(id="o1", lifecycle=[{"status": "sending", "polls": 2}])
    control.set_record_outcome("o1", "failed_user_busy", description="Busy")
    [event] = run_trigger(deferred(sensor(deferrable=True, poke_interval=0.2)))
    with pytest.raises(AirflowFailException, match="status failed_user_busy, description 'Busy'"):
        sensor(deferrable=True).execute_complete({}, event)


def test_deferred_an_ambiguity_is_an_error_event_naming_the_candidates(faxplus_conn, control):
    control.record_settings(id_policy="new")
    control.create_faxes([{"id": i, "comment": "same", "lifecycle": TWO_LOOKS} for i in ("o1", "o2")])
    trigger = deferred(sensor(deferrable=True, poke_interval=0.2))
    sensor(outbox_fax_id="o2").poke({})  # o2 leaves the outbox too
    [event] = run_trigger(trigger)
    assert (event["status"], event["kind"]) == ("error", "ambiguous")
    for rec in control.records():
        assert rec["id"] in event["message"]
    with pytest.raises(AirflowFailException, match="2 sent records fit"):
        sensor(deferrable=True).execute_complete({}, event)


def test_the_trigger_builds_on_the_session_and_the_shared_polls_alone():
    """Issue 23: triggers/delivery.py imports, of the trigger modules, only session.py and the two shared
    polls (the outbox's and the sent records'), which share shared_poll.py's tick."""
    import ast
    from pathlib import Path

    import airflow_provider_faxplus.triggers.delivery as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    triggers = {m for m in imported if m.startswith("airflow_provider_faxplus.triggers")}
    assert triggers == {
        "airflow_provider_faxplus.triggers.session",
        "airflow_provider_faxplus.triggers.outbox_poll",
        "airflow_provider_faxplus.triggers.sent_poll",
    }
    from airflow_provider_faxplus.triggers import outbox_poll, sent_poll, shared_poll

    assert issubclass(outbox_poll.AccountPoll, shared_poll.SharedPoll)
    assert issubclass(sent_poll.SentRecordsPoll, shared_poll.SharedPoll)
