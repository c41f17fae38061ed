from __future__ import annotations

import json

import pytest

from airflow_provider_faxplus.models import OutboxStatus, parse_outbox
from airflow_provider_faxplus.waiting import (
    WaitPolicy,
    WaitProgress,
    observe_not_found,
    observe_record,
    parse_waiting_statuses,
)

T0 = 1_800_000_000.0


def record(status: str):
    return parse_outbox({"id": "f1", "uid": "u", "status": status, "send_time": "2027-01-15 08:00:00 +0000"})


@pytest.mark.parametrize("status", ["submitted", "converting", "scheduled_for_sending", "sending"])
def test_every_outbox_state_waits_by_default(status):
    progress = WaitProgress(started_at=T0)
    decision = observe_record(record(status), progress, WaitPolicy(), T0 + 1, "self", str)
    assert decision.action == "wait"
    assert progress.ever_seen is True
    assert progress.last_status == status
    assert progress.last_record["send_time"] == "2027-01-15T08:00:00+00:00"


def test_a_status_outside_the_waiting_set_has_left():
    policy = WaitPolicy(waiting_statuses=parse_waiting_statuses(["submitted", "converting"]))
    decision = observe_record(
        record("scheduled_for_sending"), WaitProgress(started_at=T0), policy, T0 + 5, "self", str
    )
    assert decision.action == "left"
    result = decision.result
    assert result["reason"] == "status"
    assert result["last_status"] == "scheduled_for_sending"
    assert result["ever_seen"] is True
    assert result["detected_at"] == "2027-01-15T08:00:05+00:00"
    assert json.loads(json.dumps(result)) == result


def test_an_unknown_status_keeps_waiting_and_is_flagged_once_per_status():
    """A record that Get outgoing fax answers is still in the outbox, whatever its status."""
    progress = WaitProgress(started_at=T0)
    first = observe_record(record("delivered"), progress, WaitPolicy(), T0, "self", str)
    assert (first.action, first.unknown_status, progress.last_status) == ("wait", True, "delivered")
    assert "which the API spec does not know" in first.message
    again = observe_record(record("delivered"), progress, WaitPolicy(), T0 + 1, "self", str)
    assert (again.action, again.unknown_status) == ("wait", False)
    other = observe_record(record("archived"), progress, WaitPolicy(), T0 + 2, "self", str)
    assert (other.action, other.unknown_status) == ("wait", True)


def test_a_known_status_in_another_case_is_that_status():
    narrowed = WaitPolicy(waiting_statuses=parse_waiting_statuses(["submitted"]))
    progress = WaitProgress(started_at=T0)
    assert observe_record(record("SUBMITTED"), progress, narrowed, T0, "self", str).action == "wait"
    decision = observe_record(record("Sending"), progress, narrowed, T0, "self", str)
    assert (decision.action, decision.unknown_status) == ("left", False)
    assert decision.result["last_status"] == "sending"


def test_not_found_with_unknown_earlier_looks_is_left_and_says_why():
    progress = WaitProgress(started_at=T0)
    progress.forget_earlier_looks("this is try 2 and nothing remembers try 1")
    policy = WaitPolicy(not_found_grace_period=10, fail_if_never_seen=True)
    assert observe_not_found("f1", progress, policy, T0 + 5, "self").action == "wait"
    decision = observe_not_found("f1", progress, policy, T0 + 11, "self")
    assert decision.action == "left"
    assert decision.result["ever_seen"] is None
    assert "because this is try 2 and nothing remembers try 1" in decision.message


def test_forgetting_earlier_looks_keeps_a_sighting():
    progress = WaitProgress(started_at=T0, ever_seen=True)
    progress.forget_earlier_looks("unknown")
    assert progress.ever_seen is True
    seen = WaitProgress(started_at=T0)
    seen.forget_earlier_looks("unknown")
    observe_record(record("sending"), seen, WaitPolicy(), T0, "self", str)
    assert (seen.ever_seen, seen.unknown_because) == (True, None)


def test_progress_round_trips_and_refuses_a_bad_ever_seen():
    progress = WaitProgress(started_at=T0, ever_seen=None, unknown_because="why")
    assert WaitProgress.from_dict(json.loads(json.dumps(progress.to_dict()))) == progress
    with pytest.raises(ValueError, match="ever_seen"):
        WaitProgress.from_dict({"started_at": T0, "ever_seen": "yes"})


def test_not_found_after_being_seen_has_left():
    progress = WaitProgress(started_at=T0)
    observe_record(record("sending"), progress, WaitPolicy(), T0 + 1, "self", str)
    decision = observe_not_found("f1", progress, WaitPolicy(), T0 + 2, "self")
    assert decision.action == "left"
    assert decision.result["reason"] == "not_found"
    assert decision.result["last_status"] == "sending"
    assert decision.result["last_record"]["id"] == "f1"
    assert decision.result["ever_seen"] is True


def test_not_found_before_ever_seen_waits_within_the_grace_period():
    policy = WaitPolicy(not_found_grace_period=30)
    decision = observe_not_found("f1", WaitProgress(started_at=T0), policy, T0 + 29, "self")
    assert decision.action == "wait"
    assert "grace period" in decision.message


def test_never_seen_after_grace_fails_and_says_why():
    policy = WaitPolicy(not_found_grace_period=30, fail_if_never_seen=True)
    decision = observe_not_found("f1", WaitProgress(started_at=T0), policy, T0 + 30, "self")
    assert decision.action == "fail"
    assert "never found" in decision.message
    assert "id is wrong" in decision.message


def test_never_seen_after_grace_can_count_as_left_and_says_so():
    policy = WaitPolicy(not_found_grace_period=30, fail_if_never_seen=False)
    decision = observe_not_found("f1", WaitProgress(started_at=T0), policy, T0 + 31, "member-7")
    assert decision.action == "left"
    assert decision.result["ever_seen"] is False
    assert decision.result["last_record"] is None
    assert decision.result["user_id"] == "member-7"


def test_unknown_memory_counts_as_left_only_after_grace():
    progress = WaitProgress(started_at=T0, ever_seen=None)
    policy = WaitPolicy(not_found_grace_period=10, fail_if_never_seen=True)
    assert observe_not_found("f1", progress, policy, T0 + 5, "self").action == "wait"
    decision = observe_not_found("f1", progress, policy, T0 + 10, "self")
    assert decision.action == "left"
    assert decision.result["ever_seen"] is None


def test_progress_round_trips_through_json():
    progress = WaitProgress(started_at=T0)
    observe_record(record("sending"), progress, WaitPolicy(), T0, "self", str)
    assert WaitProgress.from_dict(json.loads(json.dumps(progress.to_dict()))) == progress


def test_waiting_statuses_validation():
    assert parse_waiting_statuses(None) == frozenset(OutboxStatus)
    assert parse_waiting_statuses("sending") == {OutboxStatus.SENDING}
    with pytest.raises(ValueError, match="'sent' is not an outbox status"):
        parse_waiting_statuses(["sent"])
    with pytest.raises(ValueError, match="at least one"):
        parse_waiting_statuses([])
    with pytest.raises(ValueError, match="grace"):
        WaitPolicy(not_found_grace_period=-1)
