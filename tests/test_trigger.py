"""OutboxFaxTrigger against the sandbox over real async HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

from airflow_provider_faxplus.triggers.outbox import POOL_MAX_CONNECTIONS, OutboxFaxTrigger
from tests.conftest import TOKEN

FOUR_STATES = [
    {"status": s, "seconds": 0.6} for s in ("submitted", "converting", "scheduled_for_sending", "sending")
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


def test_serialize_is_json_safe_and_never_holds_the_token(faxplus_conn):
    classpath, kwargs = make(outbox_fax_id="f1", waiting_statuses=["submitted"]).serialize()
    assert classpath == "airflow_provider_faxplus.triggers.outbox.OutboxFaxTrigger"
    text = json.dumps(kwargs)
    assert TOKEN not in text
    rebuilt = OutboxFaxTrigger(**json.loads(text))
    assert rebuilt.serialize() == (classpath, kwargs)


def test_waits_through_the_four_states_and_yields_one_event(faxplus_conn, control):
    control.create_fax(id="f1", lifecycle=FOUR_STATES)
    [event] = run(make(outbox_fax_id="f1"))
    left_at = control.fax("f1")["left_at_ts"]
    assert event["status"] == "success"
    result = event["result"]
    assert (result["reason"], result["last_status"], result["ever_seen"]) == ("not_found", "sending", True)
    detected = time.time()
    assert detected - left_at < 0.2 + 1.0  # within one poll interval (plus request time)
    statuses = {entry["status"] for entry in control.requests()}
    assert statuses == {200, 404}


def test_narrowed_waiting_statuses_stop_early(faxplus_conn, control):
    control.create_fax(id="f1", lifecycle=FOUR_STATES)
    [event] = run(make(outbox_fax_id="f1", waiting_statuses=["submitted", "converting"]))
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
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 60}])
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
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 4}])
    control.add_fault(status=429, retry_after="2")
    started = time.monotonic()
    [event] = run(make(outbox_fax_id="f1", poke_interval=0.1))
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
    assert "this trigger first looked" not in event["message"]  # watched from the start: the id is suspect


def test_never_seen_after_an_unwatched_gap_says_the_fax_may_have_left_unseen(faxplus_conn, control):
    """A trigger rebuilt long after the sensor's look (a triggerer restart) cannot know what an earlier
    trigger saw: its "never found" says so instead of blaming the id."""
    progress = {"started_at": time.time() - 120, "ever_seen": False}
    [event] = run(make(outbox_fax_id="gone", not_found_grace_period=60, progress=progress))
    assert (event["status"], event["kind"]) == ("error", "never_seen")
    assert "first looked 120 s after the sensor did" in event["message"]
    assert "may have been in the outbox and left meanwhile" in event["message"]
    assert len(control.requests()) == 1


def test_never_seen_can_count_as_left(faxplus_conn, control):
    [event] = run(make(outbox_fax_id="typo", not_found_grace_period=0.5, fail_if_never_seen=False))
    assert event["status"] == "success"
    assert event["result"]["ever_seen"] is False


def test_a_fax_that_appears_late_is_followed(faxplus_conn, control):
    control.create_fax(id="late", visible_after=1, lifecycle=[{"status": "submitted", "seconds": 2}])
    [event] = run(make(outbox_fax_id="late", not_found_grace_period=5))
    assert event["result"]["ever_seen"] is True
    assert control.requests()[0]["status"] == 404


def test_resumes_from_serialized_progress(faxplus_conn, control):
    """A trigger rebuilt from serialize() (a triggerer restart) remembers that the fax was seen."""
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 0.5}])
    first = make(outbox_fax_id="f1", not_found_grace_period=600)
    first.progress.ever_seen = True
    first.progress.last_status = "sending"
    time.sleep(0.6)
    _, kwargs = first.serialize()
    [event] = run(OutboxFaxTrigger(**kwargs))
    assert event["result"]["reason"] == "not_found"
    assert event["result"]["ever_seen"] is True


def test_bad_connection_is_an_error_event(sandbox, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(bogus=1))
    [event] = run(make(outbox_fax_id="f1"))
    assert (event["status"], event["kind"]) == ("error", "config")
    assert "bogus" in event["message"]


def test_triggers_of_one_connection_share_one_pool(faxplus_conn, control):
    count = 2 * POOL_MAX_CONNECTIONS
    for index in range(count):
        control.create_fax(id=f"f{index}", lifecycle=[{"status": "sending", "polls": 3}])

    async def many():
        return await asyncio.gather(*(first_event(make(outbox_fax_id=f"f{i}")) for i in range(count)))

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
