"""Every fault of tests/fault_matrix.py through every component, over real HTTP to the sandbox."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred

from airflow_provider_faxplus.exceptions import FaxPlusError
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.operators.outbox import UpdateOutboxCommentOperator
from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor
from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger
from tests.conftest import TOKEN
from tests.fault_matrix import EXTRA, FAULTS, FAX_ID, MAX_ATTEMPTS, Fault, render

ROOT = Path(__file__).resolve().parent.parent
OPERATION = {"GET": "Get outgoing fax", "PUT": "Modify an outgoing fax"}
POKE_INTERVAL = 0.05
IN_OUTBOX = [{"status": "submitted", "seconds": 600}]

HOOK_CASES = [
    pytest.param(fault, method, id=f"{fault.key}-{method}")
    for fault in FAULTS
    for method in ("GET", "PUT")
    if method == "GET" or fault.put_applies
]
ALL = [pytest.param(fault, id=fault.key) for fault in FAULTS]
WITH_PUT = [pytest.param(fault, id=fault.key) for fault in FAULTS if fault.put_applies]
INJECTED = [pytest.param(fault, id=fault.key) for fault in FAULTS if fault.inject is not None]


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and no one else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def connect(sandbox, dead_port, monkeypatch):
    """Point ``faxplus_default`` at the sandbox, or at the dead port for the "refused" fault."""

    def use(fault: Fault) -> None:
        value = sandbox.connection_json(**EXTRA)
        if fault.inject is None:
            value = value.replace(sandbox.base_url, f"http://127.0.0.1:{dead_port}/v3")
        monkeypatch.setenv("AIRFLOW_CONN_FAXPLUS_DEFAULT", value)

    return use


def inject(control, fault: Fault, method: str, times: int, spec: dict | None = None) -> None:
    if fault.inject is not None:
        control.add_fault(**(spec or fault.fault_spec()), method=method, times=times)


def burst(fault: Fault) -> int:
    """Enough of a transient fault to spend one call's whole retry budget."""
    return MAX_ATTEMPTS if fault.transient else 1


def assert_names_the_call(message: str, fault: Fault, method: str) -> None:
    for part in (OPERATION[method], repr(FAX_ID), *fault.says):
        assert part in message, f"{part!r} missing from: {message}"
    assert TOKEN not in message


def call(hook: FaxPlusHook, method: str) -> object:
    if method == "GET":
        return hook.get_outbox_fax(FAX_ID)
    return hook.update_outbox_fax(FAX_ID, comment="matrix")


def retry_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Fax.Plus request attempt" in r.getMessage()]


# Hook ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "method"), HOOK_CASES)
def test_hook(fault, method, connect, control, caplog):
    connect(fault)
    control.create_fax(id=FAX_ID, lifecycle=IN_OUTBOX)
    error = fault.get_error if method == "GET" else fault.put_error
    hook = FaxPlusHook()
    caplog.set_level(logging.WARNING, logger="airflow_provider_faxplus")
    if fault.transient and fault.inject is not None:
        # A burst within the budget is ridden out; every retry is a logged WARNING.
        inject(control, fault, method, MAX_ATTEMPTS - 1)
        call(hook, method)
        assert len(retry_warnings(caplog)) == MAX_ATTEMPTS - 1
        assert len(control.requests(clear=True)) == MAX_ATTEMPTS
        caplog.clear()
    inject(control, fault, method, burst(fault))
    if error is None:
        result = call(hook, method)
        if method == "GET":
            assert result.id == FAX_ID
        assert len(control.requests()) == 1
        assert retry_warnings(caplog) == []
        return
    with pytest.raises(error) as info:
        call(hook, method)
    message = str(info.value)
    assert_names_the_call(message, fault, method)
    sent = len(control.requests())
    if fault.transient:
        assert f"gave up after {MAX_ATTEMPTS} attempt(s)" in message
        assert len(retry_warnings(caplog)) == MAX_ATTEMPTS - 1
        assert sent == (0 if fault.inject is None else MAX_ATTEMPTS)
    else:
        assert sent == 1, "a non-transient fault must not be retried"
        assert retry_warnings(caplog) == []
    hook.close()


def test_put_answered_with_a_2xx_body_succeeds_and_says_so(connect, control, caplog):
    """Any 2xx is success for *Modify an outgoing fax*; a body the spec does not promise is logged."""
    fault = next(f for f in FAULTS if f.key == "html-200")
    connect(fault)
    control.create_fax(id=FAX_ID, lifecycle=IN_OUTBOX)
    inject(control, fault, "PUT", 1)
    caplog.set_level(logging.WARNING, logger="airflow_provider_faxplus")
    FaxPlusHook().update_outbox_fax(FAX_ID, comment="matrix")
    assert any("the spec says 204" in r.getMessage() for r in caplog.records)


def test_204_with_a_body_leaves_the_connection_usable(connect, control):
    fault = next(f for f in FAULTS if f.key == "204-with-body")
    connect(fault)
    control.create_fax(id=FAX_ID, lifecycle=IN_OUTBOX)
    inject(control, fault, "PUT", 1)
    hook = FaxPlusHook()
    hook.update_outbox_fax(FAX_ID, comment="matrix")
    assert hook.get_outbox_fax(FAX_ID).id == FAX_ID
    statuses = [entry["status"] for entry in control.requests()]
    # The stray bytes go with the 204 when they arrive together; when they arrive after it, the next
    # answer on that connection reads as broken HTTP and that call is retried once.
    assert statuses in ([204, 200], [204, 200, 200]), statuses
    hook.close()


# Sensor: poke and the deferrable first look ----------------------------------------------------


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
@pytest.mark.parametrize("fault", ALL)
def test_sensor(fault, deferrable, connect, control):
    connect(fault)
    control.create_fax(id=FAX_ID, lifecycle=IN_OUTBOX)
    inject(control, fault, "GET", burst(fault))
    task = OutboxFaxSensor(
        task_id="wait", outbox_fax_id=FAX_ID, poke_interval=POKE_INTERVAL, timeout=30, deferrable=deferrable
    )
    look = task.execute if deferrable else task.poke
    if fault.sensor in ("waits", "grace", "unknown"):
        if deferrable:
            with pytest.raises(TaskDeferred):
                look({})
        else:
            assert look({}) is False
        if fault.transient and fault.inject is not None:
            # The fault is over: the next poke sees the fax again.
            assert task.poke({}) is False
            assert control.requests()[-1]["status"] == 200
    elif fault.sensor == "left":
        result = look({})
        xcom = result if deferrable else result.xcom_value
        assert (xcom["reason"], xcom["last_status"], xcom["ever_seen"]) == ("status", "archived", True)
    elif fault.sensor == "fails":
        with pytest.raises(AirflowFailException) as info:
            look({})
        assert_names_the_call(str(info.value), fault, "GET")
        assert len(control.requests()) == 1
    else:
        assert fault.sensor == "raises"
        with pytest.raises(FaxPlusError) as info:
            look({})
        assert_names_the_call(str(info.value), fault, "GET")
        assert len(control.requests()) == 1


# Trigger ---------------------------------------------------------------------------------------


def run_trigger(timeout: float = 30) -> list[dict]:
    # Handed over by a sensor that saw the fax: one good answer ("sending"), then it leaves (404).
    trigger = OutboxFaxTrigger(
        outbox_fax_id=FAX_ID,
        poke_interval=POKE_INTERVAL,
        progress={"started_at": time.time(), "ever_seen": True, "last_status": "sending"},
    )

    async def collect() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout))


@pytest.mark.parametrize("fault", INJECTED)
def test_trigger(fault, connect, control):
    connect(fault)
    spec = fault.fault_spec()
    # A fault that only delays still reaches the fax, which counts the GET as a look at it.
    passes_through = "status" not in spec and not spec.get("drop")
    looks = 1 + (burst(fault) if passes_through else 0)
    control.create_fax(id=FAX_ID, lifecycle=[{"status": "sending", "polls": looks}])
    inject(control, fault, "GET", burst(fault), spec)
    [event] = run_trigger()
    log = control.requests()
    if fault.key == "204-with-body" and event["status"] == "success":
        # When the stray body arrives with the headers, aiohttp rejects the whole answer as broken
        # HTTP (a transport error, retried) instead of seeing a 204 (an error event): both are fine.
        assert [entry["status"] for entry in log] == [204, 200, 404]
        return
    if fault.trigger in ("waits", "unknown"):
        assert event["status"] == "success"
        assert event["result"]["reason"] == "not_found"
        # Exactly the faults, the one good answer and the 404: no request wasted, none spun.
        assert len(log) == burst(fault) + 2
        gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(log)]
        assert min(gaps) >= POKE_INTERVAL
        retry_after = spec.get("retry_after")
        if isinstance(retry_after, str) and "GMT" in retry_after:
            # An HTTP-date, fixed when the fault was injected: no retry before that second.
            assert log[1]["at"] >= email.utils.parsedate_to_datetime(retry_after).timestamp() - 0.05
        else:
            assert gaps[0] >= fault.min_gap  # Retry-After in seconds, counted from the answer
    elif fault.trigger == "left":
        assert event["status"] == "success"
        assert len(log) == 1
        if fault.key == "unknown-status":
            assert (event["result"]["reason"], event["result"]["last_status"]) == ("status", "archived")
        else:
            assert (event["result"]["reason"], event["result"]["ever_seen"]) == ("not_found", True)
    else:
        kind = fault.trigger.partition(":")[2]
        assert (event["status"], event["kind"]) == ("error", kind)
        assert_names_the_call(event["message"], fault, "GET")
        assert len(log) == 1, "an error the trigger cannot ride out must end it after one request"


def test_trigger_under_refused_connections_backs_off(connect, caplog):
    """Nothing listens: the trigger keeps waiting, spaced by poke_interval and a growing backoff."""
    connect(next(f for f in FAULTS if f.inject is None))
    caplog.set_level(logging.WARNING, logger="airflow_provider_faxplus")
    trigger = OutboxFaxTrigger(outbox_fax_id=FAX_ID, poke_interval=0.2)

    async def first_event():
        async for event in trigger.run():
            return event

    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(first_event(), 1.2))
    attempts = [r.getMessage() for r in caplog.records if "Transient error #" in r.getMessage()]
    assert 2 <= len(attempts) <= 7, attempts
    assert "Cannot connect to host" in attempts[0]


# Operator --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", WITH_PUT)
def test_operator(fault, connect, control):
    connect(fault)
    control.create_fax(id=FAX_ID, lifecycle=IN_OUTBOX)

    def execute() -> dict:
        return UpdateOutboxCommentOperator(task_id="tag", outbox_fax_id=FAX_ID, comment="matrix").execute({})

    if fault.transient and fault.inject is not None:
        inject(control, fault, "PUT", MAX_ATTEMPTS - 1)
        assert execute()["comment"] == "matrix"
        assert control.fax(FAX_ID)["comment"]["text"] == "matrix"
        control.requests(clear=True)
    inject(control, fault, "PUT", burst(fault))
    if fault.operator == "ok":
        assert execute()["comment"] == "matrix"
        return
    expected = AirflowFailException if fault.operator == "fails" else FaxPlusError
    with pytest.raises(expected) as info:
        execute()
    assert_names_the_call(str(info.value), fault, "PUT")
    sent = len(control.requests())
    assert sent == (0 if fault.inject is None else burst(fault))


# The document ----------------------------------------------------------------------------------


def test_reliability_doc_shows_this_matrix():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    assert render() in doc, "docs/reliability.md is out of date: run python3 scripts/dev.py docs"
