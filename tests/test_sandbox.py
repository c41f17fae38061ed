from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.state import Clock, Fax
from tests.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def url(sandbox, fax_id="f1", user="self"):
    return f"{sandbox.base_url}/accounts/{user}/outbox/{fax_id}"


def test_lifecycle_walks_the_four_states_then_leaves():
    fax = Fax(
        id="f", owner="u", created_at=100.0, lifecycle=(("submitted", 1), ("converting", 2), ("sending", 3))
    )
    assert [fax.status(t) for t in (100, 100.99, 101, 102.9, 103, 105.9)] == [
        "submitted",
        "submitted",
        "converting",
        "converting",
        "sending",
        "sending",
    ]
    assert fax.status(106) is None
    assert fax.left_at() == 106


def test_clock_pace_and_advance():
    clock = Clock(pace=0)
    start = clock.now()
    clock.advance(30)
    assert clock.now() == pytest.approx(start + 30)


def test_get_answers_a_spec_shaped_outbox(sandbox, control):
    control.create_fax(id="f1", fields={"page_count": 3})
    response = requests.get(url(sandbox), headers=AUTH, timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert {"id", "uid", "status"} <= set(body)
    assert body["page_count"] == 3
    assert body["status"] == "submitted"
    assert body["send_time"].endswith(" +0000")
    assert len(body["last_updated_status_time"]) == 19


def test_auth_is_checked(sandbox, control):
    control.create_fax(id="f1")
    assert requests.get(url(sandbox), timeout=5).status_code == 401
    wrong = requests.get(url(sandbox), headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    assert wrong.json() == {"error": "invalid_token", "description": "Missing or invalid access token"}


def test_visible_after_hides_a_new_fax_for_a_while(sandbox, control):
    control.set_pace(0)
    control.create_fax(id="f1", visible_after=5)
    assert requests.get(url(sandbox), headers=AUTH, timeout=5).status_code == 404
    control.advance(5)
    assert requests.get(url(sandbox), headers=AUTH, timeout=5).status_code == 200


def test_left_fax_answers_the_configured_not_found_status(sandbox, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 1}])
    control.advance(2)
    assert requests.get(url(sandbox), headers=AUTH, timeout=5).status_code == 404
    control.settings(not_found_status=400)
    response = requests.get(url(sandbox), headers=AUTH, timeout=5)
    assert (response.status_code, response.json()["error"]) == (400, "fax_not_found")
    assert control.fax("f1")["in_outbox"] is False


def test_unknown_user_answers_invalid_user_id(sandbox, control):
    control.create_fax(id="f1")
    response = requests.get(url(sandbox, user="someone"), headers=AUTH, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_user_id", "description": "Invalid user id given"}


def test_member_accounts_own_their_faxes():
    with SandboxServer(token=TOKEN, members=("m1",)) as server:
        server.client.create_fax(id="f1", user_id="m1")
        assert requests.get(url(server, user="m1"), headers=AUTH, timeout=5).status_code == 200
        assert requests.get(url(server, user="self"), headers=AUTH, timeout=5).status_code == 404


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"comment": 5}', b'{"comment": "x", "tags": []}', b'{"text": "x"}'],
)
def test_put_body_must_be_exactly_a_comment(sandbox, control, body):
    control.create_fax(id="f1")
    response = requests.put(url(sandbox), headers=AUTH, data=body, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_payload"
    assert control.fax("f1")["comment"]["text"] == ""


def test_put_sets_text_and_keeps_tags(sandbox, control):
    control.create_fax(id="f1", tags=["t1"])
    response = requests.put(url(sandbox), headers=AUTH, json={"comment": "new"}, timeout=5)
    assert (response.status_code, response.content) == (204, b"")
    assert requests.get(url(sandbox), headers=AUTH, timeout=5).json()["comment"] == {
        "tags": ["t1"],
        "text": "new",
    }


def test_unknown_routes_and_methods_answer_error_bodies(sandbox):
    assert requests.get(sandbox.base_url + "/nope", headers=AUTH, timeout=5).json()["error"] == "not_found"
    response = requests.post(url(sandbox), headers=AUTH, timeout=5)
    assert response.status_code == 405


def test_faults_are_consumed_in_order_and_logged(sandbox, control):
    control.create_fax(id="f1")
    control.add_fault(status=503, times=2, retry_after=3, method="GET")
    statuses = [requests.get(url(sandbox), headers=AUTH, timeout=5) for _ in range(3)]
    assert [r.status_code for r in statuses] == [503, 503, 200]
    assert statuses[0].headers["retry-after"] == "3"
    log = control.requests()
    assert [entry["status"] for entry in log] == [503, 503, 200]
    assert all(TOKEN not in str(entry) for entry in log)
    assert control.faults() == []


@pytest.mark.parametrize(
    "spec", [{"status": 9}, {"times": 0, "status": 500}, {"headers": {"a": 1}, "status": 500}, {}]
)
def test_bad_fault_specs_are_refused(control, spec):
    with pytest.raises(RuntimeError, match="HTTP 400"):
        control.add_fault(**spec)


def test_bad_fax_specs_are_refused(control):
    control.create_fax(id="dup")
    for spec in (
        {"id": "dup"},
        {"lifecycle": []},
        {"lifecycle": [{"seconds": 1}]},
        {"tags": "x"},
        {"user_id": "who"},
    ):
        with pytest.raises(RuntimeError, match="HTTP 400"):
            control.create_fax(**spec)


def test_poll_counted_lifecycle_moves_on_each_get(sandbox, control):
    control.create_fax(
        id="f1", lifecycle=[{"status": "submitted", "polls": 2}, {"status": "sending", "polls": 1}]
    )
    seen = [requests.get(url(sandbox), headers=AUTH, timeout=5) for _ in range(4)]
    assert [r.json().get("status") if r.status_code == 200 else r.status_code for r in seen] == [
        "submitted",
        "submitted",
        "sending",
        404,
    ]
    assert [c["status"] for c in seen[2].json()["status_changes"]] == ["submitted", "sending"]
    state = control.fax("f1")
    assert state["in_outbox"] is False
    assert state["left_at_ts"] is not None
    # A PUT does not count as a poll.
    control.create_fax(id="f2", lifecycle=[{"status": "submitted", "polls": 1}])
    requests.put(url(sandbox, "f2"), headers=AUTH, json={"comment": "x"}, timeout=5)
    assert control.fax("f2")["in_outbox"] is True


def test_a_request_delayed_across_a_reset_does_not_touch_the_new_state(sandbox, control):
    import threading

    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 1}])
    control.add_fault(delay=0.5)
    late = threading.Thread(target=lambda: requests.get(url(sandbox), headers=AUTH, timeout=5))
    late.start()
    time.sleep(0.2)  # the request is now inside its delay
    control.reset()
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 1}])
    late.join()
    assert control.fax("f1")["in_outbox"] is True  # the stale GET did not count as a look
    assert requests.get(url(sandbox), headers=AUTH, timeout=5).json()["status"] == "sending"


def test_lifecycle_units_cannot_be_mixed(control):
    with pytest.raises(RuntimeError, match="seconds or polls"):
        control.create_fax(
            lifecycle=[{"status": "submitted", "polls": 1}, {"status": "sending", "seconds": 1}]
        )
    with pytest.raises(RuntimeError, match="whole number"):
        control.create_fax(lifecycle=[{"status": "submitted", "polls": 0}])


def test_many_faxes_in_one_request(control):
    created = control.create_faxes([{"id": "a"}, {"id": "b", "tags": ["x"]}])
    assert [fax["id"] for fax in created] == ["a", "b"]
    assert created[0]["created_at"] == created[1]["created_at"]
    with pytest.raises(RuntimeError, match="HTTP 400"):
        control.create_faxes([{"id": "c"}, "not an object"])
