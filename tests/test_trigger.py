"""OutboxFaxTrigger against the sandbox over real async HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time

import pytest

from airflow_provider_faxplus.triggers.outbox import POOL_MAX_CONNECTIONS, OutboxFaxTrigger
from tests.conftest import TOKEN

# Counted in looks, not seconds: nothing here races the machine's speed.
FOUR_STATES = [
    {"status": s, "polls": 1} for s in ("submitted", "converting", "scheduled_for_sending", "sending")
]


async def first_event(trigger: OutboxFaxTrigger, timeout: float = 30):
    async def collect():
        events = []
        async for event in trigger.run():
            events.append(event.payload)
        return events

    return await asyncio.wait_for(collect(), timeout)


def run(trigger: OutboxFaxTrigger, timeout: float = 30):
    return asyncio.run(first_event(trigger, timeout))


def make(**kwargs) -> OutboxFaxTrigger:
    kwargs.setdefault("poke_interval", 0.2)
    return OutboxFaxTrigger(**kwargs)


def rebuilt(trigger: OutboxFaxTrigger, progress: dict | None = None) -> OutboxFaxTrigger:
    """The trigger as a triggerer rebuilds it: from the kwargs stored at deferral, through JSON."""
    _, kwargs = trigger.serialize()
    if progress is not None:
        kwargs["progress"] = progress
    return OutboxFaxTrigger(**json.loads(json.dumps(kwargs)))


def follow(trigger: OutboxFaxTrigger, timeout: float = 30) -> list[dict]:
    """Run the trigger to its end as the sensor does: a checkpoint defers again with its progress."""
    events = []
    while True:
        [event] = run(trigger, timeout)
        events.append(event)
        if event["status"] != "checkpoint":
            return events
        trigger = rebuilt(trigger, event["progress"])


def test_serialize_is_json_safe_and_never_holds_the_token(faxplus_conn):
    classpath, kwargs = make(outbox_fax_id="f1", waiting_statuses=["submitted"]).serialize()
    assert classpath == "airflow_provider_faxplus.triggers.outbox.OutboxFaxTrigger"
    text = json.dumps(kwargs)
    assert TOKEN not in text
    rebuilt = OutboxFaxTrigger(**json.loads(text))
    assert rebuilt.serialize() == (classpath, kwargs)


def test_waits_through_the_four_states_and_yields_one_event(faxplus_conn, control):
    control.create_fax(id="f1", lifecycle=FOUR_STATES)
    seen = {"started_at": time.time(), "ever_seen": True, "last_status": "submitted"}
    [event] = run(make(outbox_fax_id="f1", progress=seen))
    assert event["status"] == "success"
    result = event["result"]
    assert (result["reason"], result["last_status"], result["ever_seen"]) == ("not_found", "sending", True)
    # Detected at the first look after it left: every state once, then one 404.
    assert [entry["status"] for entry in control.requests()] == [200, 200, 200, 200, 404]


def test_the_first_sighting_is_a_checkpoint_and_the_rebuilt_trigger_remembers_it(faxplus_conn, control):
    """Airflow keeps only the kwargs stored at deferral: a trigger that sees the fax for the first time
    hands that over (the sensor defers again with it), so a rebuilt trigger knows the fax was seen."""
    control.create_fax(id="f1", lifecycle=[{"status": "submitted", "seconds": 3600}])
    first = make(outbox_fax_id="f1", not_found_grace_period=600)
    before = first.serialize()
    [checkpoint] = run(first)
    assert checkpoint["status"] == "checkpoint"
    assert checkpoint["progress"]["ever_seen"] is True
    assert checkpoint["progress"]["last_status"] == "submitted"
    assert checkpoint["deferred_at"] == before[1]["deferred_at"]
    assert [entry["status"] for entry in control.requests()] == [200]
    control.advance(3600)  # the fax leaves while nobody watches (a triggerer restart)
    # What Airflow does: it rebuilds the trigger from the kwargs of the latest deferral.
    [event] = run(rebuilt(first, checkpoint["progress"]))
    assert event["status"] == "success"
    assert (event["result"]["reason"], event["result"]["ever_seen"]) == ("not_found", True)
    assert event["result"]["last_status"] == "submitted"


def test_a_trigger_rebuilt_after_a_restart_is_not_told_what_its_predecessor_saw(faxplus_conn, control):
    """Airflow never calls serialize() on a running trigger: what it learned is not in any kwargs.
    (Which is why a first sighting ends the trigger with a checkpoint.)"""
    control.create_fax(id="f1", lifecycle=[{"status": "submitted", "seconds": 3600}])
    trigger = make(outbox_fax_id="f1")
    stored = trigger.serialize()  # at deferral, before any look
    run(trigger)
    assert trigger.progress.ever_seen is True
    assert OutboxFaxTrigger(**stored[1]).progress.ever_seen is False


def test_narrowed_waiting_statuses_stop_early(faxplus_conn, control):
    control.create_fax(id="f1", lifecycle=FOUR_STATES)
    events = follow(make(outbox_fax_id="f1", waiting_statuses=["submitted", "converting"]))
    assert [e["status"] for e in events] == ["checkpoint", "success"]
    event = events[-1]
    assert event["result"]["reason"] == "status"
    assert event["result"]["last_status"] == "scheduled_for_sending"


def test_401_sends_one_request_and_reports_auth(sandbox, control, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps({"conn_type": "faxplus", "host": sandbox.base_url, "password": "alohi_pat_revoked"}),
    )
    control.create_fax(id="f1")
    [event] = run(make(outbox_fax_id="f1"))
    assert event["status"] == "error"
    assert event["kind"] == "auth"
    assert "HTTP 401" in event["message"]
    assert "alohi_pat_revoked" not in event["message"]
    assert len(control.requests()) == 1


def test_503s_keep_it_waiting_spaced_by_backoff(faxplus_conn, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    control.add_fault(status=503, times=1000)
    trigger = make(outbox_fax_id="f1", poke_interval=0.5)

    async def run_for(seconds):
        task = asyncio.ensure_future(first_event(trigger, 60))
        await asyncio.sleep(seconds)
        assert not task.done()
        task.cancel()

    asyncio.run(run_for(3.0))
    log = control.requests()
    assert all(entry["status"] == 503 for entry in log)
    # Waits of at least poke_interval and growing: a hot loop would send hundreds.
    assert 2 <= len(log) <= 7
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(log)]
    assert min(gaps) >= 0.45


def test_retry_after_is_honoured(faxplus_conn, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 1}])
    control.add_fault(status=429, retry_after="2")
    started = time.monotonic()
    seen = {"started_at": time.time(), "ever_seen": True, "last_status": "sending"}
    [event] = run(make(outbox_fax_id="f1", poke_interval=0.1, progress=seen))
    assert event["status"] == "success"
    log = control.requests()
    assert log[1]["at"] - log[0]["at"] >= 1.9
    assert time.monotonic() - started >= 2


def test_never_seen_fails_after_the_grace_period(faxplus_conn, control):
    started = time.monotonic()
    [event] = run(make(outbox_fax_id="typo", not_found_grace_period=1))
    assert time.monotonic() - started >= 1
    assert (event["status"], event["kind"]) == ("error", "never_seen")
    assert "'typo' was never found" in event["message"]
    assert "no look of this task instance, in any try, saw it" in event["message"]


def test_unknown_earlier_looks_make_a_not_found_count_as_left(faxplus_conn, control):
    """A sensor that cannot know what earlier tries saw (Airflow 2.11, a retry) hands over ever_seen
    unknown: after the grace period a not-found is a fax that left, not a wrong id."""
    progress = {"started_at": time.time() - 120, "ever_seen": None, "unknown_because": "try 2 forgot try 1"}
    [event] = run(make(outbox_fax_id="gone", not_found_grace_period=60, progress=progress))
    assert event["status"] == "success"
    assert (event["result"]["reason"], event["result"]["ever_seen"]) == ("not_found", None)
    assert "because try 2 forgot try 1" in event["message"]
    assert len(control.requests()) == 1


def test_never_seen_can_count_as_left(faxplus_conn, control):
    [event] = run(make(outbox_fax_id="typo", not_found_grace_period=0.5, fail_if_never_seen=False))
    assert event["status"] == "success"
    assert event["result"]["ever_seen"] is False


def test_a_fax_that_appears_late_is_followed(faxplus_conn, control):
    control.create_fax(id="late", visible_after=1, lifecycle=[{"status": "submitted", "polls": 1}])
    events = follow(make(outbox_fax_id="late", not_found_grace_period=600))
    assert [e["status"] for e in events] == ["checkpoint", "success"]
    assert events[-1]["result"]["ever_seen"] is True
    assert control.requests()[0]["status"] == 404


def test_an_unknown_status_keeps_it_waiting_with_one_warning(faxplus_conn, control, caplog):
    caplog.set_level(logging.DEBUG, logger="airflow_provider_faxplus")
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 1}])
    archived = '{"id": "f1", "uid": "u1", "status": "archived"}'
    control.add_fault(status=200, body=archived, times=3, method="GET")
    seen = {"started_at": time.time(), "ever_seen": True, "last_status": "sending"}
    [event] = run(make(outbox_fax_id="f1", poke_interval=0.05, progress=seen))
    assert (event["status"], event["result"]["reason"]) == ("success", "not_found")
    assert [entry["status"] for entry in control.requests()] == [200, 200, 200, 200, 404]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "archived" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_exponential_backoff_doubles_the_interval_up_to_max_wait(faxplus_conn, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 4}])
    seen = {"started_at": time.time(), "ever_seen": True, "last_status": "sending"}
    trigger = make(
        outbox_fax_id="f1", poke_interval=0.1, exponential_backoff=True, max_wait=0.3, progress=seen
    )
    assert [trigger._next_interval(n) for n in (1, 2, 3, 4, 50)] == [0.1, 0.2, 0.3, 0.3, 0.3]
    [event] = run(trigger)
    assert event["status"] == "success"
    log = control.requests()
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(log)]
    assert len(gaps) == 4
    assert [gap >= floor for gap, floor in zip(gaps, [0.1, 0.2, 0.3, 0.3], strict=True)] == [True] * 4
    huge = make(outbox_fax_id="f1", poke_interval=60, exponential_backoff=True)
    assert huge._next_interval(10_000) == 60 * 2.0**30  # no overflow


def test_a_connection_only_the_worker_has_is_a_config_error_event(sandbox, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", raising=False)
    [event] = run(make(outbox_fax_id="f1", faxplus_conn_id="faxplus_worker_only"))
    assert (event["status"], event["kind"]) == ("error", "config")
    assert "'faxplus_worker_only' is not visible to the triggerer" in event["message"]
    assert "AIRFLOW_CONN_FAXPLUS_WORKER_ONLY" in event["message"]


def test_an_unexpected_exception_is_one_error_event_without_the_token(faxplus_conn, control, monkeypatch):
    import airflow_provider_faxplus.triggers.outbox as trigger_module

    def broken(*args, **kwargs):
        raise RuntimeError(f"parser bug near {TOKEN}")

    monkeypatch.setattr(trigger_module.protocol, "parse_get_response", broken)
    control.create_fax(id="f1")
    events = run(make(outbox_fax_id="f1"))
    assert len(events) == 1
    [event] = events
    assert (event["status"], event["kind"]) == ("error", "unexpected")
    assert "RuntimeError: parser bug near ***" in event["message"]
    assert TOKEN not in json.dumps(event)
    assert len(control.requests()) == 1


def test_a_verify_path_that_is_a_directory_never_escapes_run(sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(verify=str(tmp_path)))
    sandbox.client.create_fax(id="f1", lifecycle=[{"status": "sending", "polls": 1}])
    seen = {"started_at": time.time(), "ever_seen": True, "last_status": "sending"}
    events = run(make(outbox_fax_id="f1", progress=seen))
    assert len(events) == 1  # an error event, or success where a CA directory is supported


def test_cancellation_is_not_an_event(faxplus_conn, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    seen = {"started_at": time.time(), "ever_seen": True, "last_status": "sending"}
    trigger = make(outbox_fax_id="f1", progress=seen)

    async def cancel_it():
        task = asyncio.ensure_future(first_event(trigger))
        while not control.requests():
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())


def test_bad_connection_is_an_error_event(sandbox, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(bogus=1))
    [event] = run(make(outbox_fax_id="f1"))
    assert (event["status"], event["kind"]) == ("error", "config")
    assert "bogus" in event["message"]


def test_triggers_of_one_connection_share_one_pool(faxplus_conn, control):
    count = 2 * POOL_MAX_CONNECTIONS
    for index in range(count):
        control.create_fax(id=f"f{index}", lifecycle=[{"status": "sending", "polls": 3}])

    seen = {"started_at": time.time(), "ever_seen": True, "last_status": "sending"}

    async def many():
        # Each polls its own fax: the pool is the point here, not the shared list poll.
        triggers = [make(outbox_fax_id=f"f{i}", progress=seen, shared_poll=False) for i in range(count)]
        return await asyncio.gather(*(first_event(trigger) for trigger in triggers))

    events = asyncio.run(many())
    assert all(event["status"] == "success" for [event] in events)
    ports = {entry["client_port"] for entry in control.requests()}
    # One pool for all: separate clients would open at least one connection per trigger.
    assert len(ports) <= POOL_MAX_CONNECTIONS
    assert len(control.requests()) >= 2 * count


def test_environment_proxy_is_read_once_per_session_with_no_proxy_honoured(monkeypatch):
    from airflow_provider_faxplus.triggers.outbox import environment_proxy

    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert environment_proxy("https://restapi.fax.plus/v3") is None
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    assert environment_proxy("https://restapi.fax.plus/v3") == "http://proxy.internal:3128"
    assert environment_proxy("http://127.0.0.1:8080/v3") is None


def test_a_connection_of_another_type_is_a_config_error_event(sandbox, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps({"conn_type": "http", "host": sandbox.base_url, "password": TOKEN}),
    )
    [event] = run(make(outbox_fax_id="f1"))
    assert (event["status"], event["kind"]) == ("error", "config")
    assert "expected 'faxplus'" in event["message"]


def test_triggers_starting_together_read_the_connection_once(faxplus_conn, monkeypatch):
    """A triggerer restart starts many triggers at once: they share one in-flight connection read."""
    import airflow.providers.common.compat.connection as compat_connection

    real = compat_connection.get_async_connection
    calls = []

    async def counting(conn_id, *args, **kwargs):
        calls.append(conn_id)
        return await real(conn_id, *args, **kwargs)

    monkeypatch.setattr(compat_connection, "get_async_connection", counting)

    async def load_many():
        configs = await asyncio.gather(*(make(outbox_fax_id=f"f{i}")._load_config() for i in range(20)))
        later = await make(outbox_fax_id="later")._load_config()
        return configs, later

    configs, later = asyncio.run(load_many())
    assert len({config.base_url for config in configs}) == 1
    assert later.base_url == configs[0].base_url
    assert calls == ["faxplus_default", "faxplus_default"]  # one for the 20 together, one afterwards


def test_taking_only_the_first_event_as_dags_test_does_logs_no_error(faxplus_conn, control, caplog):
    """Finding 15: Airflow's in-process runner (``airflow dags test``) takes the first event with
    ``anext(trigger.run())`` and lets ``asyncio.run`` close the generators at shutdown; nothing of ours
    may still be open then (it logged "aclose(): asynchronous generator is already running")."""
    import gc

    fax_id = control.create_fax(lifecycle=[{"status": "submitted", "polls": 1}])["id"]
    for shared in (True, False):
        trigger = OutboxFaxTrigger(
            outbox_fax_id=fax_id,
            poke_interval=0.1,
            progress={"started_at": time.time(), "ever_seen": True, "last_status": "submitted"},
            shared_poll=shared,
        )

        async def first_event(trigger: OutboxFaxTrigger = trigger) -> object:
            return await anext(trigger.run(), None)

        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            event = asyncio.run(first_event())
            gc.collect()
        assert event is not None
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_no_ssl_context_is_built_on_the_event_loop_for_plain_http_and_one_per_ca_setting(
    faxplus_conn, control, monkeypatch, tmp_path
):
    """Finding 10: ``ssl.create_default_context()`` loads the CA store (~25 ms, on the triggerer's loop);
    none for plain http to the sandbox, one per CA setting for https, not one per read or session."""
    import ssl

    from airflow_provider_faxplus.config import TlsSettings
    from airflow_provider_faxplus.triggers import session

    built: list[object] = []
    real = ssl.create_default_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        built.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    seen = {"started_at": time.time(), "ever_seen": True, "last_status": "submitted"}
    fax_id = control.create_fax(lifecycle=[{"status": "submitted", "polls": 1}])["id"]
    # Each run: its own event loop, connection read and session.
    events = [run(make(outbox_fax_id=fax_id, progress=seen))[0] for _ in range(2)]
    assert [event["status"] for event in events] == ["success"] * 2, events
    assert built == []
    tls = TlsSettings(True, None, "the system's")
    assert session._ssl_context(tls) is session._ssl_context(tls)
    assert len(built) == 1
