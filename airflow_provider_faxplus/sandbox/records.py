"""Fax records, their files and confirmation reports under ``/v3`` (faxplus-api 3.0.5 ``FaxesApi`` and
``FilesApi``), and their control routes under ``/_sandbox/records``.

Assumptions where Fax.Plus documents nothing: a missing ``category`` lists every category; a record that
does not exist (or was deleted) answers 404 ``fax_not_found``; a received fax has no confirmation report
(404 ``report_not_found``); the file and report reads need a read scope; a PUT answers 204.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from airflow_provider_faxplus.sandbox.common import (
    API_PREFIX,
    CONTROL_PREFIX,
    EDIT_SCOPES,
    READ_SCOPES,
    BodyTooLarge,
    authorize,
    authorized,
    control,
    error,
    is_json,
    owner_of,
    read_body,
    read_json,
    state_of,
    too_large,
)
from airflow_provider_faxplus.sandbox.fax_records import CATEGORIES, Record, pdf_bytes, pdf_file, tiff_bytes
from airflow_provider_faxplus.sandbox.state import SandboxState

CHUNK = 64 * 1024
SORT_KEYS: dict[str, Callable[[Record], Any]] = {
    "date": lambda r: r.at,
    "from": lambda r: r.fax.get("from") or r.fax.get("from_number") or "",
    "to": lambda r: r.fax["to"],
    "comment": lambda r: r.fax["comment"],
    "pages": lambda r: r.fax["pages"],
}


def _synced(request: Request) -> SandboxState:
    state = state_of(request)
    state.fax_records.sync(state.faxes.values(), state.clock.now())
    return state


def _record(request: Request, scopes: frozenset[str]) -> Record | Response:
    denied = authorize(request, scopes)
    if denied is not None:
        return denied
    state = _synced(request)
    owner = owner_of(request)
    if isinstance(owner, Response):
        return owner
    record = state.fax_records.find(owner, request.path_params["fax_id"])
    if record is None:
        return error(404, "fax_not_found", "Fax not found")
    return record


def _time(value: str, name: str) -> float | Response:
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return error(400, "invalid_payload", f"{name} must be YYYY-MM-DD HH:mm:ss")


def _count(request: Request, name: str, default: int, minimum: int) -> int | Response:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        return error(400, "invalid_payload", f"{name} must be a whole number >= {minimum}")
    return int(raw)


@authorized(READ_SCOPES)
async def list_faxes(request: Request) -> Response:
    state = _synced(request)
    owner = owner_of(request)
    if isinstance(owner, Response):
        return owner
    query = request.query_params
    category = query.get("category")
    if category is not None and category not in CATEGORIES:
        return error(400, "invalid_category", f"category must be one of {', '.join(CATEGORIES)}")
    bounds: dict[str, float | None] = {}
    for name in ("after", "before"):
        raw = query.get(name)
        parsed = None if raw is None else _time(raw, name)
        if isinstance(parsed, Response):
            return parsed
        bounds[name] = parsed
    limit = _count(request, "limit", 50, 1)
    if isinstance(limit, Response):
        return limit
    offset = _count(request, "offset", 0, 0)
    if isinstance(offset, Response):
        return offset
    sort_by, order = query.get("sort_by", "date"), query.get("order", "desc")
    if sort_by not in SORT_KEYS or order not in ("asc", "desc"):
        return error(
            400, "invalid_payload", f"sort_by must be one of {', '.join(SORT_KEYS)}; order asc or desc"
        )
    found = state.fax_records.listing(owner, category, bounds["after"], bounds["before"])
    if (sort_by, order) != ("date", "desc"):  # listing() is newest first
        found.sort(key=lambda r: (SORT_KEYS[sort_by](r), r.id), reverse=order == "desc")
    page = found[offset : offset + min(limit, state.fax_records.page_cap)]
    state.fax_records.page_answered(state.resolve_user, state.clock.now())
    return JSONResponse({"data": {"records": [record.fax for record in page]}})


async def get_fax(request: Request) -> Response:
    record = _record(request, READ_SCOPES)
    if isinstance(record, Response):
        return record
    return JSONResponse(record.fax)


@authorized(EDIT_SCOPES)
async def update_fax(request: Request) -> Response:
    try:
        body = await read_body(request)
    except BodyTooLarge:
        return too_large(state_of(request).max_body_bytes)
    payload: Any = {}
    if body:
        if not is_json(request.headers.get("content-type")):
            return error(415, "unsupported_media_type", "The request body must be application/json")
        try:
            payload = json.loads(body)
        except ValueError:
            return error(400, "invalid_payload", "The request body is not valid JSON")
    if not isinstance(payload, dict):
        return error(400, "invalid_payload", "The request body must be a JSON object")
    unknown = sorted(set(payload) - {"comment", "is_read"})
    if unknown:
        return error(400, "invalid_payload", f"Unknown field(s): {', '.join(unknown)}")
    if "comment" in payload and not isinstance(payload["comment"], str):
        return error(400, "invalid_payload", "comment must be a string")
    if "is_read" in payload and not isinstance(payload["is_read"], bool):
        return error(400, "invalid_payload", "is_read must be a boolean")
    record = _record(request, EDIT_SCOPES)
    if isinstance(record, Response):
        return record
    record.fax.update(payload)
    return Response(status_code=204)


async def delete_fax(request: Request) -> Response:
    record = _record(request, EDIT_SCOPES)
    if isinstance(record, Response):
        return record
    record.deleted = True
    return Response(status_code=204)


def _stream(data: bytes | tuple[int, Iterator[bytes]], media_type: str, name: str) -> Response:
    length, parts = (len(data), iter([data])) if isinstance(data, bytes) else data

    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            for start in range(0, len(part), CHUNK):
                yield part[start : start + CHUNK]

    headers = {"Content-Length": str(length), "Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)


async def download_file(request: Request) -> Response:
    fmt = request.query_params.get("format", "pdf")
    if fmt not in ("pdf", "tiff"):
        return error(400, "invalid_format", "format must be pdf or tiff")
    record = _record(request, READ_SCOPES)
    if isinstance(record, Response):
        return record
    if fmt == "tiff":
        return _stream(tiff_bytes(), "image/tiff", f"{record.id}.tiff")
    return _stream(pdf_file(f"Fax {record.id}", record.file_size), "application/pdf", f"{record.id}.pdf")


async def download_report(request: Request) -> Response:
    record = _record(request, READ_SCOPES)
    if isinstance(record, Response):
        return record
    if record.category != "sent":
        return error(404, "report_not_found", "Only a sent fax has a confirmation report")
    title = f"Confirmation report: fax {record.id} to {record.fax['to']}: {record.fax['status']}"
    return _stream(pdf_bytes(title), "application/pdf", f"{record.id}-report.pdf")


# Control -------------------------------------------------------------------------------------------


async def settings(request: Request) -> Any:
    """``default_outcome`` ({status, description}), ``id_policy`` (same|new), ``from_field``, ``page_cap``,
    ``between_pages`` ({after, delete, receive}: change the list once, after that many list answers)."""
    return state_of(request).fax_records.configure(await read_json(request))


async def outcome(request: Request) -> Any:
    """The outcome (and optionally the record id) of one outbox fax once it leaves."""
    return state_of(request).fax_records.set_outcome(await read_json(request))


async def receive(request: Request) -> Any:
    """One received fax, or several from a list."""
    state = state_of(request)
    data = await read_json(request, allow_list=True)
    now = state.clock.now()
    items = data if isinstance(data, list) else [data]
    made = [state.fax_records.receive(state.resolve_user, item, now).summary() for item in items]
    return made if isinstance(data, list) else made[0]


async def records(request: Request) -> Any:
    state = state_of(request)
    state.fax_records.sync(state.faxes.values(), state.clock.now())
    return [record.summary() for record in state.fax_records.records.values()]


def routes() -> list[Route]:
    account = API_PREFIX + "/accounts/{user_id}"
    return [
        Route(account + "/faxes", list_faxes, methods=["GET"]),
        Route(account + "/faxes/{fax_id}", get_fax, methods=["GET"]),
        Route(account + "/faxes/{fax_id}", update_fax, methods=["PUT"]),
        Route(account + "/faxes/{fax_id}", delete_fax, methods=["DELETE"]),
        Route(account + "/files/{fax_id}", download_file, methods=["GET"]),
        Route(account + "/report/{fax_id}", download_report, methods=["GET"]),
        Route(CONTROL_PREFIX + "/records", control(records), methods=["GET"]),
        Route(CONTROL_PREFIX + "/records/settings", control(settings), methods=["POST"]),
        Route(CONTROL_PREFIX + "/records/outcomes", control(outcome), methods=["POST"]),
        Route(CONTROL_PREFIX + "/records/received", control(receive), methods=["POST"]),
    ]
