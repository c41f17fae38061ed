"""Typed outbox records, parsed from the ``Outbox`` schema of the Fax.Plus API.

Parsing is total: any JSON object with string ``id``, ``uid`` and ``status`` gives a record. An optional
field that does not parse (wrong type, a datetime in an unknown format) becomes ``None`` and is named in
``OutboxFax.parse_warnings``; the untouched payload stays in ``OutboxFax.raw``, so nothing is lost.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pendulum import UTC, DateTime


class OutboxStatus(StrEnum):  # the values of constants.OUTBOX_STATUS_VALUES
    """The four states of a fax in the outbox, in the order a fax goes through them."""

    SUBMITTED = "submitted"
    CONVERTING = "converting"
    SCHEDULED_FOR_SENDING = "scheduled_for_sending"
    SENDING = "sending"


OUTBOX_STATUSES: frozenset[OutboxStatus] = frozenset(OutboxStatus)


def parse_status(value: str) -> OutboxStatus | str:
    """Map a status string to the enum; a value outside the spec's four is kept as the plain string."""
    try:
        return OutboxStatus(value)
    except ValueError:
        return value


# "2017-09-24 06:43:04" (UTC by contract) or "2017-09-24 06:43:04 +0000" (explicit offset).
_DATETIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"
    r"\s*(?:(Z)|([+-])(\d{2}):?(\d{2}))?$"
)


def parse_utc_datetime(value: object) -> DateTime | None:
    """Parse a Fax.Plus datetime into a timezone-aware UTC ``pendulum.DateTime``.

    Returns ``None`` for anything that is not a string in one of the spec's formats (a naive value is
    UTC by the API's contract; an explicit offset is converted to UTC).
    """
    if not isinstance(value, str):
        return None
    match = _DATETIME_RE.match(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = match.groups()
    try:
        # The stdlib does the calendar checks and the offset arithmetic; pendulum.DateTime's own
        # constructor is ten times cheaper than pendulum.datetime() (four datetimes per record).
        naive = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((frac or "0").ljust(6, "0")),
        )
    except ValueError:
        return None
    if sign and not zulu:
        offset_minutes = int(off_h) * 60 + int(off_m)
        if offset_minutes >= 24 * 60:
            return None
        try:
            naive -= timedelta(minutes=offset_minutes if sign == "+" else -offset_minutes)
        except OverflowError:  # the offset moves it past year 1 or 9999
            return None
    return DateTime(
        naive.year,
        naive.month,
        naive.day,
        naive.hour,
        naive.minute,
        naive.second,
        naive.microsecond,
        tzinfo=UTC,
    )


def format_utc(value: DateTime | None) -> str | None:
    """ISO-8601 in UTC, for XCom and logs."""
    return None if value is None else value.in_timezone("UTC").isoformat()


@dataclass(frozen=True)
class OutboxComment:
    text: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusChange:
    status: OutboxStatus | str
    at: DateTime | None


@dataclass(frozen=True)
class RetryOptions:
    count: int | None = None
    delay: int | None = None


@dataclass(frozen=True)
class OutboxFax:
    """One fax in the outbox, as returned by *Get outgoing fax*.

    Datetimes are timezone-aware UTC; ``status`` is an :class:`OutboxStatus`, or the raw string when
    Fax.Plus returns a status outside the spec's four.
    """

    id: str
    uid: str
    status: OutboxStatus | str
    comment: OutboxComment = OutboxComment()
    contact_name: str | None = None
    designated_src: str | None = None
    extra_info: dict[str, Any] | None = None
    file_changes: tuple[dict[str, Any], ...] = ()
    files: tuple[str, ...] = ()
    initiated_from: dict[str, Any] | None = None
    ip: str | None = None
    last_updated_status_time: DateTime | None = None
    options: dict[str, Any] | None = None
    page_count: int | None = None
    retry: RetryOptions | None = None
    send_time: DateTime | None = None
    should_enhance: bool | None = None
    src: str | None = None
    status_changes: tuple[StatusChange, ...] = ()
    submit_time: DateTime | None = None
    to: tuple[str, ...] = ()
    cover_page: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    parse_warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def in_outbox_state(self) -> bool:
        """True while the status is one of the spec's four outbox states."""
        return self.status in OUTBOX_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (datetimes as ISO-8601 UTC strings), for XCom."""
        return {
            "id": self.id,
            "uid": self.uid,
            "status": str(self.status),
            "comment": {"text": self.comment.text, "tags": list(self.comment.tags)},
            "contact_name": self.contact_name,
            "designated_src": self.designated_src,
            "extra_info": self.extra_info,
            "file_changes": [dict(change) for change in self.file_changes],
            "files": list(self.files),
            "initiated_from": self.initiated_from,
            "ip": self.ip,
            "last_updated_status_time": format_utc(self.last_updated_status_time),
            "options": self.options,
            "page_count": self.page_count,
            "retry": None if self.retry is None else {"count": self.retry.count, "delay": self.retry.delay},
            "send_time": format_utc(self.send_time),
            "should_enhance": self.should_enhance,
            "src": self.src,
            "status_changes": [
                {"status": str(change.status), "at": format_utc(change.at)} for change in self.status_changes
            ],
            "submit_time": format_utc(self.submit_time),
            "to": list(self.to),
            "cover_page": self.cover_page,
        }


class OutboxParseError(ValueError):
    """The body is not an ``Outbox`` object: not an object, or ``id``/``uid``/``status`` missing."""


class _Fields:
    """Reads optional fields leniently, collecting what did not parse."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.warnings: list[str] = []

    def _bad(self, name: str, expected: str) -> None:
        self.warnings.append(f"{name}: expected {expected}, got {_describe(self.body[name])}")

    def str_(self, name: str) -> str | None:
        value = self.body.get(name)
        if value is None or isinstance(value, str):
            return value
        self._bad(name, "a string")
        return None

    def bool_(self, name: str) -> bool | None:
        value = self.body.get(name)
        if value is None or isinstance(value, bool):
            return value
        self._bad(name, "a boolean")
        return None

    def int_(self, name: str) -> int | None:
        value = self.body.get(name)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        self._bad(name, "an integer")
        return None

    def dict_(self, name: str) -> dict[str, Any] | None:
        value = self.body.get(name)
        if value is None or isinstance(value, dict):
            return value
        self._bad(name, "an object")
        return None

    def str_list(self, name: str) -> tuple[str, ...]:
        value = self.body.get(name)
        if value is None:
            return ()
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        self._bad(name, "a list of strings")
        return ()

    def datetime(self, name: str) -> DateTime | None:
        value = self.body.get(name)
        if value is None:
            return None
        parsed = parse_utc_datetime(value)
        if parsed is None:
            self._bad(name, "a datetime 'YYYY-MM-DD HH:mm:ss[ +0000]'")
        return parsed


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_outbox(body: object) -> OutboxFax:
    """Build an :class:`OutboxFax` from a decoded JSON body, or raise :class:`OutboxParseError`."""
    if not isinstance(body, dict):
        raise OutboxParseError(f"expected a JSON object, got {type(body).__name__}")
    missing = [name for name in ("id", "uid", "status") if not isinstance(body.get(name), str)]
    if missing:
        raise OutboxParseError(f"required field(s) missing or not strings: {', '.join(missing)}")

    fields = _Fields(body)
    comment = _parse_comment(fields)
    retry = _parse_retry(fields)
    status_changes = _parse_status_changes(fields)
    file_changes: tuple[dict[str, Any], ...] = ()
    raw_changes = body.get("file_changes")
    if isinstance(raw_changes, list) and all(isinstance(item, dict) for item in raw_changes):
        file_changes = tuple(raw_changes)
    elif raw_changes is not None:
        fields._bad("file_changes", "a list of objects")

    return OutboxFax(
        id=body["id"],
        uid=body["uid"],
        status=parse_status(body["status"]),
        comment=comment,
        contact_name=fields.str_("contact_name"),
        designated_src=fields.str_("designated_src"),
        extra_info=fields.dict_("extra_info"),
        file_changes=file_changes,
        files=fields.str_list("files"),
        initiated_from=fields.dict_("initiated_from"),
        ip=fields.str_("ip"),
        last_updated_status_time=fields.datetime("last_updated_status_time"),
        options=fields.dict_("options"),
        page_count=fields.int_("page_count"),
        retry=retry,
        send_time=fields.datetime("send_time"),
        should_enhance=fields.bool_("should_enhance"),
        src=fields.str_("src"),
        status_changes=status_changes,
        submit_time=fields.datetime("submit_time"),
        to=fields.str_list("to"),
        cover_page=fields.dict_("cover_page"),
        raw=body,
        parse_warnings=tuple(fields.warnings),
    )


def _parse_comment(fields: _Fields) -> OutboxComment:
    value = fields.body.get("comment")
    if value is None:
        return OutboxComment()
    if isinstance(value, str):  # tolerate the PUT shape coming back
        return OutboxComment(text=value)
    if not isinstance(value, dict):
        fields._bad("comment", "an object {text, tags}")
        return OutboxComment()
    sub = _Fields(value)
    text = sub.str_("text") or ""
    tags = sub.str_list("tags")
    fields.warnings.extend(f"comment.{warning}" for warning in sub.warnings)
    return OutboxComment(text=text, tags=tags)


def _parse_retry(fields: _Fields) -> RetryOptions | None:
    value = fields.dict_("retry")
    if value is None:
        return None
    sub = _Fields(value)
    retry = RetryOptions(count=sub.int_("count"), delay=sub.int_("delay"))
    fields.warnings.extend(f"retry.{warning}" for warning in sub.warnings)
    return retry


def _parse_status_changes(fields: _Fields) -> tuple[StatusChange, ...]:
    value = fields.body.get("status_changes")
    if value is None:
        return ()
    if not isinstance(value, list):
        fields._bad("status_changes", "a list")
        return ()
    changes = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("status"), str):
            fields.warnings.append(f"status_changes[{index}]: expected an object with a string status")
            continue
        at = parse_utc_datetime(item.get("at"))
        if at is None:
            fields.warnings.append(f"status_changes[{index}].at: not a datetime: {_describe(item.get('at'))}")
        changes.append(StatusChange(status=parse_status(item["status"]), at=at))
    return tuple(changes)
