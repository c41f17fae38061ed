"""What every route module of the sandbox shares: prefixes, scopes, the ``Error`` body, auth, body reading.

Route modules (``outbox``, ``send``, ``records``, ``control``) import this; ``app`` only assembles them.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airflow_provider_faxplus.sandbox import oauth
from airflow_provider_faxplus.sandbox.state import Fax, SandboxInputError, SandboxState

API_PREFIX = "/v3"
CONTROL_PREFIX = "/_sandbox"
READ_SCOPES = frozenset({"fax:all:read", "fax:fax:read"})
EDIT_SCOPES = frozenset({"fax:all:edit", "fax:fax:edit"})


def error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "description": description}, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    """The request body is over the sandbox's limit."""


def too_large(limit: int) -> Response:
    # The connection stays open: the server discards the rest of the body unread, and a client still
    # sending it then reads this answer (a close with unread data would reset the connection instead).
    return error(413, "payload_too_large", f"The request body is larger than {limit} bytes")


async def read_body(request: Request) -> bytes:
    """The body, refused by Content-Length before reading and while reading once over the limit."""
    limit = state_of(request).max_body_bytes
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


def is_json(content_type: str | None) -> bool:
    """``application/json``, parameters (charset) allowed."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


def state_of(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def authorize(request: Request, scopes: frozenset[str]) -> Response | None:
    state = state_of(request)
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


Handler = Callable[[Request], Awaitable[Response]]


def authorized(scopes: frozenset[str]) -> Callable[[Handler], Handler]:
    """A route that answers :func:`authorize`'s 401 or 403 before anything else it checks."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def route(request: Request) -> Response:
            denied = authorize(request, scopes)
            return denied if denied is not None else await handler(request)

        return route

    return wrap


def owner_of(request: Request) -> str | Response:
    """The account the path's ``user_id`` names, or the 400 that says it names none."""
    owner = state_of(request).resolve_user(request.path_params["user_id"])
    if owner is None:
        return error(400, "invalid_user_id", "Invalid user id given")
    return owner


def lookup(request: Request) -> Fax | Response:
    state = state_of(request)
    owner = owner_of(request)
    if isinstance(owner, Response):
        return owner
    fax = state.find(owner, request.path_params["outbox_fax_id"])
    if fax is None:
        return error(state.not_found_status, "fax_not_found", "Outbox fax not found")
    return fax


async def read_json(request: Request, allow_list: bool = False) -> Any:
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


def control(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            result = await handler(request)
        except (SandboxInputError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if isinstance(result, Response):
            return result
        return JSONResponse(result, status_code=201 if request.method == "POST" else 200)

    return endpoint
