"""The sandbox's HTTP face: the two outbox operations under ``/v3`` and a control API under ``/_sandbox``.

Behaviour and where it comes from (see also the README's sandbox section):

- spec (outbox.openapi.yaml): paths, the ``Outbox`` schema and its datetime formats, 200/204 on
  success, 400 with an ``Error`` body for bad input (``invalid_user_id``, a PUT body that is not
  ``{"comment": <string>}``), 500 ``internal_server_error``;
- Fax.Plus docs: Bearer tokens with per-operation scopes, the ``x-fax-clientid`` header for OAuth2
  clients, faxes leaving the outbox once sent, ids briefly unknown right after submission;
- HTTP (RFC 9110 / 6750): 405 with ``Allow``, 401 with ``WWW-Authenticate: Bearer``, HEAD answered like
  GET without a body and without counting as a poll, 415 for a PUT body that is not JSON, 413 for a body
  over the limit (checked after auth, from Content-Length and while reading), no slash redirects;
- assumptions: 401 ``invalid_token`` / 403 ``insufficient_scope``; a fax that left the outbox answers
  404 ``fax_not_found`` (or 400, configurable); a PUT on a fax in ``sending`` answers 409
  ``fax_not_modifiable`` (configurable); a PUT without a body modifies nothing (204); the body limit
  (``max_body_bytes``, 2 MiB).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_provider_faxplus.sandbox import oauth
from airflow_provider_faxplus.sandbox.state import Fax, SandboxInputError, SandboxState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_PREFIX = "/v3"
CONTROL_PREFIX = "/_sandbox"
READ_SCOPES = frozenset({"fax:all:read", "fax:fax:read"})
EDIT_SCOPES = frozenset({"fax:all:edit", "fax:fax:edit"})


class DeliberateDrop(Exception):
    """Raised after a partial response so the server closes the connection mid-body."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DeliberateDrop))


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


def error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "description": description}, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    """The request body is over the sandbox's limit."""


def _too_large(limit: int) -> Response:
    # The connection stays open: the server discards the rest of the body unread, and a client still
    # sending it then reads this answer (a close with unread data would reset the connection instead).
    return error(413, "payload_too_large", f"The request body is larger than {limit} bytes")


async def _read_body(request: Request) -> bytes:
    """The body, refused by Content-Length before reading and while reading once over the limit."""
    limit = _state(request).max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json(content_type: str | None) -> bool:
    """``application/json``, parameters (charset) allowed."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


def _state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def _authorize(request: Request, scopes: frozenset[str]) -> Response | None:
    state = _state(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    granted: frozenset[str] | None = None
    known = False
    if scheme.lower() == "bearer" and token:
        for candidate, candidate_scopes in state.tokens.items():
            if hmac.compare_digest(candidate.encode(), token.encode()):
                known, granted = True, candidate_scopes
    if not known and token:
        issued = oauth.check_access_token(
            state.oauth, token, request.headers.get("x-fax-clientid"), state.clock.now()
        )
        if isinstance(issued, Response):
            return issued
        known = issued
    if not known:
        # RFC 6750 3.1: no error code when the request carried no token at all.
        challenge = 'Bearer error="invalid_token"' if token else "Bearer"
        return error(401, "invalid_token", "Missing or invalid access token", {"WWW-Authenticate": challenge})
    if state.client_id is not None and request.headers.get("x-fax-clientid") != state.client_id:
        return error(
            401,
            "invalid_client",
            "Missing or invalid x-fax-clientid header",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if granted is not None and not (granted & scopes):
        return error(
            403,
            "insufficient_scope",
            f"The token needs one of the scopes {', '.join(sorted(scopes))}",
            {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(sorted(scopes))}"'},
        )
    return None


def _lookup(request: Request) -> Fax | Response:
    state = _state(request)
    owner = state.resolve_user(request.path_params["user_id"])
    if owner is None:
        return error(400, "invalid_user_id", "Invalid user id given")
    fax = state.find(owner, request.path_params["outbox_fax_id"])
    if fax is None:
        return error(state.not_found_status, "fax_not_found", "Outbox fax not found")
    return fax


async def get_outbox_fax(request: Request) -> Response:
    denied = _authorize(request, READ_SCOPES)
    if denied is not None:
        return denied
    fax = _lookup(request)
    if isinstance(fax, Response):
        return fax
    now = _state(request).clock.now()
    outbox = fax.to_outbox(now)
    if request.method == "GET":  # a HEAD (a health check) shows nothing, so moves no lifecycle
        fax.record_poll(now)
    request.state.fax_status = outbox["status"]  # for the request log
    return JSONResponse(outbox)


async def update_outbox_fax(request: Request) -> Response:
    denied = _authorize(request, EDIT_SCOPES)
    if denied is not None:
        return denied
    try:
        body = await _read_body(request)
    except BodyTooLarge:
        return _too_large(_state(request).max_body_bytes)
    if not body:
        payload: Any = {}  # the spec's request body is optional: nothing to modify
    elif not _is_json(request.headers.get("content-type")):
        return error(
            415,
            "unsupported_media_type",
            f"The request body must be application/json, not {request.headers.get('content-type')!r}",
        )
    else:
        try:
            payload = json.loads(body)
        except ValueError:
            return error(400, "invalid_payload", "The request body is not valid JSON")
    if not isinstance(payload, dict):
        return error(400, "invalid_payload", "The request body must be a JSON object")
    unknown = sorted(set(payload) - {"comment"})
    if unknown:
        return error(400, "invalid_payload", f"Unknown field(s): {', '.join(unknown)}")
    if "comment" in payload and not isinstance(payload["comment"], str):
        return error(400, "invalid_payload", "comment must be a string")
    fax = _lookup(request)
    if isinstance(fax, Response):
        return fax
    state = _state(request)
    if fax.status(state.clock.now()) == "sending":
        return error(
            state.sending_modify_status, "fax_not_modifiable", "A fax that is sending cannot be modified"
        )
    if "comment" in payload:
        fax.comment_text = payload["comment"]
    return Response(status_code=204)


# Control API ------------------------------------------------------------------------------------


async def _json(request: Request, allow_list: bool = False) -> Any:
    body = await request.body()
    if not body:
        return {}
    data = json.loads(body)
    if isinstance(data, list) and allow_list and all(isinstance(item, dict) for item in data):
        return data
    if not isinstance(data, dict):
        raise SandboxInputError(
            "the body must be a JSON object" + (" or a list of them" if allow_list else "")
        )
    return data


def _control(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            result = await handler(request)
        except (SandboxInputError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if isinstance(result, Response):
            return result
        return JSONResponse(result, status_code=201 if request.method == "POST" else 200)

    return endpoint


async def create_fax(request: Request) -> Any:
    """One fax from an object, or many at the same instant from a list of them."""
    state = _state(request)
    data = await _json(request, allow_list=True)
    now = state.clock.now()
    if isinstance(data, list):
        return [state.create_fax(item, now).summary(now) for item in data]
    return state.create_fax(data, now).summary(now)


async def list_faxes(request: Request) -> Any:
    state = _state(request)
    now = state.clock.now()
    return [fax.summary(now) for fax in state.faxes.values()]


async def show_fax(request: Request) -> Any:
    state = _state(request)
    fax = state.faxes.get(request.path_params["fax_id"])
    if fax is None:
        return JSONResponse({"error": "no such fax"}, status_code=404)
    return fax.summary(state.clock.now())


async def add_fault(request: Request) -> Any:
    return _state(request).add_fault(await _json(request)).describe()


async def faults(request: Request) -> Any:
    state = _state(request)
    if request.method == "DELETE":
        state.faults.clear()
    return [fault.describe() for fault in state.faults]


async def requests_log(request: Request) -> Any:
    state = _state(request)
    entries = list(state.requests)
    if request.method == "DELETE":
        state.requests.clear()
    return entries


async def clock(request: Request) -> Any:
    state = _state(request)
    data = await _json(request)
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
    state = _state(request)
    data = await _json(request)
    if "send_lifecycle" in data:  # stages of faxes sent through the API, as in POST /faxes
        state.create_fax({"lifecycle": data["send_lifecycle"], "id": "_check"})
        state.faxes.pop("_check")
        state.send_lifecycle = data["send_lifecycle"]
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
    _state(request).reset()
    return JSONResponse({"reset": True})


async def health(request: Request) -> Any:
    return JSONResponse({"ok": True})


# Request log and fault injection, as a pure ASGI layer so a fault can cut the connection mid-body.


def _redacted_headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name == "authorization":
            scheme = value.partition(" ")[0]
            value = f"{scheme} <redacted>" if scheme else "<redacted>"
        headers[name] = value
    return headers


class ApiLayer:
    """Logs every /v3 request (tokens redacted) and applies the first matching fault."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        is_token = path == oauth.TOKEN_PATH
        if scope["type"] != "http" or not (path.startswith(API_PREFIX + "/") or is_token):
            await self.app(scope, receive, send)
            return
        entry: dict[str, Any] = {
            "method": scope["method"],
            "path": path,
            "raw_path": scope.get("raw_path", b"").decode("latin-1"),
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": _redacted_headers(scope),
            "body": "",  # what the handler read of it: auth and size limits come before reading
            "at": self.state.clock.now(),
            "client_port": (scope.get("client") or (None, None))[1],
            "status": None,
        }
        self.state.requests.append(entry)

        received: list[bytes] = []
        size = 0
        limit = self.state.max_body_bytes

        async def logged_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request" and size <= limit:
                chunk = message.get("body", b"")
                received.append(chunk)
                size += len(chunk)
                if not message.get("more_body") or size > limit:  # the whole body, or all the log keeps
                    entry["body"] = b"".join(received).decode("utf-8", errors="replace")
            return message

        response_body: list[bytes] = []

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                entry["response_headers"] = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])
                }
            elif message["type"] == "http.response.body" and self.state.log_response_bodies:
                response_body.append(message.get("body", b""))
                entry["response_body"] = b"".join(response_body).decode("utf-8", errors="replace")
            await send(message)

        fault = self.state.take_fault(scope["method"], path)
        if fault is not None:
            entry["fault"] = fault.id
            if fault.delay:
                generation = self.state.generation
                await asyncio.sleep(fault.delay)
                if generation != self.state.generation:
                    raise DeliberateDrop()  # the sandbox was reset meanwhile: answer nothing
            if fault.hold_after:
                held: list[Message] = []

                async def hold(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        entry["handled_status"] = message["status"]
                    held.append(message)

                generation = self.state.generation
                await self.app(scope, logged_receive, hold)
                await asyncio.sleep(fault.hold_after)
                if generation != self.state.generation:
                    raise DeliberateDrop()
                for message in held:
                    await record(message)
                return
            if fault.drop_after:
                # Handled for real (a send creates its fax), then the answer is lost.
                async def swallow(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        entry["handled_status"] = message["status"]

                await self.app(scope, logged_receive, swallow)
            if fault.drop or fault.status is not None:
                # The fault answers instead of the handler: read the body for the log all the same.
                await self._drain(logged_receive, limit)
            if fault.drop or fault.drop_after:
                await record(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"id": "trunc', "more_body": True})
                raise DeliberateDrop()
            if fault.status is not None:
                await self._fault_response(fault.status, fault, record)
                return
        try:
            await self.app(scope, logged_receive, record)
        finally:
            if is_token:  # the form holds the code or refresh token; the answer the access token
                entry["body"] = oauth.redacted_form(entry["body"])
                entry["grant_type"] = scope.get("state", {}).get("grant_type")
                entry["response_body"] = "<redacted>"
        entry["fax_status"] = scope.get("state", {}).get("fax_status")

    @staticmethod
    async def _drain(receive: Receive, limit: int) -> None:
        """Read the body (up to the limit) so a faulted request is logged whole."""
        size = 0
        while size <= limit:
            message = await receive()
            size += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    @staticmethod
    async def _fault_response(status: int, fault: Any, send: Send) -> None:
        if fault.body is not None:
            body = fault.body.encode("utf-8")
        elif status in (204, 304) or status < 200:
            body = b""
        else:
            body = json.dumps(
                {"error": f"http_{status}", "description": f"Injected fault {fault.id}"}
            ).encode()
        headers = [(b"content-type", fault.content_type.encode("latin-1"))]
        if fault.retry_after is not None:
            headers.append((b"retry-after", fault.retry_after.encode("latin-1")))
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in fault.headers.items())
        if body or status not in (204, 304):
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _not_found(request: Request, exc: Exception) -> Response:
    return error(404, "not_found", f"No route for {request.method} {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    # RFC 9110 15.5.6: list every method of the path, across the routes that share it.
    allowed: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.path_regex.match(request.scope["path"]) and route.methods:
            allowed |= route.methods
    return error(
        405,
        "method_not_allowed",
        f"{request.method} is not allowed on {request.url.path}",
        {"Allow": ", ".join(sorted(allowed))},
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    return error(500, "internal_server_error", "An unexpected error happened, please contact support")


def create_app(state: SandboxState) -> ASGIApp:
    from airflow_provider_faxplus.sandbox import send

    outbox = API_PREFIX + "/accounts/{user_id}/outbox/{outbox_fax_id}"
    routes = [
        *send.routes(),
        Route(outbox, get_outbox_fax, methods=["GET"]),
        Route(outbox, update_outbox_fax, methods=["PUT"]),
        Route(CONTROL_PREFIX + "/health", health, methods=["GET"]),
        Route(CONTROL_PREFIX + "/faxes", _control(create_fax), methods=["POST"]),
        Route(CONTROL_PREFIX + "/faxes", _control(list_faxes), methods=["GET"]),
        Route(CONTROL_PREFIX + "/faxes/{fax_id}", _control(show_fax), methods=["GET"]),
        Route(CONTROL_PREFIX + "/faults", _control(add_fault), methods=["POST"]),
        Route(CONTROL_PREFIX + "/faults", _control(faults), methods=["GET", "DELETE"]),
        Route(CONTROL_PREFIX + "/requests", _control(requests_log), methods=["GET", "DELETE"]),
        Route(CONTROL_PREFIX + "/clock", _control(clock), methods=["POST"]),
        Route(CONTROL_PREFIX + "/settings", _control(settings), methods=["POST"]),
        Route(CONTROL_PREFIX + "/reset", _control(reset), methods=["POST"]),
        *oauth.routes(CONTROL_PREFIX, _control, _json),
    ]
    app = Starlette(
        routes=routes, exception_handlers={404: _not_found, 405: _not_allowed, 500: _server_error}
    )
    # A path with a trailing slash is another path: answered 404, not redirected (before auth) to ours.
    app.router.redirect_slashes = False
    app.state.sandbox = state
    return ApiLayer(app, state)
