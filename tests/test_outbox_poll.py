"""Shared outbox polling: one *List outgoing faxes* per tick for the triggers of one account.

Against the sandbox over real HTTP, counting requests. A list answer that shows a fax counts as a poll
of it (as a GET does), so poll-counted lifecycles drive every scenario: nothing races a wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Iterator

import pytest

from airflow_provider_faxplus.exceptions import FaxPlusResponseError, FaxPlusServerError
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger
from airflow_provider_faxplus.triggers.outbox_poll import AccountPoll, OutboxSnapshot, account_poll
from tests.conftest import TOKEN

MEMBER = "7e1c0ffee0ddba11"
# Shown by three answers, then gone.
THREE_LOOKS = [{"status": "submitted", "polls": 2}, {"status": "sending", "polls": 1}]


def seen(**extra: object) -> dict:
    """Progress as the sensor hands it over after its first look saw the fax: no checkpoint first."""
    return {"started_at": time.time(), "ever_seen": True, "last_status": "submitted", **extra}


async def collect(trigger: OutboxFaxTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def run_all(triggers: list[OutboxFaxTrigger], timeout: float = 60) -> list[dict]:
    async def scenario():
        return await asyncio.gather(*(collect(trigger) for trigger in triggers))

    results = asyncio.run(asyncio.wait_for(scenario(), timeout))
    assert all(len(events) == 1 for events in results), results
    return [events[0] for events in results]


def lists(control, user: str = "self") -> list[dict]:
    return [
        e for e in control.requests() if e["method"] == "GET" and e["path"] == f"/v3/accounts/{user}/outbox"
    ]


def gets(control, fax_id: str) -> list[dict]:
    return [e for e in control.requests() if e["method"] == "GET" and e["path"].endswith(f"/outbox/{fax_id}")]


def trigger(fax_id: str, interval: float = 0.2, **kwargs: object) -> OutboxFaxTrigger:
    kwargs.setdefault("progress", seen())
    return OutboxFaxTrigger(outbox_fax_id=fax_id, poke_interval=interval, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def list_sends(monkeypatch) -> list[float]:
    """When the poll sent each list request (``time.monotonic()``, client side, as the poll schedules
    by it): the sandbox's arrival times jitter on a loaded machine and measure the machine, not the poll."""
    sent: list[float] = []
    original = AccountPoll._list

    async def recording(self: AccountPoll, started_at: float) -> OutboxSnapshot:
        sent.append(started_at)
        return await original(self, started_at)

    monkeypatch.setattr(AccountPoll, "_list", recording)
    return sent


def test_n_triggers_of_one_account_share_one_list_request_per_tick(faxplus_conn, control, list_sends):
    count = 20
    for index in range(count):
        control.create_fax(id=f"f{index}", lifecycle=THREE_LOOKS)
    events = run_all([trigger(f"f{index}") for index in range(count)])
    assert [e["status"] for e in events] == ["success"] * count
    assert {e["result"]["reason"] for e in events} == {"not_found"}
    # The first trigger, alone for an instant, polls its fax with a GET; then the twenty share one list
    # per tick: f0 leaves after that GET and two lists, the others after three lists, and the fourth
    # tick finds them gone.
    listed = lists(control)
    assert len(listed) == 4, [e["at"] for e in listed]
    assert len(list_sends) == 4
    assert all(b - a > 0.15 for a, b in itertools.pairwise(list_sends)), list_sends
    # Each absence is confirmed by exactly one GET (the 404 that decides); f0 also had its first GET.
    assert [len(gets(control, f"f{index}")) for index in range(count)] == [2] + [1] * (count - 1)
    assert all(e["status"] == 404 for index in range(1, count) for e in gets(control, f"f{index}"))


def test_shared_poll_false_is_one_get_per_look(faxplus_conn, control):
    for index in range(3):
        control.create_fax(id=f"f{index}", lifecycle=THREE_LOOKS)
    events = run_all([trigger(f"f{index}", shared_poll=False) for index in range(3)])
    assert [e["status"] for e in events] == ["success"] * 3
    assert lists(control) == []
    assert [len(gets(control, f"f{index}")) for index in range(3)] == [4, 4, 4]


@pytest.fixture(scope="module")
def corporate() -> Iterator[SandboxServer]:
    with SandboxServer(token=TOKEN, members=(MEMBER,)) as server:
        yield server


def test_two_accounts_poll_one_list_each_per_tick(corporate, monkeypatch):
    control = corporate.client
    assert control is not None
    control.reset()
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", corporate.connection_json(initial_backoff=0.05))
    for index in range(4):
        control.create_fax(id=f"own{index}", lifecycle=THREE_LOOKS)
        control.create_fax(id=f"member{index}", user_id=MEMBER, lifecycle=THREE_LOOKS)
    triggers = [trigger(f"own{index}") for index in range(4)]
    triggers += [trigger(f"member{index}", user_id=MEMBER) for index in range(4)]
    events = run_all(triggers)
    assert [e["status"] for e in events] == ["success"] * 8
    own, member = lists(control, "self"), lists(control, MEMBER)
    assert (len(own), len(member)) == (4, 4)
    assert all(e["status"] == 200 for e in own + member)


def test_different_intervals_each_get_an_answer_no_older_than_their_interval(faxplus_conn, control):
    """Asked directly: a slow caller rides on the fast caller's ticks; the poll never sends more than one
    list request per the shortest interval of its callers."""
    config = FaxPlusHook().config

    async def scenario():
        async with account_poll(config, "self") as poll:

            async def caller(interval: float, looks: int) -> list[tuple[float, float]]:
                out, due = [], time.monotonic()
                for _ in range(looks):
                    snapshot = await poll.snapshot(due=due, interval=interval)
                    out.append((due, snapshot.started_at))
                    due = snapshot.started_at + interval
                return out

            fast, slow = await asyncio.gather(caller(0.2, 8), caller(0.5, 3))
            return fast, slow, poll.requests_sent

    fast, slow, sent = asyncio.run(asyncio.wait_for(scenario(), 60))
    for interval, answers in ((0.2, fast), (0.5, slow)):
        # Each answer's request was sent no earlier than its due (less the tolerance, a tenth).
        assert all(started >= due - interval / 10 for due, started in answers), (interval, answers)
    listed = lists(control)
    assert len(listed) == sent
    assert 8 <= sent <= 9  # the fast caller's ticks, with the slow one's answers among them
    # Spacing by when the poll sent each request (monotonic, client side): the sandbox's arrival times
    # jitter on a loaded machine (a late request then a punctual one) and measure the machine, not the poll.
    starts = sorted({started for _, started in fast} | {started for _, started in slow})
    assert all(b - a > 0.15 for a, b in itertools.pairwise(starts)), starts
    # The slow caller sent nothing of its own: its answers are the fast caller's requests.
    assert {started for _, started in slow} <= {started for _, started in fast}


def test_a_fax_absent_and_never_seen_waits_without_requests_within_the_grace_period(faxplus_conn, control):
    control.create_fax(id="stays", lifecycle=[{"status": "submitted", "polls": 5}])
    fresh = {"started_at": time.time(), "ever_seen": False}
    waiting = trigger("typo", not_found_grace_period=3600, progress=fresh)
    # The fax that stays ends after five lists; the absent one has waited through all of them.

    async def scenario():
        # The first holder of a poll polls alone (a GET): the fax that stays comes first.
        stays = asyncio.ensure_future(collect(trigger("stays")))
        absent = asyncio.ensure_future(collect(waiting))
        events = await stays
        assert not absent.done()
        absent.cancel()
        return events

    [event] = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert event["status"] == "success"
    assert len(lists(control)) >= 4
    assert gets(control, "typo") == []  # within the grace period, absence is no reason to ask


def test_absent_and_never_seen_after_the_grace_period_is_confirmed_by_one_get(faxplus_conn, control):
    control.create_fax(id="stays", lifecycle=[{"status": "submitted", "polls": 3}])
    past = {"started_at": time.time() - 120, "ever_seen": False}
    events = run_all([trigger("stays"), trigger("typo", not_found_grace_period=60, progress=past)])
    assert events[1]["kind"] == "never_seen"
    [confirm] = gets(control, "typo")
    assert confirm["status"] == 404


@pytest.mark.parametrize("status", [403, 404])
def test_a_refused_list_falls_back_to_gets_with_one_warning(faxplus_conn, control, caplog, status):
    caplog.set_level(logging.INFO, logger="airflow_provider_faxplus")
    control.add_fault(status=status, method="GET", path_endswith="/outbox", times=100)
    for index in range(3):
        control.create_fax(id=f"f{index}", lifecycle=THREE_LOOKS)
    events = run_all([trigger(f"f{index}") for index in range(3)])
    assert [e["status"] for e in events] == ["success"] * 3
    [refused] = lists(control)
    assert refused["status"] == status
    warnings = [r.getMessage() for r in caplog.records if "refused List outgoing faxes" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"HTTP {status}" in warnings[0]
    assert "one request per waiting fax per interval" in warnings[0]
    assert TOKEN not in caplog.text
    # From then on each fax is polled with GETs until its 404.
    assert all(gets(control, f"f{index}")[-1]["status"] == 404 for index in range(3))


def test_a_list_503_makes_every_waiter_back_off(faxplus_conn, control):
    for index in range(3):
        control.create_fax(id=f"f{index}", lifecycle=THREE_LOOKS)
    control.add_fault(status=503, method="GET", path_endswith="/outbox", times=1)
    events = run_all([trigger(f"f{index}", interval=0.3) for index in range(3)])
    assert [e["status"] for e in events] == ["success"] * 3
    listed = lists(control)
    assert [e["status"] for e in listed][:2] == [503, 200], [e["status"] for e in listed]
    # One failed request for all: every waiter backed off about its poke interval (loose: arrival times).
    assert listed[1]["at"] - listed[0]["at"] >= 0.2


def test_a_list_401_with_oauth_refreshes_once_for_every_waiter(sandbox, control, monkeypatch):
    client_id, secret = "APIK-poll-client", "csecret-POLL-SENTINEL"
    control.oauth_settings(clients={client_id: secret})
    refresh = control.mint_refresh_token(client_id)
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        sandbox.oauth_connection_json(client_id, secret, refresh, initial_backoff=0.05),
    )
    for index in range(3):
        control.create_fax(id=f"f{index}", lifecycle=[{"status": "submitted", "polls": 4}])
    state = sandbox.state

    async def scenario():
        waiting = asyncio.gather(*(collect(trigger(f"f{index}")) for index in range(3)))
        while min(fax.polls_seen for fax in list(state.faxes.values())) < 2:
            await asyncio.sleep(0.02)
        state.clock.advance(3600 * 24)  # the access token expires on the server's clock
        return await waiting

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [events[0]["status"] for events in results] == ["success"] * 3
    assert [entry["status"] for entry in control.token_requests()] == [200, 200]
    assert [e["status"] for e in lists(control)].count(401) == 1


def test_a_list_record_that_does_not_parse_fails_only_its_own_fax(faxplus_conn, control, caplog):
    """The record without an id is skipped with a WARNING naming it; the one that is no Outbox fails the
    trigger waiting on it, naming it; the other trigger goes on."""
    control.create_fax(id="good", lifecycle=[{"status": "submitted", "polls": 2}])
    body = json.dumps(
        {
            "records": [
                {"id": "good", "uid": "u", "status": "submitted"},
                {"uid": "no-id", "status": "sending"},
                {"id": "broken", "uid": 7},
            ]
        }
    )
    # Two answers for the poll asked directly, one for the triggers' first shared tick.
    control.add_fault(status=200, method="GET", path_endswith="/outbox", body=body, times=3)
    caplog.set_level(logging.DEBUG, logger="airflow_provider_faxplus")
    config = FaxPlusHook().config

    async def scenario():
        async with account_poll(config, "self") as poll:
            snapshot = await poll.snapshot(due=time.monotonic(), interval=0.2)
            again = await poll.snapshot(due=snapshot.started_at + 0.2, interval=0.2)
            return snapshot, again

    snapshot, _again = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert sorted(snapshot.records) == ["broken", "good"]
    assert snapshot.records["good"].status == "submitted"
    with pytest.raises(FaxPlusResponseError, match=r"record #2 \(id 'broken'\) is not an Outbox"):
        snapshot.records["broken"]
    skipped = [r for r in caplog.records if "without a string id" in r.getMessage()]
    assert [r.levelno for r in skipped] == [logging.WARNING, logging.DEBUG]  # once per poll
    assert "record #1" in skipped[0].getMessage()

    events = run_all([trigger("good"), trigger("broken")], timeout=30)
    assert events[1]["status"] == "error"
    assert "'broken'" in events[1]["message"]
    assert "is not an Outbox" in events[1]["message"]


def test_a_failure_reaches_every_waiter_of_the_request(faxplus_conn, control):
    control.add_fault(status=500, method="GET", path_endswith="/outbox")
    config = FaxPlusHook().config

    async def scenario():
        async with account_poll(config, "self") as poll:
            now = time.monotonic()
            return await asyncio.gather(
                *(poll.snapshot(due=now, interval=1.0) for _ in range(5)), return_exceptions=True
            )

    outcomes = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert all(isinstance(outcome, FaxPlusServerError) for outcome in outcomes), outcomes
    assert len(lists(control)) == 1


# Decoding the list a chunk at a time -------------------------------------------------------------------


def _list_call():
    from airflow_provider_faxplus import send
    from airflow_provider_faxplus.config import FaxPlusConfig

    config = FaxPlusConfig(base_url="https://restapi.fax.plus/v3", token="t")
    return send, config, send.list_outbox_call(config, "self")


@pytest.mark.parametrize(
    "body",
    [
        '{"records": []}',
        ' \n{ "records" : [ ] } \n',
        '{"records": [{"id": "a", "to": ["+1"], "x": {"records": [1]}}, 3, null, "s", [1, 2]]}',
        '{"next": null, "records": [{"id": "a"}], "more": {"a": [1, {"b": "]"}]}}',
        '{"records":[{"id":"a\\"]}"},{"id":"\\u00e9"}]}',
    ],
)
def test_the_chunked_decoder_reads_what_json_loads_reads(body):
    send, config, call = _list_call()
    assert list(send.iter_list_records(config, call, 200, {}, body.encode())) == json.loads(body)["records"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{}", "no 'records' list"),
        (b'{"records": {"id": "a"}}', "no 'records' list"),
        (b'{"records": [{"id": "a"}] } trailing', "not JSON"),
        (b'{"records": [{"id": "a"} {"id": "b"}]}', "not JSON"),
        (b'{"records": [{"id": "a"},]}', "not JSON"),
        (b'{"records": [{"id": "a"}]', "not JSON"),
        (b'{"a": 1 "records": []}', "not JSON"),
    ],
)
def test_the_chunked_decoder_refuses_what_is_no_list_answer(body, message):
    send, config, call = _list_call()
    with pytest.raises(FaxPlusResponseError, match=message):
        list(send.iter_list_records(config, call, 200, {}, body))


def test_a_large_list_lets_the_event_loop_run_while_it_is_decoded(faxplus_conn, control):
    """10,000 records: other tasks run between chunks of records (counted turns, not timed)."""
    from airflow_provider_faxplus.triggers.outbox_poll import DECODE_CHUNK

    record = {"id": "", "uid": "u", "status": "sending", "to": ["+16699990001"], "comment": {"tags": ["t"]}}
    body = json.dumps({"records": [{**record, "id": f"fax{i:05d}"} for i in range(10_000)]})
    control.add_fault(status=200, method="GET", path_endswith="/outbox", body=body)
    config = FaxPlusHook().config

    async def scenario():
        turns = 0
        done = False

        async def ticker():
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        ticking = asyncio.ensure_future(ticker())
        async with account_poll(config, "self") as poll:
            snapshot = await poll.snapshot(due=time.monotonic(), interval=1.0)
        done = True
        await ticking
        return snapshot, turns

    snapshot, turns = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert len(snapshot.records) == 10_000
    assert snapshot.records["fax09999"].to == ("+16699990001",)
    assert turns >= 10_000 // DECODE_CHUNK


def test_one_poll_per_identity_and_user():
    from airflow_provider_faxplus.config import FaxPlusConfig

    base = "https://restapi.fax.plus/v3"
    pat = FaxPlusConfig(base_url=base, token="pat-1")
    oauth_a = FaxPlusConfig(base_url=base, client_id="c", client_secret="s", refresh_token="rt-a")
    oauth_b = FaxPlusConfig(base_url=base, client_id="c", client_secret="s", refresh_token="rt-b")

    async def scenario():
        async with (
            account_poll(pat, "self") as first,
            account_poll(pat, "self") as again,
            account_poll(pat, MEMBER) as member,
            account_poll(oauth_a, "self") as a,
            account_poll(oauth_b, "self") as b,
        ):
            assert first is again
            assert first.holders == 2
            assert len({id(first), id(member), id(a), id(b)}) == 4
            assert a.lease is b.lease  # one pool for the connection, two accounts' answers
        return first.holders

    assert asyncio.run(scenario()) == 0


def test_a_malformed_list_answer_makes_every_sensor_back_off_not_fail(faxplus_conn, control):
    """Finding 3: an HTML 200 from a proxy is a transient failure of the poll, for all its waiters."""
    fax_ids = [control.create_fax(lifecycle=THREE_LOOKS)["id"] for _ in range(3)]
    control.add_fault(status=200, method="GET", path_endswith="/outbox", body="<html>proxy</html>", times=1)
    events = run_all([trigger(fax_id) for fax_id in fax_ids])
    assert [event["status"] for event in events] == ["success"] * 3, events
    assert lists(control)[0]["status"] == 200  # the fault's answer came as a 200


def test_shared_work_logs_under_no_trigger(faxplus_conn, control, monkeypatch):
    """Finding 12: the poll driver and the connection read serve every trigger; they must not run in the
    context of the trigger that happened to start them (Airflow routes a trigger's log lines by context
    variables: structlog's on Airflow 3, its own on 2.11), so a probe variable set by that trigger is
    unset there."""
    import contextvars

    from airflow_provider_faxplus.triggers import outbox_poll, session

    probe: contextvars.ContextVar[int] = contextvars.ContextVar("faxplus_test_trigger_id")
    seen: dict[str, int | None] = {}
    real_list, real_read = outbox_poll.AccountPoll._list, session._read_connection

    async def list_(self, started_at):
        seen.setdefault("poll", probe.get(None))
        return await real_list(self, started_at)

    async def read(conn_id):
        seen.setdefault("connection", probe.get(None))
        return await real_read(conn_id)

    monkeypatch.setattr(outbox_poll.AccountPoll, "_list", list_)
    monkeypatch.setattr(session, "_read_connection", read)
    fax_ids = [control.create_fax(lifecycle=THREE_LOOKS)["id"] for _ in range(2)]

    async def as_trigger(number: int, trigger_: OutboxFaxTrigger) -> list[dict]:
        probe.set(number)
        return await collect(trigger_)

    async def scenario():
        return await asyncio.gather(*(as_trigger(n, trigger(fax_id)) for n, fax_id in enumerate(fax_ids)))

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [events[0]["status"] for events in results] == ["success"] * 2
    assert seen == {"poll": None, "connection": None}


def test_no_two_trigger_modules_import_each_other():
    """The shared session, its lease and the exchange live in ``triggers.session``, which imports no
    trigger module; ``outbox_poll`` and ``outbox_events`` never import ``outbox``."""
    import ast
    from pathlib import Path

    import airflow_provider_faxplus.triggers as package

    folder = Path(package.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith(package.__name__ + ".")
            ):
                found.add(node.module.rsplit(".", 1)[1])
        imports[path.stem] = found
    assert imports["session"] == set()
    assert imports["acked_cursor"] == set()  # reusable by any event trigger, knows none of them
    assert "outbox" not in imports["outbox_poll"] | imports["outbox_events"]
    for module, used in imports.items():
        for other in used:
            assert module not in imports.get(other, set()), (module, other)
