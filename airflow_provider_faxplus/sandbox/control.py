"""The control API under ``/_sandbox``: faxes, faults, the request log, the clock, settings, reset."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from airflow_provider_faxplus.sandbox import oauth
from airflow_provider_faxplus.sandbox.common import CONTROL_PREFIX, control, read_json, state_of
from airflow_provider_faxplus.sandbox.state import SandboxInputError


async def create_fax(request: Request) -> Any:
    """One fax from an object, or many at the same instant from a list of them."""
    state = state_of(request)
    data = await read_json(request, allow_list=True)
    now = state.clock.now()
    if isinstance(data, list):
        return [state.create_fax(item, now).summary(now) for item in data]
    return state.create_fax(data, now).summary(now)


async def list_faxes(request: Request) -> Any:
    state = state_of(request)
    now = state.clock.now()
    return [fax.summary(now) for fax in state.faxes.values()]


async def show_fax(request: Request) -> Any:
    state = state_of(request)
    fax = state.faxes.get(request.path_params["fax_id"])
    if fax is None:
        return JSONResponse({"error": "no such fax"}, status_code=404)
    return fax.summary(state.clock.now())


async def add_fault(request: Request) -> Any:
    return state_of(request).add_fault(await read_json(request)).describe()


async def faults(request: Request) -> Any:
    state = state_of(request)
    if request.method == "DELETE":
        state.faults.clear()
    return [fault.describe() for fault in state.faults]


async def requests_log(request: Request) -> Any:
    state = state_of(request)
    entries = list(state.requests)
    if request.method == "DELETE":
        state.requests.clear()
    return entries


async def clock(request: Request) -> Any:
    state = state_of(request)
    data = await read_json(request)
    if "pace" in data:
        pace = data["pace"]
        if isinstance(pace, bool) or not isinstance(pace, int | float) or pace < 0:
            raise SandboxInputError("pace must be a number >= 0")
        state.clock.set_pace(float(pace))
    if "advance" in data:
        seconds = data["advance"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise SandboxInputError("advance must be a number of seconds >= 0")
        state.clock.advance(float(seconds))
    return JSONResponse({"now": state.clock.now(), "pace": state.clock.pace})


async def settings(request: Request) -> Any:
    state = state_of(request)
    data = await read_json(request)
    if "send_lifecycle" in data:  # stages of faxes sent through the API, as in POST /faxes
        state.create_fax({"lifecycle": data["send_lifecycle"], "id": "_check"})
        state.faxes.pop("_check")
        state.send_lifecycle = data["send_lifecycle"]
    if "send_lifecycles" in data:  # per destination, over send_lifecycle: faxes of one send that differ
        lifecycles = data["send_lifecycles"]
        if not isinstance(lifecycles, dict):
            raise SandboxInputError("send_lifecycles must be an object: destination -> lifecycle")
        for lifecycle in lifecycles.values():
            state.create_fax({"lifecycle": lifecycle, "id": "_check"})
            state.faxes.pop("_check")
        state.send_lifecycles = dict(lifecycles)
    if "log_response_bodies" in data:  # off for benchmarks: a 10,000-record list is ~6 MB per answer
        if not isinstance(data["log_response_bodies"], bool):
            raise SandboxInputError("log_response_bodies must be true or false")
        state.log_response_bodies = data["log_response_bodies"]
    for name in ("not_found_status", "sending_modify_status"):
        if name in data:
            value = data[name]
            if not isinstance(value, int) or not 400 <= value <= 499:
                raise SandboxInputError(f"{name} must be a 4xx status")
            setattr(state, name, value)
    return JSONResponse(
        {
            "not_found_status": state.not_found_status,
            "sending_modify_status": state.sending_modify_status,
            "log_response_bodies": state.log_response_bodies,
        }
    )


async def reset(request: Request) -> Any:
    state_of(request).reset()
    return JSONResponse({"reset": True})


async def health(request: Request) -> Any:
    return JSONResponse({"ok": True})


def routes() -> list[Route]:
    return [
        Route(CONTROL_PREFIX + "/health", health, methods=["GET"]),
        Route(CONTROL_PREFIX + "/faxes", control(create_fax), methods=["POST"]),
        Route(CONTROL_PREFIX + "/faxes", control(list_faxes), methods=["GET"]),
        Route(CONTROL_PREFIX + "/faxes/{fax_id}", control(show_fax), methods=["GET"]),
        Route(CONTROL_PREFIX + "/faults", control(add_fault), methods=["POST"]),
        Route(CONTROL_PREFIX + "/faults", control(faults), methods=["GET", "DELETE"]),
        Route(CONTROL_PREFIX + "/requests", control(requests_log), methods=["GET", "DELETE"]),
        Route(CONTROL_PREFIX + "/clock", control(clock), methods=["POST"]),
        Route(CONTROL_PREFIX + "/settings", control(settings), methods=["POST"]),
        Route(CONTROL_PREFIX + "/reset", control(reset), methods=["POST"]),
        *oauth.routes(CONTROL_PREFIX, control, read_json),
    ]
