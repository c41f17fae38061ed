"""Request log and fault injection, as a pure ASGI layer so a fault can cut the connection mid-body."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from typing import Any

from airflow_provider_faxplus.sandbox import oauth
from airflow_provider_faxplus.sandbox.common import API_PREFIX, CONTROL_PREFIX, error
from airflow_provider_faxplus.sandbox.state import SandboxState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class DeliberateDrop(Exception):
    """Raised after a partial response so the server closes the connection mid-body."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DeliberateDrop))


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


_SCHEMES = ("bearer", "basic")


def _redacted_headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name == "authorization":
            # Only a known scheme followed by a space is kept: anything else may be the token itself.
            scheme, space, _ = value.partition(" ")
            value = f"{scheme} <redacted>" if space and scheme.lower() in _SCHEMES else "<redacted>"
        headers[name] = value
    return headers


class ApiLayer:
    """Logs every /v3 request (tokens redacted) and applies the first matching fault."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = self._dated(send)
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(CONTROL_PREFIX) and not self._controller(scope):
            response = error(
                401,
                "invalid_control_token",
                "The sandbox's control API needs its control token (Authorization: Bearer)",
                {"WWW-Authenticate": 'Bearer realm="faxplus-sandbox-control"'},
            )
            await response(scope, receive, send)
            return
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
                    body = b"".join(received).decode("utf-8", errors="replace")
                    # Redacted before the log shows it: a delayed answer must not leave the code or
                    # refresh token readable meanwhile.
                    entry["body"] = oauth.redacted_form(body) if is_token else body
            return message

        response_body: list[bytes] = []

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                entry["response_headers"] = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])
                }
            elif message["type"] == "http.response.body" and is_token:
                entry["response_body"] = "<redacted>"  # the access token
            elif message["type"] == "http.response.body" and self.state.log_response_bodies:
                response_body.append(message.get("body", b""))
                entry["response_body"] = b"".join(response_body).decode("utf-8", errors="replace")
            await send(message)

        try:
            await self._handle(scope, path, entry, logged_receive, record, send, limit)
        finally:
            if is_token:  # the body and the answer were redacted as they came
                entry["grant_type"] = scope.get("state", {}).get("grant_type")
                entry["response_body"] = "<redacted>"
        entry["fax_status"] = scope.get("state", {}).get("fax_status")

    def _dated(self, send: Send) -> Send:
        """Every answer's ``Date`` (RFC 9110) by the sandbox clock, which tests drive."""

        async def dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                stamp = formatdate(self.state.clock.now(), usegmt=True).encode("latin-1")
                message = {**message, "headers": [*headers, (b"date", stamp)]}
            await send(message)

        return dated

    async def _handle(
        self,
        scope: Scope,
        path: str,
        entry: dict[str, Any],
        logged_receive: Receive,
        record: Send,
        send: Send,
        limit: int,
    ) -> None:
        """The request through its fault (if one matches) or the app. Every path, faults included, ends
        in the caller's redaction of a token request's log entry."""
        fault = self.state.take_fault(scope["method"], path)
        if fault is not None:
            entry["fault"] = fault.id
            if fault.late:
                await self._late(fault, scope, logged_receive, record)
                return
            if fault.delay:
                generation = self.state.generation
                await asyncio.sleep(fault.delay)
                if generation != self.state.generation:
                    raise DeliberateDrop()  # the sandbox was reset meanwhile: answer nothing
            if fault.hold_after:
                # Handled for real, then the answer held: the client waits on a request that took effect.
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
            if fault.drop_after or fault.processed:
                # Handled for real (a send creates its fax), then the answer is lost or replaced.
                async def swallow(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        entry["handled_status"] = message["status"]

                await self.app(scope, logged_receive, swallow)
            if fault.drop or (fault.status is not None and not fault.processed):
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
            if fault.cut_after is not None:
                await self.app(scope, logged_receive, self._cut(record, fault.cut_after))
                return
        await self.app(scope, logged_receive, record)

    def _controller(self, scope: Scope) -> bool:
        """Whether a control request may proceed: no control token set, the health check, or the token."""
        expected = self.state.control_token
        if expected is None or scope.get("path") == CONTROL_PREFIX + "/health":
            return True
        for raw_name, raw_value in scope.get("headers", []):
            if raw_name.lower() == b"authorization":
                scheme, _, given = raw_value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given, expected.encode())
        return False

    async def _late(self, fault: Any, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the whole body, wait ``fault.delay``, then handle the request whether or not the client
        is still there (its answer goes nowhere if it has gone)."""
        messages: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            messages.append(message)
            if not message.get("more_body"):
                break
        generation = self.state.generation
        await asyncio.sleep(fault.delay)
        if generation != self.state.generation:
            raise DeliberateDrop()
        pending = iter(messages)

        async def replay() -> Message:
            return next(pending, None) or {"type": "http.disconnect"}

        async def answer(message: Message) -> None:
            with contextlib.suppress(Exception):  # the client gave up: nobody reads the answer
                await send(message)

        await self.app(scope, replay, answer)

    @staticmethod
    def _cut(send: Send, limit: int) -> Send:
        """``send`` that passes the answer's start and its first ``limit`` body bytes, then drops."""
        sent = 0

        async def cut(message: Message) -> None:
            nonlocal sent
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunk = message.get("body", b"")
            if sent + len(chunk) < limit or (sent + len(chunk) == limit and not message.get("more_body")):
                sent += len(chunk)
                await send(message)
                return
            await send({"type": "http.response.body", "body": chunk[: limit - sent], "more_body": True})
            raise DeliberateDrop()

        return cut

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
