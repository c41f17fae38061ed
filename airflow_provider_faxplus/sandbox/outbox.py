"""The two outbox operations of the spec: *Get outgoing fax* and *Modify an outgoing fax*."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_provider_faxplus.sandbox.common import (
    API_PREFIX,
    EDIT_SCOPES,
    READ_SCOPES,
    BodyTooLarge,
    authorized,
    error,
    is_json,
    lookup,
    read_body,
    state_of,
    too_large,
)


@authorized(READ_SCOPES)
async def get_outbox_fax(request: Request) -> Response:
    fax = lookup(request)
    if isinstance(fax, Response):
        return fax
    now = state_of(request).clock.now()
    outbox = fax.to_outbox(now)
    if request.method == "GET":  # a HEAD (a health check) shows nothing, so moves no lifecycle
        fax.record_poll(now)
    request.state.fax_status = outbox["status"]  # for the request log
    return JSONResponse(outbox)


@authorized(EDIT_SCOPES)
async def update_outbox_fax(request: Request) -> Response:
    try:
        body = await read_body(request)
    except BodyTooLarge:
        return too_large(state_of(request).max_body_bytes)
    if not body:
        payload: Any = {}  # the spec's request body is optional: nothing to modify
    elif not is_json(request.headers.get("content-type")):
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
    fax = lookup(request)
    if isinstance(fax, Response):
        return fax
    state = state_of(request)
    if fax.status(state.clock.now()) == "sending":
        return error(
            state.sending_modify_status, "fax_not_modifiable", "A fax that is sending cannot be modified"
        )
    if "comment" in payload:
        fax.comment_text = payload["comment"]
    return Response(status_code=204)


def routes() -> list[Route]:
    outbox = API_PREFIX + "/accounts/{user_id}/outbox/{outbox_fax_id}"
    return [
        Route(outbox, get_outbox_fax, methods=["GET"]),
        Route(outbox, update_outbox_fax, methods=["PUT"]),
    ]
