"""OutboxFaxSensor and UpdateOutboxCommentOperator called directly against the sandbox.

The DAG-level behaviour (poke, reschedule, deferrable in a real Airflow) is in test_dags.py.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from airflow.exceptions import AirflowException
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException, TaskDeferred

from airflow_provider_faxplus.exceptions import FaxPlusError, FaxPlusResponseError
from airflow_provider_faxplus.operators.outbox import UpdateOutboxCommentOperator
from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor
from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger


@pytest.fixture
def single_attempt(sandbox, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(max_attempts=1))


def sensor(**kwargs) -> OutboxFaxSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("outbox_fax_id", "f1")
    kwargs.setdefault("poke_interval", 0.1)
    kwargs.setdefault("timeout", 30)
    return OutboxFaxSensor(**kwargs)


def test_poke_waits_then_returns_the_xcom(single_attempt, control):
    control.create_fax(id="f1", lifecycle=[{"status": "converting", "seconds": 3600}])
    task = sensor()
    assert task.poke({}) is False
    control.advance(3600)  # the sandbox's clock: no race with the machine's speed
    done = task.poke({})
    result = done.xcom_value
    assert done.is_done
    assert (result["reason"], result["last_status"], result["ever_seen"]) == ("not_found", "converting", True)
    assert result["last_record"]["status"] == "converting"
    assert json.loads(json.dumps(result)) == result


def test_transient_errors_do_not_fail_a_poke(single_attempt, control):
    control.create_fax(id="f1")
    for status in (429, 500, 502, 503, 504):
        control.add_fault(status=status)
        assert sensor().poke({}) is False
    control.add_fault(drop=True)
    assert sensor().poke({}) is False


def test_auth_errors_fail_at_once(sandbox, control, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps({"conn_type": "faxplus", "host": sandbox.base_url, "password": "alohi_pat_expired"}),
    )
    with pytest.raises(AirflowFailException, match=r"HTTP 401.*fax:fax:read") as info:
        sensor().poke({})
    assert "alohi_pat_expired" not in str(info.value)


def test_malformed_ids_fail_at_once_without_a_request(single_attempt, control):
    with pytest.raises(AirflowFailException, match="must not contain"):
        sensor(outbox_fax_id="../../accounts").poke({})
    assert control.requests() == []


def test_malformed_responses_fail_the_poke(single_attempt, control):
    control.add_fault(status=200, body="<html>proxy error</html>", content_type="text/html")
    with pytest.raises(FaxPlusResponseError, match="not JSON"):
        sensor().poke({})


def test_wrong_id_fails_after_grace_with_a_distinct_message(single_attempt, control):
    task = sensor(outbox_fax_id="typo", not_found_grace_period=0)
    with pytest.raises(AirflowFailException, match="'typo' was never found"):
        task.poke({})


def test_wrong_id_can_be_counted_as_left(single_attempt, control):
    done = sensor(outbox_fax_id="typo", not_found_grace_period=0, fail_if_never_seen=False).poke({})
    assert done.xcom_value["ever_seen"] is False
    assert done.xcom_value["reason"] == "not_found"


def test_reschedule_without_state_store_cannot_insist_on_never_seen():
    task = sensor(mode="reschedule", fail_if_never_seen=True)
    with pytest.raises(AirflowFailException, match="task state store"):
        task._resolved_policy({})
    assert sensor(mode="reschedule")._resolved_policy({}).fail_if_never_seen is False
    assert (
        sensor(mode="reschedule")._resolved_policy({"task_state_store": object()}).fail_if_never_seen is True
    )
    assert sensor()._resolved_policy({}).fail_if_never_seen is True


def test_bad_arguments_are_refused_at_parse_time():
    with pytest.raises(ValueError, match="'sent' is not an outbox status"):
        sensor(waiting_statuses=["sent"])
    with pytest.raises(TypeError, match="not_found_grace_period"):
        sensor(not_found_grace_period="soon")


def test_deferrable_checks_once_then_defers_with_json_safe_kwargs(single_attempt, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    task = sensor(deferrable=True, waiting_statuses=["sending"], timeout=90)
    with pytest.raises(TaskDeferred) as info:
        task.execute({})
    trigger = info.value.trigger
    assert isinstance(trigger, OutboxFaxTrigger)
    assert info.value.method_name == "execute_complete"
    assert info.value.timeout.total_seconds() == 90
    _, kwargs = trigger.serialize()
    assert kwargs["progress"]["ever_seen"] is True
    assert kwargs["waiting_statuses"] == ["sending"]
    assert kwargs["shared_poll"] is True
    json.dumps(kwargs)
    assert len(control.requests()) == 1


def test_shared_poll_false_reaches_the_trigger(single_attempt, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    with pytest.raises(TaskDeferred) as info:
        sensor(deferrable=True, shared_poll=False).execute({})
    assert info.value.trigger.serialize()[1]["shared_poll"] is False


def test_deferrable_returns_at_once_when_already_left(single_attempt, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    result = sensor(deferrable=True, waiting_statuses=["submitted"]).execute({})
    assert (result["reason"], result["last_status"]) == ("status", "sending")


def test_deferrable_first_look_honours_soft_fail(sandbox, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps({"conn_type": "faxplus", "host": sandbox.base_url, "password": "alohi_pat_expired"}),
    )
    with pytest.raises(AirflowSkipException):
        sensor(deferrable=True, soft_fail=True).execute({})


def test_execute_complete_maps_events():
    task = sensor()
    result = {"outbox_fax_id": "f1", "reason": "status"}
    assert task.execute_complete({}, {"status": "success", "message": "ok", "result": result}) == result
    for kind in ("auth", "config", "input", "rejected", "never_seen"):
        with pytest.raises(AirflowFailException, match="boom"):
            task.execute_complete({}, {"status": "error", "kind": kind, "message": "boom"})
    with pytest.raises(FaxPlusError, match="HTTP 400"):
        task.execute_complete({}, {"status": "error", "kind": "api", "message": "HTTP 400"})
    with pytest.raises(FaxPlusError, match="without an event"):
        task.execute_complete({}, None)


# Memory across pokes, tries and deferrals ------------------------------------------------------


class StateStore:
    """Stands in for Airflow 3.3's task state store (``context["task_state_store"]``): get/set of JSON
    values, one store per task instance, kept across tries. The real one runs in test_dags.py."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.writes = 0

    def get(self, key, default=None):
        return json.loads(json.dumps(self.values.get(key, default)))

    def set(self, key, value, *, retention=None):
        self.values[key] = json.loads(json.dumps(value))
        self.writes += 1


def context(try_number: int = 1, store: StateStore | None = None) -> dict:
    result: dict = {"ti": SimpleNamespace(try_number=try_number)}
    if store is not None:
        result["task_state_store"] = store
    return result


def test_a_retry_remembers_what_the_first_try_saw_through_the_state_store(single_attempt, control):
    """Poke mode: try 1 saw the fax and failed; it left during retry_delay; try 2 counts it as left."""
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    store = StateStore()
    assert sensor(not_found_grace_period=0).poke(context(1, store)) is False
    control.advance(3600)
    done = sensor(not_found_grace_period=0).poke(context(2, store))
    assert (done.xcom_value["reason"], done.xcom_value["ever_seen"]) == ("not_found", True)
    assert done.xcom_value["last_status"] == "sending"


def test_a_retry_keeps_the_first_tries_grace_period_and_evidence(single_attempt, control):
    """The record spans tries: no try ever saw the fax and the grace period ran out in try 1."""
    store = StateStore()
    assert sensor(outbox_fax_id="typo", not_found_grace_period=60).poke(context(1, store)) is False
    saved = store.values["faxplus_outbox_sensor"]
    saved["progress"]["started_at"] -= 120  # try 1 began two minutes ago
    with pytest.raises(AirflowFailException, match=r"'typo' was never found in 12\d s"):
        sensor(outbox_fax_id="typo", not_found_grace_period=60).poke(context(2, store))


def test_a_record_of_another_fax_is_not_used(single_attempt, control):
    store = StateStore()
    store.set(
        "faxplus_outbox_sensor",
        {"outbox_fax_id": "other", "user_id": "self", "progress": {"started_at": 0, "ever_seen": True}},
    )
    with pytest.raises(AirflowFailException, match="never found"):
        sensor(outbox_fax_id="typo", not_found_grace_period=0).poke(context(2, store))


def test_a_retry_without_a_state_store_counts_a_not_found_as_left_and_says_why(
    single_attempt, control, caplog
):
    """Airflow 2.11: try 2 cannot know what try 1 saw, so a not-found is no evidence of a wrong id."""
    caplog.set_level(logging.INFO, logger="airflow_provider_faxplus")
    done = sensor(outbox_fax_id="gone", not_found_grace_period=0, fail_if_never_seen=True).poke(context(2))
    assert (done.xcom_value["reason"], done.xcom_value["ever_seen"]) == ("not_found", None)
    assert "this is try 2 and an Airflow without a task state store" in caplog.text
    with pytest.raises(AirflowFailException, match="never found"):  # try 1 knows all its looks
        sensor(outbox_fax_id="gone", not_found_grace_period=0).poke(context(1))


def test_poke_mode_writes_the_store_only_when_the_progress_changes(single_attempt, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    store = StateStore()
    task = sensor()
    for _ in range(3):
        assert task.poke(context(1, store)) is False
    assert store.writes == 1


def test_an_unknown_status_keeps_the_sensor_waiting_with_one_warning(single_attempt, control, caplog):
    caplog.set_level(logging.INFO, logger="airflow_provider_faxplus")
    control.add_fault(status=200, body='{"id": "f1", "uid": "u1", "status": "archived"}', times=3)
    task = sensor()
    assert [task.poke({}) for _ in range(3)] == [False, False, False]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "'archived'" in r.getMessage()]
    assert len(warned) == 1


def test_an_unknown_status_keeps_the_deferrable_first_look_waiting(single_attempt, control):
    control.add_fault(status=200, body='{"id": "f1", "uid": "u1", "status": "archived"}')
    with pytest.raises(TaskDeferred):
        sensor(deferrable=True).execute({})


def test_deferrable_records_its_first_look_and_each_checkpoint(single_attempt, control):
    """The trigger's first sighting comes back as a checkpoint: recorded in the state store and in the
    kwargs of the next deferral, whose timeout is what is left of the first one."""
    control.create_fax(id="f1", visible_after=3600, lifecycle=[{"status": "submitted", "seconds": 7200}])
    store = StateStore()
    task = sensor(deferrable=True, timeout=600, not_found_grace_period=600)
    with pytest.raises(TaskDeferred) as first:
        task.execute(context(1, store))
    _, kwargs = first.value.trigger.serialize()
    assert kwargs["progress"]["ever_seen"] is False
    assert store.values["faxplus_outbox_sensor"]["progress"]["ever_seen"] is False
    progress = dict(kwargs["progress"], ever_seen=True, last_status="submitted")
    event = {"status": "checkpoint", "progress": progress, "deferred_at": kwargs["deferred_at"] - 100}
    with pytest.raises(TaskDeferred) as again:
        sensor(deferrable=True, timeout=600).execute_complete(context(1, store), event)
    _, kwargs = again.value.trigger.serialize()
    assert (kwargs["progress"]["ever_seen"], kwargs["progress"]["last_status"]) == (True, "submitted")
    assert kwargs["deferred_at"] == event["deferred_at"]
    assert 490 <= again.value.timeout.total_seconds() <= 500
    assert store.values["faxplus_outbox_sensor"]["progress"]["ever_seen"] is True
    with pytest.raises(FaxPlusError, match="malformed checkpoint"):
        task.execute_complete(context(1, store), {"status": "checkpoint"})


def test_deferrable_retry_without_a_state_store_hands_over_unknown_memory(single_attempt, control):
    with pytest.raises(TaskDeferred) as info:
        sensor(deferrable=True, outbox_fax_id="gone").execute(context(2))
    _, kwargs = info.value.trigger.serialize()
    assert kwargs["progress"]["ever_seen"] is None
    assert "try 2" in kwargs["progress"]["unknown_because"]


def test_deferrable_first_look_honours_never_fail(single_attempt, control):
    control.add_fault(status=200, body="<html>proxy error</html>", content_type="text/html")
    with pytest.raises(AirflowSkipException, match="never_fail"):
        sensor(deferrable=True, never_fail=True).execute({})
    with pytest.raises(AirflowSkipException, match="never_fail"):
        sensor(deferrable=True, never_fail=True, outbox_fax_id="typo", not_found_grace_period=0).execute({})


def test_deferrable_passes_exponential_backoff_to_the_trigger(single_attempt, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    with pytest.raises(TaskDeferred) as info:
        sensor(deferrable=True, exponential_backoff=True, max_wait=30).execute({})
    _, kwargs = info.value.trigger.serialize()
    assert (kwargs["exponential_backoff"], kwargs["max_wait"]) == (True, 30.0)


# UpdateOutboxCommentOperator -------------------------------------------------------------------


def operator(**kwargs) -> UpdateOutboxCommentOperator:
    kwargs.setdefault("task_id", "tag")
    kwargs.setdefault("outbox_fax_id", "f1")
    return UpdateOutboxCommentOperator(**kwargs)


def test_operator_sets_the_comment_and_returns_a_summary(single_attempt, control):
    control.create_fax(id="f1", tags=["t"])
    summary = operator(comment="batch 7").execute({})
    assert summary["outbox_fax_id"] == "f1"
    assert summary["comment"] == "batch 7"
    assert summary["comment_truncated"] is False
    assert control.fax("f1")["comment"] == {"tags": ["t"], "text": "batch 7"}
    assert json.loads(json.dumps(summary)) == summary


def test_operator_summary_truncates_long_comments_but_sends_them_whole(single_attempt, control):
    control.create_fax(id="f1")
    summary = operator(comment="x" * 1500).execute({})
    assert len(summary["comment"]) == 1000
    assert summary["comment_truncated"] is True
    assert len(control.fax("f1")["comment"]["text"]) == 1500


@pytest.mark.parametrize("comment", [None, 42, ["a"], {"text": "a"}, b"a"])
def test_operator_refuses_non_string_comments_at_parse_time(comment):
    with pytest.raises(TypeError, match="comment must be a string"):
        operator(comment=comment)


def test_operator_missing_comment_is_a_parse_error():
    # Airflow 3 raises TypeError, 2.11 AirflowException("missing keyword argument 'comment'").
    with pytest.raises((TypeError, AirflowException), match="comment"):
        UpdateOutboxCommentOperator(task_id="tag", outbox_fax_id="f1")


def test_operator_refuses_a_comment_that_rendered_to_a_non_string(single_attempt, control):
    task = operator(comment="{{ params.n }}")
    task.comment = 5  # what render_template_as_native_obj=True can produce
    with pytest.raises(AirflowFailException, match="comment must render to a string"):
        task.execute({})
    assert control.requests() == []


def test_operator_on_a_fax_that_left_says_so(single_attempt, control):
    with pytest.raises(AirflowFailException, match="already been sent or has failed"):
        operator(comment="late").execute({})


def test_operator_on_a_sending_fax_says_so(single_attempt, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    with pytest.raises(AirflowFailException, match="a fax that is sending cannot be modified"):
        operator(comment="late").execute({})


def test_operator_template_fields():
    assert set(UpdateOutboxCommentOperator.template_fields) == {
        "outbox_fax_id",
        "comment",
        "user_id",
        "faxplus_conn_id",
    }
    assert set(OutboxFaxSensor.template_fields) == {"outbox_fax_id", "user_id", "faxplus_conn_id"}


def test_the_operator_uses_the_rendered_connection_id(sandbox, control, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_RENDERED", sandbox.connection_json(max_attempts=1))
    control.create_fax(id="f1")
    task = operator(comment="x", faxplus_conn_id="{{ params.conn }}")
    task.render_template_fields({"params": {"conn": "faxplus_rendered"}})
    assert task.faxplus_conn_id == "faxplus_rendered"
    task.execute({})
    assert control.fax("f1")["comment"]["text"] == "x"
