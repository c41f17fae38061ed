"""Fax records (sent and received faxes), their files and confirmation reports, without I/O: typed
records, request building and answer parsing, shared by the hook and the triggers.

Sources (see FAXPLUS_FACTS): faxplus-api 3.0.5's ``Fax``, ``FaxStatus``, ``FaxDirection``,
``FaxCostDetails``, ``FaxList`` and ``PayloadFaxModification`` models and its ``FaxesApi``/``FilesApi``
paths. Parsing is total like :mod:`models`: a JSON object with string ``id`` and ``status`` gives a
record; a field that does not parse is left ``None`` and named in ``parse_warnings``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode

from pendulum import DateTime

from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusInputError
from airflow_provider_faxplus.models import _Fields, format_utc
from airflow_provider_faxplus.protocol import (
    ApiCall,
    Operation,
    _malformed,
    base_headers,
    error_from_response,
    validate_path_param,
)

log = logging.getLogger(__name__)

READ = ("fax:all:read", "fax:fax:read")
EDIT = ("fax:all:edit", "fax:fax:edit")
LIST_FAXES = Operation("List fax records", "listFaxes", "GET", READ)
GET_FAX = Operation("Get a fax record", "getFax", "GET", READ)
UPDATE_FAX = Operation("Modify a fax record", "updateFax", "PUT", EDIT)
DELETE_FAX = Operation("Delete a fax record", "deleteFax", "DELETE", EDIT)
# The scope of the file and report downloads is not documented; read is the likely one (FAXPLUS_FACTS).
DOWNLOAD_FAX = Operation("Download a fax file", "getFile", "GET", READ)
DOWNLOAD_REPORT = Operation("Download a fax confirmation report", "getFaxReport", "GET", READ)

CATEGORIES = frozenset({"inbox", "sent", "spam"})
FILE_FORMATS = {"pdf": "application/pdf", "tiff": "image/tiff"}
# Page size of list_faxes: the API's documented default limit.
PAGE_SIZE = 50
# Without a limit, a listing stops with an error beyond this many records instead of running on.
MAX_LIST_RECORDS = 100_000
RECORD_KIND = "fax record"


class FaxStatus(StrEnum):
    """Outcome of a sent or received fax (faxplus-api 3.0.5 ``FaxStatus``)."""

    SUCCESS = "success"
    PARTIALLY_SENT = "partially_sent"
    PARTIALLY_RECEIVED = "partially_received"
    INSUFFICIENT_CREDIT = "insufficient_credit"
    FAILED = "failed"
    FAILED_INTERNAL_PROCESS_ERROR = "failed_internal_process_error"
    FAILED_USER_BUSY = "failed_user_busy"
    FAILED_NO_ANSWER = "failed_no_answer"
    FAILED_UNALLOCATED_NUMBER = "failed_unallocated_number"
    FAILED_OFFICE_CONVERTER_ISSUE = "failed_office_converter_issue"
    FAILED_SEPARATE_FILE_PAGES_ISSUE = "failed_separate_file_pages_issue"
    FAILED_RENDER_HEADER_ISSUE = "failed_render_header_issue"
    FAILED_INVALID_NUMBER_FORMAT = "failed_invalid_number_format"
    FAILED_MIMETYPE_NOT_SUPPORTED = "failed_mimetype_not_supported"
    FAILED_DESTINATION_NOT_SUPPORTED = "failed_destination_not_supported"
    FAILED_IMAGE_PREPARATION = "failed_image_preparation"
    FAILED_TO_SEND = "failed_to_send"
    FAILED_NORMAL_TEMPORARY_FAILURE = "failed_normal_temporary_failure"
    FAILED_UNKNOWN_CONVERTER_ISSUE = "failed_unknown_converter_issue"
    FAILED_NORMAL_CLEARING = "failed_normal_clearing"
    FAILED_CONVERT_TO_TIFF_ISSUE = "failed_convert_to_tiff_issue"
    FAILED_FS_49 = "failed_fs_49"
    FAILED_FS_2 = "failed_fs_2"


PARTIAL_STATUSES = frozenset({FaxStatus.PARTIALLY_SENT, FaxStatus.PARTIALLY_RECEIVED})

_unknown_logged: set[str] = set()
_unknown_lock = threading.Lock()


def parse_fax_status(value: str) -> FaxStatus | str:
    """The enum member, or the raw string for a status Fax.Plus added since (logged once per process)."""
    try:
        return FaxStatus(value)
    except ValueError:
        with _unknown_lock:
            first = value not in _unknown_logged
            _unknown_logged.add(value)
        if first:
            log.warning("Fax record status %r is not one this provider knows; it is kept as given", value)
        return value


def outcome(status: FaxStatus | str) -> str:
    """``delivered``, ``partial``, ``failed`` (insufficient_credit, failed and failed_*), or ``unknown``."""
    if status == FaxStatus.SUCCESS:
        return "delivered"
    if status in PARTIAL_STATUSES:
        return "partial"
    if status in (FaxStatus.FAILED, FaxStatus.INSUFFICIENT_CREDIT) or str(status).startswith("failed_"):
        return "failed"
    return "unknown"


class FaxDirection(StrEnum):
    OUTGOING = "outgoing"
    INCOMING = "incoming"


@dataclass(frozen=True)
class FaxCostDetails:
    multiplier: float | None = None
    notification_cost: float | None = None


@dataclass(frozen=True)
class FaxRecord:
    """A sent or received fax, as *Get a fax record* and *List fax records* answer it.

    Every field of faxplus-api 3.0.5's ``Fax`` model; ``from`` (the wire name) is ``from_number`` here.
    Datetimes are timezone-aware UTC (the API's naive times are UTC). ``comment`` is a plain string on
    records, unlike the outbox's ``{text, tags}``.
    """

    id: str
    status: FaxStatus | str
    owner_id: str | None = None
    pages: int | None = None
    comment: str | None = None
    cost_details: FaxCostDetails | None = None
    cost: int | None = None
    description: str | None = None
    direction: FaxDirection | str | None = None
    duration: int | None = None
    file: str | None = None
    file_name: str | None = None
    from_number: str | None = None
    to: str | None = None
    header: str | None = None
    is_read: bool | None = None
    is_spam: bool | None = None
    last_update: DateTime | None = None
    max_retry: int | None = None
    retry_delay: int | None = None
    scheduled_time: DateTime | None = None
    start_time: DateTime | None = None
    submit_time: DateTime | None = None
    cover_page: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    parse_warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def outcome(self) -> str:
        return outcome(self.status)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (datetimes as ISO-8601 UTC strings), for XCom and event payloads."""
        return {
            "id": self.id,
            "status": str(self.status),
            "owner_id": self.owner_id,
            "pages": self.pages,
            "comment": self.comment,
            "cost_details": None
            if self.cost_details is None
            else {
                "multiplier": self.cost_details.multiplier,
                "notification_cost": self.cost_details.notification_cost,
            },
            "cost": self.cost,
            "description": self.description,
            "direction": None if self.direction is None else str(self.direction),
            "duration": self.duration,
            "file": self.file,
            "file_name": self.file_name,
            "from_number": self.from_number,
            "to": self.to,
            "header": self.header,
            "is_read": self.is_read,
            "is_spam": self.is_spam,
            "last_update": format_utc(self.last_update),
            "max_retry": self.max_retry,
            "retry_delay": self.retry_delay,
            "scheduled_time": format_utc(self.scheduled_time),
            "start_time": format_utc(self.start_time),
            "submit_time": format_utc(self.submit_time),
            "cover_page": self.cover_page,
        }


class FaxRecordParseError(ValueError):
    """The body is no ``Fax`` object: not an object, or ``id``/``status`` missing."""


def _float(fields: _Fields, name: str) -> float | None:
    value = fields.body.get(name)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    fields._bad(name, "a number")
    return None


def parse_fax_record(body: object) -> FaxRecord:
    if not isinstance(body, dict):
        raise FaxRecordParseError(f"expected a JSON object, got {type(body).__name__}")
    missing = [name for name in ("id", "status") if not isinstance(body.get(name), str)]
    if missing:
        raise FaxRecordParseError(f"required field(s) missing or not strings: {', '.join(missing)}")
    fields = _Fields(body)
    # The SDK requires these too; a record without them is still a record, so it is noted, not refused.
    absent = [name for name in ("owner_id", "pages", "comment", "cost_details") if name not in body]
    fields.warnings.extend(f"{name}: missing" for name in absent)

    # The wire name is "from" (the SDK's attribute_map); apidoc's examples show "from_number".
    from_number = fields.str_("from")
    alias = fields.str_("from_number")
    if from_number is None:
        from_number = alias
    elif alias is not None and alias != from_number:
        fields.warnings.append(f"from_number: {alias!r} differs from 'from' {from_number!r}; 'from' is kept")

    cost_details = None
    raw_cost = fields.dict_("cost_details")
    if raw_cost is not None:
        sub = _Fields(raw_cost)
        cost_details = FaxCostDetails(_float(sub, "multiplier"), _float(sub, "notification_cost"))
        fields.warnings.extend(f"cost_details.{warning}" for warning in sub.warnings)

    direction: FaxDirection | str | None = fields.str_("direction")
    if direction is not None:
        with contextlib.suppress(ValueError):  # a direction added since is kept as given
            direction = FaxDirection(direction)
    return FaxRecord(
        id=body["id"],
        status=parse_fax_status(body["status"]),
        owner_id=fields.str_("owner_id"),
        pages=fields.int_("pages"),
        comment=fields.str_("comment"),
        cost_details=cost_details,
        cost=fields.int_("cost"),
        description=fields.str_("description"),
        direction=direction,
        duration=fields.int_("duration"),
        file=fields.str_("file"),
        file_name=fields.str_("file_name"),
        from_number=from_number,
        to=fields.str_("to"),
        header=fields.str_("header"),
        is_read=fields.bool_("is_read"),
        is_spam=fields.bool_("is_spam"),
        last_update=fields.datetime("last_update"),
        max_retry=fields.int_("max_retry"),
        retry_delay=fields.int_("retry_delay"),
        scheduled_time=fields.datetime("scheduled_time"),
        start_time=fields.datetime("start_time"),
        submit_time=fields.datetime("submit_time"),
        cover_page=fields.dict_("cover_page"),
        raw=body,
        parse_warnings=tuple(fields.warnings),
    )


# Requests -----------------------------------------------------------------------------------------


def _account(user_id: object) -> str:
    return f"/accounts/{quote(validate_path_param('user_id', user_id), safe='')}"


def _fax_call(
    config: FaxPlusConfig,
    op: Operation,
    resource: str,
    fax_id: object,
    user_id: object,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> ApiCall:
    fid = validate_path_param("fax_id", fax_id)
    path = f"{_account(user_id)}/{resource}/{quote(fid, safe='')}"
    if query:
        path += "?" + urlencode(query)
    return ApiCall(
        op, path, config.base_url + path, fid, headers or base_headers(config), body, kind=RECORD_KIND
    )


def format_api_time(name: str, value: object) -> str:
    """``YYYY-MM-DD HH:mm:ss`` in UTC from an aware datetime (a naive one is refused: its zone is a
    guess) or a string already in that form."""
    if isinstance(value, str):
        try:
            datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise FaxPlusInputError(
                f"{name} {value!r:.40} must be an aware datetime or 'YYYY-MM-DD HH:mm:ss' (UTC)"
            ) from None
        return value
    if not isinstance(value, datetime):
        raise FaxPlusInputError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise FaxPlusInputError(f"{name} {value.isoformat()} has no time zone; give an aware datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def validate_category(category: object) -> str:
    if category not in CATEGORIES:
        raise FaxPlusInputError(f"category {category!r:.30} must be one of {', '.join(sorted(CATEGORIES))}")
    return str(category)


def list_faxes_call(
    config: FaxPlusConfig,
    category: str,
    *,
    after: str | None = None,
    before: str | None = None,
    limit: int = PAGE_SIZE,
    offset: int = 0,
    user_id: object = "self",
) -> ApiCall:
    """One page of *List fax records*; ``after``/``before`` already formatted (:func:`format_api_time`)."""
    query = {"category": validate_category(category)}
    if after is not None:
        query["after"] = after
    if before is not None:
        query["before"] = before
    query["limit"] = str(limit)
    query["offset"] = str(offset)
    path = f"{_account(user_id)}/faxes?{urlencode(query)}"
    return ApiCall(LIST_FAXES, path, config.base_url + path, "", base_headers(config), kind=RECORD_KIND)


def get_fax_call(config: FaxPlusConfig, fax_id: object, user_id: object = "self") -> ApiCall:
    return _fax_call(config, GET_FAX, "faxes", fax_id, user_id)


def update_fax_call(
    config: FaxPlusConfig,
    fax_id: object,
    *,
    comment: object = None,
    is_read: object = None,
    user_id: object = "self",
) -> ApiCall:
    """*Modify a fax record*: ``{"comment": str, "is_read": bool}``, only what is given (at least one)."""
    payload: dict[str, Any] = {}
    if comment is not None:
        if not isinstance(comment, str):
            raise FaxPlusInputError(f"comment must be a string, got {type(comment).__name__}")
        payload["comment"] = comment
    if is_read is not None:
        if not isinstance(is_read, bool):
            raise FaxPlusInputError(f"is_read must be true or false, got {is_read!r:.20}")
        payload["is_read"] = is_read
    if not payload:
        raise FaxPlusInputError("update_fax needs comment or is_read: there is nothing to modify")
    headers = {**base_headers(config), "Content-Type": "application/json; charset=utf-8"}
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return _fax_call(config, UPDATE_FAX, "faxes", fax_id, user_id, headers=headers, body=body)


def delete_fax_call(config: FaxPlusConfig, fax_id: object, user_id: object = "self") -> ApiCall:
    return _fax_call(config, DELETE_FAX, "faxes", fax_id, user_id)


def validate_format(fmt: object) -> str:
    if fmt not in FILE_FORMATS:
        raise FaxPlusInputError(f"format {fmt!r:.20} must be one of {', '.join(sorted(FILE_FORMATS))}")
    return str(fmt)


def download_fax_call(
    config: FaxPlusConfig, fax_id: object, fmt: object = "pdf", user_id: object = "self"
) -> ApiCall:
    fmt = validate_format(fmt)
    headers = {**base_headers(config), "Accept": f"{FILE_FORMATS[fmt]}, application/json"}
    return _fax_call(config, DOWNLOAD_FAX, "files", fax_id, user_id, query={"format": fmt}, headers=headers)


def download_report_call(config: FaxPlusConfig, fax_id: object, user_id: object = "self") -> ApiCall:
    headers = {**base_headers(config), "Accept": "application/pdf, application/json"}
    return _fax_call(config, DOWNLOAD_REPORT, "report", fax_id, user_id, headers=headers)


# Answers ------------------------------------------------------------------------------------------


def _decoded(call: ApiCall, status: int, body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _malformed(call, status, f"the body is not JSON ({len(body)} bytes)") from None


def parse_get_fax_response(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> FaxRecord:
    if status != 200:
        if 200 < status < 300:
            raise _malformed(call, status, "expected HTTP 200 with a Fax object")
        raise error_from_response(config, call, status, headers, body)
    try:
        return parse_fax_record(_decoded(call, status, body))
    except FaxRecordParseError as exc:
        raise _malformed(call, status, str(exc)) from None


def parse_list_faxes_response(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> list[FaxRecord]:
    """The records of one page ``{"data": {"records": [Fax]}}``; a record that is no ``Fax`` fails the
    whole page, naming it (a page with a hole could hide the very fax a caller looks for)."""
    if status != 200:
        raise error_from_response(config, call, status, headers, body)
    decoded = _decoded(call, status, body)
    data = decoded.get("data") if isinstance(decoded, dict) else None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise _malformed(call, status, "no 'data.records' list in the answer")
    parsed = []
    for index, record in enumerate(records):
        try:
            parsed.append(parse_fax_record(record))
        except FaxRecordParseError as exc:
            fax_id = record.get("id") if isinstance(record, dict) else None
            named = f"record #{index}" + (f" (id {fax_id!r:.80})" if isinstance(fax_id, str) else "")
            raise _malformed(call, status, f"{named} is not a Fax: {exc}") from None
    return parsed


def check_no_content_response(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> None:
    if not 200 <= status < 300:
        raise error_from_response(config, call, status, headers, body)


def check_download_start(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> None:
    """Before streaming a download: a 200 whose content type is not JSON (an error body), else raise.
    ``body`` is what was read of a non-200 answer (its start)."""
    if status != 200:
        raise error_from_response(config, call, status, headers, body)
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if content_type.split(";", 1)[0].strip().lower() == "application/json":
        raise _malformed(call, status, "expected a file, got application/json")


class FaxListPager:
    """One whole *List fax records* listing (sans-I/O: the caller sends :meth:`call` and hands the
    answer to :meth:`feed` until :attr:`done`).

    Keyset paging by time, newest first: after a page whose oldest record has start time ``t``, the next
    request asks ``before=t+1s`` (right whether the server's ``before`` is inclusive or not), so faxes
    arriving meanwhile, above the window, shift nothing. Within a window (records of one second, or
    without a time) it pages by ``offset``, every page overlapping the last by one record, the anchor:
    records may sit to its right (an insertion, or an inclusive ``before``) but an anchor missing from
    the page means the window lost a record before it (a deletion), so the window is listed again from
    its start, at most ``MAX_RESTARTS`` times in a row. A record listed twice counts once. Only a page with
    nothing past its anchor at index 0 ends it; a server that ignores ``offset``, a list that keeps
    changing, or more than ``max_records`` records is an error, never a silently shortened list.
    """

    MAX_RESTARTS = 5

    def __init__(
        self,
        config: FaxPlusConfig,
        category: str,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int | None = None,
        user_id: object = "self",
        max_records: int | None = None,
    ) -> None:
        self.config = config
        self.category = validate_category(category)
        self.after = after
        self.user_id = user_id
        self.limit = limit
        self.max_records = MAX_LIST_RECORDS if max_records is None else max_records
        self.found: dict[str, FaxRecord] = {}
        self.done = False
        self.over_max = False
        self.restarts = 0
        self._before = before  # the window: records older than this (a restart lists it again)
        self._offset = 0  # of the next request, within the window
        self._anchor: str | None = None  # id of the last record listed, expected on the next page
        self._tail: tuple[DateTime | None, int] = (None, 0)  # start time of the last record, run length
        self._stalled = False

    def call(self) -> ApiCall:
        size = PAGE_SIZE
        if self.limit is not None:
            size = min(size, self.limit - len(self.found) + (self._anchor is not None))
        return list_faxes_call(
            self.config,
            self.category,
            after=self.after,
            before=self._before,
            limit=size,
            offset=self._offset,
            user_id=self.user_id,
        )

    def feed(self, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes) -> None:
        page = parse_list_faxes_response(self.config, call, status, headers, body)
        ids = [record.id for record in page]
        if self._anchor is not None and self._anchor not in ids:
            self._restart(call, status)
            return
        at = 0 if self._anchor is None else ids.index(self._anchor) + 1
        fresh = page[at:]
        if not fresh:
            if at <= 1:  # nothing past an anchor in its place (or an empty first page): the end
                self.done = True
                return
            if self._stalled:
                raise _malformed(
                    call,
                    status,
                    f"offset {self._offset} answered the records of offset {self._offset - at + 1}: "
                    "the server does not page by offset",
                )
            self._stalled = True  # the anchor sits to the right: ask again where it is
            self._offset += at - 1
            return
        self._stalled = False
        for record in fresh:
            self.found.setdefault(record.id, record)
            when, run = self._tail
            self._tail = (record.start_time, run + 1 if record.start_time == when and when else 1)
        if len(self.found) > self.max_records:
            self.over_max = True
            raise _malformed(call, status, f"more than {self.max_records:,} {self.category} fax records")
        if self.limit is not None and len(self.found) >= self.limit:
            self.done = True
            return
        self._anchor = page[-1].id
        self._offset += len(page) - 1
        when, run = self._tail
        if when is not None:
            bound = format_api_time("before", when + timedelta(seconds=1))
            if self._before is None or bound < self._before:
                self._before, self._offset, self.restarts = bound, run - 1, 0

    def _restart(self, call: ApiCall, status: int) -> None:
        self.restarts += 1
        if self.restarts > self.MAX_RESTARTS:
            raise _malformed(
                call,
                status,
                f"the {self.category} list changed under each of {self.MAX_RESTARTS + 1} tries to page "
                f"through the records before {self._before or 'now'}",
            )
        log.info("A %s fax record left the list while it was paged; listing its window again", self.category)
        self._offset, self._anchor, self._stalled = 0, None, False
        self._tail = (None, 0)
