from __future__ import annotations

import json
import time

import pytest
import requests

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.spec import outbox_statuses
from airflow_provider_faxplus.sandbox.state import OUTBOX_STATUSES, Clock, Fax
from tests.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}


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


def test_api_answers_carry_one_date_header_from_the_sandbox_clock(sandbox, control):
    """What a client reads as the server's time (OutboxEventTrigger's first start) follows the sandbox
    clock, which control.advance moves: one Date header, not the machine's."""
    from airflow_provider_faxplus.protocol import server_time

    control.create_fax(id="f1")
    control.advance(7200)
    response = requests.get(url(sandbox), headers=AUTH, timeout=5)
    assert len(response.raw.headers.getlist("Date")) == 1
    stamp = server_time(response.headers)
    assert stamp is not None
    assert abs(stamp - (time.time() + 7200)) < 5


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


def test_request_log_keeps_answer_bodies_unless_told_not_to(sandbox, control):
    control.create_fax(id="f1")
    requests.get(url(sandbox), headers=AUTH, timeout=5)
    assert json.loads(control.requests(clear=True)[-1]["response_body"])["id"] == "f1"
    assert control.settings(log_response_bodies=False)["log_response_bodies"] is False
    response = requests.get(url(sandbox), headers=AUTH, timeout=5)
    assert response.json()["id"] == "f1"  # answered in full, only the log leaves the body out
    entry = control.requests(clear=True)[-1]  # cleared: the conformance check reads logged bodies
    assert (entry["status"], "response_body" in entry) == (200, False)
    with pytest.raises(RuntimeError, match="log_response_bodies must be true or false"):
        control.settings(log_response_bodies="no")


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
    response = requests.put(url(sandbox), headers=JSON_AUTH, data=body, timeout=5)
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


def test_a_held_answer_comes_after_the_request_took_effect(sandbox, control):
    import threading

    control.create_fax(id="f1", lifecycle=[{"status": "submitted", "polls": 100}])
    control.add_fault(hold_after=3, method="PUT")
    answers: list[int] = []
    put = threading.Thread(
        target=lambda: answers.append(
            requests.put(url(sandbox, "f1"), headers=AUTH, json={"comment": "held"}, timeout=60).status_code
        )
    )
    put.start()
    deadline = time.monotonic() + 20
    while control.fax("f1")["comment"]["text"] != "held":  # handled ...
        assert time.monotonic() < deadline, "the held PUT never took effect"
        time.sleep(0.05)
    assert put.is_alive()  # ... and its answer not sent yet
    assert answers == []
    [entry] = [e for e in control.requests() if e["method"] == "PUT"]
    assert entry["handled_status"] == 204
    put.join(timeout=30)
    assert answers == [204]
    with pytest.raises(RuntimeError, match="hold_after handles the request"):
        control.add_fault(hold_after=1, drop_after=True)


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


# Issue 11: the sandbox answers as the spec, HTTP and Fax.Plus would ------------------------------------


def test_405_lists_the_allowed_methods(sandbox, control):
    control.create_fax(id="f1")
    response = requests.post(url(sandbox), headers=AUTH, timeout=5)
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD, PUT"  # DELETE: cancel (issue 15)
    assert response.json()["error"] == "method_not_allowed"


def test_401_challenges_with_bearer(sandbox, control):
    control.create_fax(id="f1")
    missing = requests.get(url(sandbox), timeout=5)
    assert missing.headers["www-authenticate"] == "Bearer"  # RFC 6750 3.1: no error code without a token
    wrong = requests.put(url(sandbox), headers={"Authorization": "Bearer nope"}, json={}, timeout=5)
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_403_names_the_missing_scope():
    with SandboxServer(tokens={"reader": frozenset({"fax:fax:read"})}) as server:
        server.client.create_fax(id="f1")
        response = requests.put(url(server), headers={"Authorization": "Bearer reader"}, json={}, timeout=5)
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="fax:all:edit fax:fax:edit"'
    )


def test_a_put_without_a_body_modifies_nothing(sandbox, control):
    control.create_fax(id="f1", comment="kept")
    response = requests.put(url(sandbox), headers=AUTH, timeout=5)
    assert (response.status_code, response.content) == (204, b"")
    assert control.fax("f1")["comment"]["text"] == "kept"
    # Still a modification: the fax must exist.
    assert requests.put(url(sandbox, "nope"), headers=AUTH, timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"comment": "x"}'),
        ("application/x-www-form-urlencoded", b"comment=x"),
        ("application/x-www-form-urlencoded", b'{"comment": "x"}'),
        (None, b'{"comment": "x"}'),
    ],
)
def test_a_put_body_must_be_sent_as_json(sandbox, control, content_type, body):
    control.create_fax(id="f1")
    headers = dict(AUTH, **({"Content-Type": content_type} if content_type else {}))
    response = requests.put(url(sandbox), headers=headers, data=body, timeout=5)
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert control.fax("f1")["comment"]["text"] == ""


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]
)
def test_json_with_parameters_is_accepted(sandbox, control, content_type):
    control.create_fax(id="f1")
    headers = dict(AUTH, **{"Content-Type": content_type})
    assert requests.put(url(sandbox), headers=headers, data=b'{"comment": "x"}', timeout=5).status_code == 204
    assert control.fax("f1")["comment"]["text"] == "x"


def test_a_body_over_the_limit_is_refused_and_not_stored(sandbox, control):
    control.create_fax(id="f1")
    big = json.dumps({"comment": "x" * (5 * 1024 * 1024)})
    with requests.Session() as session:
        response = session.put(url(sandbox), headers=JSON_AUTH, data=big, timeout=10)
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"
        assert control.fax("f1")["comment"]["text"] == ""
        # The same connection answers the next request: the rest of the body was discarded, not parsed.
        assert len(session.get(url(sandbox), headers=AUTH, timeout=5).content) < 2000


def test_the_limit_holds_while_streaming_without_content_length(sandbox, control):
    control.create_fax(id="f1")
    mib = b"x" * (1024 * 1024)
    chunks = iter([b'{"comment": "', mib, mib, mib, b'"}'])  # chunked: no Content-Length to go by
    response = requests.put(url(sandbox), headers=JSON_AUTH, data=chunks, timeout=10)
    assert response.status_code == 413
    assert control.fax("f1")["comment"]["text"] == ""
    # Under the limit, chunked is fine.
    response = requests.put(
        url(sandbox), headers=JSON_AUTH, data=iter([b'{"comment": ', b'"ok"}']), timeout=5
    )
    assert response.status_code == 204


def test_a_smaller_limit_can_be_set():
    with SandboxServer(token=TOKEN, max_body_bytes=100) as server:
        server.client.create_fax(id="f1")
        body = json.dumps({"comment": "x" * 100})
        assert requests.put(url(server), headers=JSON_AUTH, data=body, timeout=5).status_code == 413


def test_auth_comes_before_reading_the_body(sandbox, control):
    control.create_fax(id="f1")
    big = b'{"comment": "' + b"x" * 5000 + b'"}'
    assert requests.put(url(sandbox), data=big, timeout=5).status_code == 401
    [entry] = control.requests()
    assert entry["body"] == ""  # the sandbox never read it


def test_a_trailing_slash_is_an_unknown_path(sandbox, control):
    control.create_fax(id="f1")
    for path in (url(sandbox) + "/", sandbox.base_url + "/accounts/self/outbox/"):
        response = requests.get(path, headers=AUTH, timeout=5, allow_redirects=False)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


def test_head_answers_like_get_but_moves_no_lifecycle(sandbox, control):
    control.create_fax(
        id="f1", lifecycle=[{"status": "submitted", "polls": 1}, {"status": "sending", "polls": 1}]
    )
    for _ in range(3):
        head = requests.head(url(sandbox), headers=AUTH, timeout=5)
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-type"] == "application/json"
    assert control.fax("f1")["status"] == "submitted"
    assert requests.get(url(sandbox), headers=AUTH, timeout=5).json()["status"] == "submitted"
    assert control.fax("f1")["status"] == "sending"
    assert requests.head(url(sandbox), timeout=5).status_code == 401


def test_lifecycle_statuses_are_the_specs():
    assert outbox_statuses() == OUTBOX_STATUSES


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"lifecycle": [{"status": "sent", "seconds": 1}]}, "'sent'"),
        ({"fields": {"status": "archived"}}, "'archived'"),
        ({"fields": {"surprise": 1}}, "'surprise'"),
        ({"fields": {"page_count": -1}}, "page_count"),
        ({"fields": {"retry": {"count": 9}}}, "retry.count"),
        ({"fields": {"status_changes": [{"at": "yesterday", "status": "submitted"}]}}, "status_changes.0.at"),
    ],
)
def test_control_api_refuses_faxes_outside_the_spec(control, spec, named):
    with pytest.raises(RuntimeError, match="HTTP 400") as info:
        control.create_fax(**spec)
    assert named in str(info.value)
    assert requests.get(control.root_url + "/_sandbox/faxes", timeout=5).json() == []


def test_a_created_fax_reports_itself_visible(control):
    assert control.create_fax(id="now")["visible"] is True
    assert control.create_fax(id="later", visible_after=5)["visible"] is False
    assert [fax["visible"] for fax in control.create_faxes([{"id": "a"}, {"id": "b"}])] == [True, True]


def test_reset_forgets_clock_advances(sandbox, control):
    control.advance(3600)
    control.reset()
    now = requests.post(control.root_url + "/_sandbox/clock", json={}, timeout=5).json()["now"]
    assert abs(now - time.time()) < 60  # back on real time, not an hour ahead
