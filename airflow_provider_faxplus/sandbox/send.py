"""The sandbox's sending operations: upload, send, list the outbox, cancel.

Sources (FAXPLUS_FACTS, Fax.Plus's SDK faxplus-api 3.0.5): upload is multipart with the field
``fax_file`` and answers ``{"path": "/transient-..."}``; send takes ``PayloadOutbox`` and answers 201,
``{"ids": {destination: outbox id}}`` with ``return_ids``; at most 10 files (400 ``too_many_files``),
4,000 destinations (400 ``too_many_destinations``), 150 MB of files (413). Assumed: one outbox fax per
destination (``return_ids`` answers one id each); an unknown file path is 400 ``invalid_file``; a cancel
answers 204 and the fax leaves the outbox; a cancel of a fax that is sending is refused like a PUT (409).
Uploaded files are kept as name and size only: the sandbox never stores contents.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_provider_faxplus.sandbox.common import (
    API_PREFIX,
    EDIT_SCOPES,
    READ_SCOPES,
    authorized,
    error,
    is_json,
    lookup,
    owner_of,
    state_of,
)
from airflow_provider_faxplus.sandbox.spec import schema_errors
from airflow_provider_faxplus.sandbox.state import SandboxInputError

FILE_EDIT_SCOPES = frozenset({"fax:all:edit", "fax:file:edit"})  # faxplus-api's FilesApi.upload_file
MAX_FILES = 10
MAX_DESTINATIONS = 4000
MAX_UPLOAD_BYTES = 150 * 1000 * 1000
MAX_SEND_BODY = 2 * 1024 * 1024
E164 = re.compile(r"\+[1-9][0-9]{6,14}")  # ITU-T E.164: 7 to 15 digits
_DISPOSITION = re.compile(rb'content-disposition:[^\r\n]*?; *name="([^"]*)"(?:; filename="([^"]*)")?', re.I)


MULTIPART_ALLOWANCE = 64 * 1024


def _boundary(content_type: str) -> str | None:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    return match.group(1) if match else None


@authorized(FILE_EDIT_SCOPES)
async def upload_file(request: Request) -> Response:
    owner = owner_of(request)
    if isinstance(owner, Response):
        return owner
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return error(415, "unsupported_media_type", "The upload must be multipart/form-data")
    fmt = request.query_params.get("format")
    if fmt is not None and fmt not in ("pdf", "tiff"):
        return error(400, "invalid_format", "format must be pdf or tiff")
    too_large = error(413, "payload_too_large", f"Files are limited to {MAX_UPLOAD_BYTES} bytes")
    # The limit is on the file: the form's own bytes (part headers, boundaries) do not count.
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES + MULTIPART_ALLOWANCE:
        return too_large
    boundary = _boundary(content_type)
    tail = len(f"\r\n--{boundary}--\r\n") if boundary else 0
    window, size, file_name, head = b"", 0, None, 0
    async for chunk in request.stream():  # counted, never kept: only part headers are looked at
        if file_name is None:
            window = window[-1024:] + chunk
            for match in _DISPOSITION.finditer(window):
                if match.group(1) == b"fax_file":
                    file_name = (match.group(2) or b"").decode("utf-8", "replace")
                    end = window.find(b"\r\n\r\n", match.end())
                    head = size + len(chunk) - len(window) + (end + 4 if end >= 0 else match.end())
                    break
        size += len(chunk)
        if size - head - tail > MAX_UPLOAD_BYTES and size > MAX_UPLOAD_BYTES:
            return too_large
    if file_name is None:
        return error(400, "invalid_payload", "The form needs a file in the field fax_file")
    size = max(0, size - head - tail)  # the file's own bytes
    path = f"/transient-{uuid.uuid4()}"
    state_of(request).uploads[path] = (owner, file_name, size)
    return JSONResponse({"path": path})


@authorized(EDIT_SCOPES)
async def send_fax(request: Request) -> Response:
    owner = owner_of(request)
    if isinstance(owner, Response):
        return owner
    body = await request.body()
    if len(body) > MAX_SEND_BODY:
        return error(413, "payload_too_large", "The request body is too large")
    if not is_json(request.headers.get("content-type")):
        return error(415, "unsupported_media_type", "The request body must be application/json")
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return error(400, "invalid_payload", "The request body is not valid JSON")
    problem = _payload_problem(payload)
    if problem is not None:
        return error(400, *problem)
    state = state_of(request)
    files = payload["files"]
    unknown = [path for path in files if state.uploads.get(path, (None,))[0] != owner]
    if unknown:
        return error(400, "invalid_file", f"Unknown file path {unknown[0]}: upload it first")
    if sum(state.uploads[path][2] for path in files) > MAX_UPLOAD_BYTES:
        return error(413, "payload_too_large", f"Files of one fax are limited to {MAX_UPLOAD_BYTES} bytes")
    comment = payload.get("comment") or {}
    now = state.clock.now()
    ids: dict[str, str] = {}
    for destination in dict.fromkeys(payload["to"]):  # one fax per distinct destination (assumed)
        fields: dict[str, Any] = {"to": [destination], "files": list(files)}
        if payload["from"] != "no_number":
            fields["src"] = payload["from"]
        if "send_time" in payload:
            fields["send_time"] = payload["send_time"]
        retry = (payload.get("options") or {}).get("retry")
        if retry:
            fields["retry"] = {"count": retry.get("count", 0), "delay": retry.get("delay", 0)}
        try:
            fax = state.create_fax(
                {
                    "user_id": owner,
                    "lifecycle": state.send_lifecycles.get(destination, state.send_lifecycle),
                    "comment": comment.get("text", ""),
                    "tags": list(comment.get("tags", [])),
                    "fields": fields,
                },
                now,
            )
        except SandboxInputError as exc:
            return error(400, "invalid_payload", str(exc))
        ids[destination] = fax.id
    # Without return_ids Fax.Plus's answer body is undocumented: assumed an empty object.
    return JSONResponse({"ids": ids} if payload.get("return_ids") else {}, status_code=201)


def _payload_problem(payload: Any) -> tuple[str, str] | None:
    if not isinstance(payload, dict):
        return "invalid_payload", "The request body must be a JSON object"
    known = {"from", "to", "files", "comment", "options", "send_time", "return_ids", "cover_page"}
    unknown = sorted(set(payload) - known)
    if unknown:
        return "invalid_payload", f"Unknown field(s): {', '.join(unknown)}"
    # The documented codes for the documented limits come before the schema's maxItems.
    if isinstance(payload.get("files"), list) and len(payload["files"]) > MAX_FILES:
        return "too_many_files", f"At most {MAX_FILES} files per fax"
    if isinstance(payload.get("to"), list) and len(payload["to"]) > MAX_DESTINATIONS:
        return "too_many_destinations", f"At most {MAX_DESTINATIONS} destinations per fax"
    problems = schema_errors("PayloadOutbox", payload)  # types, ranges, enums of the SDK's models
    if problems:
        return "invalid_payload", "; ".join(problems[:3])
    sender = payload.get("from")
    if not isinstance(sender, str) or not (sender == "no_number" or E164.fullmatch(sender)):
        return "invalid_from", "from must be a number of the account or no_number"
    to = payload.get("to")
    if not isinstance(to, list) or not to or not all(isinstance(n, str) and E164.fullmatch(n) for n in to):
        return "invalid_to", "to must be a non-empty list of fax numbers (+ and digits)"
    files = payload.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        return "invalid_files", "files must be a non-empty list of uploaded paths"
    comment = payload.get("comment")
    if comment is not None and not (
        isinstance(comment, dict)
        and isinstance(comment.get("text", ""), str)
        and isinstance(comment.get("tags", []), list)
        and all(isinstance(tag, str) for tag in comment.get("tags", []))
    ):
        return "invalid_comment", "comment must be {tags: [strings], text: string}"
    options = payload.get("options", {})
    retry = options.get("retry", {}) if isinstance(options, dict) else None
    if not isinstance(retry, dict):
        return "invalid_options", "options must be {enhancement, retry: {count, delay}}"
    for name, maximum in (("count", 3), ("delay", 180)):
        value = retry.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
            return "invalid_options", f"retry {name} must be 0..{maximum}"
    send_time = payload.get("send_time")
    if send_time is not None and not (
        isinstance(send_time, str) and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000", send_time)
    ):
        return "invalid_send_time", "send_time must be YYYY-MM-DD HH:mm:ss +0000"
    return None


@authorized(READ_SCOPES)
async def list_outbox(request: Request) -> Response:
    owner = owner_of(request)
    if isinstance(owner, Response):
        return owner
    state = state_of(request)
    now = state.clock.now()
    # A list answer that shows a fax is a look at it, as a GET is: poll-counted lifecycles move on (a
    # shared list poll would otherwise never see a poll-counted fax leave).
    shown = [fax for fax in state.faxes.values() if state.find(owner, fax.id) is fax]
    records = [fax.to_outbox(now) for fax in shown]
    if request.method == "GET":  # a HEAD shows nothing
        for fax in shown:
            fax.record_poll(now)
    return JSONResponse({"records": records})


@authorized(EDIT_SCOPES)
async def cancel_outbox_fax(request: Request) -> Response:
    fax = lookup(request)
    if isinstance(fax, Response):
        return fax
    state = state_of(request)
    if fax.status(state.clock.now()) == "sending":
        return error(
            state.sending_modify_status, "fax_not_modifiable", "A fax that is sending cannot be cancelled"
        )
    del state.faxes[fax.id]
    state.cancelled.append(fax.id)
    return Response(status_code=204)


def routes() -> list[Route]:
    account = API_PREFIX + "/accounts/{user_id}"
    return [
        Route(account + "/files", upload_file, methods=["POST"]),
        Route(account + "/outbox", send_fax, methods=["POST"]),
        Route(account + "/outbox", list_outbox, methods=["GET"]),
        Route(account + "/outbox/{outbox_fax_id}", cancel_outbox_fax, methods=["DELETE"]),
    ]
