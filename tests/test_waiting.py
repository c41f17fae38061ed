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
    decision = observe_record(record(status), progress, WaitPolicy(), T0 + 1, "self")
    assert decision.action == "wait"
    assert progress.ever_seen is True
    assert progress.last_status == status
    assert progress.last_record["send_time"] == "2027-01-15T08:00:00+00:00"


def test_a_status_outside_the_waiting_set_has_left():
    policy = WaitPolicy(waiting_statuses=parse_waiting_statuses(["submitted", "converting"]))
    decision = observe_record(
        record("scheduled_for_sending"), WaitProgress(started_at=T0), policy, T0 + 5, "self"
    )
    assert decision.action == "left"
    result = decision.result
    assert result["reason"] == "status"
    assert result["last_status"] == "scheduled_for_sending"
    assert result["ever_seen"] is True
    assert result["detected_at"] == "2027-01-15T08:00:05+00:00"
    assert json.loads(json.dumps(result)) == result


def test_an_unknown_status_counts_as_left():
    decision = observe_record(record("delivered"), WaitProgress(started_at=T0), WaitPolicy(), T0, "self")
    assert (decision.action, decision.result["last_status"]) == ("left", "delivered")


def test_not_found_after_being_seen_has_left():
    progress = WaitProgress(started_at=T0)
    observe_record(record("sending"), progress, WaitPolicy(), T0 + 1, "self")
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
    observe_record(record("sending"), progress, WaitPolicy(), T0, "self")
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
