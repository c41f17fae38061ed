"""Fax records of the sandbox, without HTTP: sent records made from outbox faxes that left, received
faxes injected through the control API, and the small real PDF and TIFF files they serve.

Fax.Plus documents no link from an outbox id to the record of the sent fax, so the id a sent record
gets is a setting: ``same`` (the outbox id) or ``new`` (an id of its own). Its outcome is set per
outbox fax or by default (``success``; any ``failed_*``, ``partially_sent``, ``insufficient_credit``).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class SandboxInputError(ValueError):
    """A control-API request about fax records is invalid (answered 400, as state.SandboxInputError)."""


def fmt_plain(ts: float) -> str:
    """``YYYY-MM-DD HH:mm:ss`` UTC: the spec's (and the SDK's) format of naive API times."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


CATEGORIES = ("inbox", "sent", "spam")
# faxplus-api 3.0.5 FaxStatus.
STATUSES = frozenset(
    {
        "success",
        "partially_sent",
        "partially_received",
        "insufficient_credit",
        "failed",
        "failed_internal_process_error",
        "failed_user_busy",
        "failed_no_answer",
        "failed_unallocated_number",
        "failed_office_converter_issue",
        "failed_separate_file_pages_issue",
        "failed_render_header_issue",
        "failed_invalid_number_format",
        "failed_mimetype_not_supported",
        "failed_destination_not_supported",
        "failed_image_preparation",
        "failed_to_send",
        "failed_normal_temporary_failure",
        "failed_unknown_converter_issue",
        "failed_normal_clearing",
        "failed_convert_to_tiff_issue",
        "failed_fs_49",
        "failed_fs_2",
    }
)
DESCRIPTIONS = {"success": "OK", "partially_sent": "Some pages were not sent"}
ID_POLICIES = ("same", "new")
FROM_FIELDS = ("from", "from_number")  # the SDK's wire name, and the name apidoc's examples show


@dataclass
class Record:
    id: str
    owner: str
    category: str
    at: float
    fax: dict[str, Any]
    file_size: int = 0  # 0: the plain small file; more: padded to this many bytes
    outbox_fax_id: str | None = None
    deleted: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "category": self.category,
            "outbox_fax_id": self.outbox_fax_id,
            "deleted": self.deleted,
            "status": self.fax["status"],
            "comment": self.fax["comment"],
            "is_read": self.fax["is_read"],
        }


@dataclass
class RecordStore:
    records: dict[str, Record] = field(default_factory=dict)
    default_outcome: dict[str, Any] = field(default_factory=lambda: {"status": "success"})
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)  # outbox id -> outcome
    id_policy: str = "same"
    from_field: str = "from"
    page_cap: int = 1000  # a list answers at most this many records, whatever the limit asked
    made_from: set[str] = field(default_factory=set)  # outbox ids that have their sent record
    # A change to the list between two pages: after list answer ``after``, ``delete`` ids, ``receive`` n.
    between_pages: dict[str, Any] | None = None
    pages_answered: int = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    # Settings and injection (control API) ------------------------------------------------------

    def configure(self, data: dict[str, Any]) -> dict[str, Any]:
        if "default_outcome" in data:
            self.default_outcome = _outcome(data["default_outcome"])
        if "id_policy" in data:
            if data["id_policy"] not in ID_POLICIES:
                raise SandboxInputError(f"id_policy must be one of {', '.join(ID_POLICIES)}")
            self.id_policy = data["id_policy"]
        if "from_field" in data:
            if data["from_field"] not in FROM_FIELDS:
                raise SandboxInputError(f"from_field must be one of {', '.join(FROM_FIELDS)}")
            self.from_field = data["from_field"]
        if "page_cap" in data:
            cap = data["page_cap"]
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise SandboxInputError("page_cap must be a whole number >= 1")
            self.page_cap = cap
        if "between_pages" in data:
            self.between_pages = _between_pages(data["between_pages"])
            self.pages_answered = 0
        return {
            "default_outcome": self.default_outcome,
            "id_policy": self.id_policy,
            "from_field": self.from_field,
            "page_cap": self.page_cap,
            "between_pages": self.between_pages,
        }

    def set_outcome(self, data: dict[str, Any]) -> dict[str, Any]:
        outbox_fax_id = data.get("outbox_fax_id")
        if not isinstance(outbox_fax_id, str) or not outbox_fax_id:
            raise SandboxInputError("outbox_fax_id must be a non-empty string")
        outcome = _outcome(data)
        if "id" in data:
            if not isinstance(data["id"], str) or not data["id"]:
                raise SandboxInputError("id must be a non-empty string")
            outcome["id"] = data["id"]
        self.outcomes[outbox_fax_id] = outcome
        return {"outbox_fax_id": outbox_fax_id, **outcome}

    def receive(self, resolve_user: Callable[[str], str | None], data: dict[str, Any], now: float) -> Record:
        """A fax received by the account (``category`` inbox or spam)."""
        owner = resolve_user(_str(data, "user_id", "self"))
        if owner is None:
            raise SandboxInputError(f"unknown user {data.get('user_id')!r}")
        category = _str(data, "category", "inbox")
        if category not in ("inbox", "spam"):
            raise SandboxInputError("a received fax's category is inbox or spam")
        status = _str(data, "status", "success")
        if status not in ("success", "partially_received") and not status.startswith("failed"):
            raise SandboxInputError("a received fax's status is success, partially_received or failed*")
        fax_id = _str(data, "id", uuid.uuid4().hex)
        if fax_id in self.records:
            raise SandboxInputError(f"fax record {fax_id!r} exists already")
        pages = _int(data, "pages", 1)
        fax = self._fax(
            fax_id,
            owner,
            status=status,
            description=_str(data, "description", DESCRIPTIONS.get(status, "")),
            direction="incoming",
            sender=_str(data, "from", "+16699990001"),
            to=_str(data, "to", "+16699990000"),
            pages=pages,
            comment=_str(data, "comment", ""),
            at=now,
        )
        fax["is_spam"] = category == "spam"
        fax["is_read"] = False
        record = Record(fax_id, owner, category, now, fax, _int(data, "file_size", 0))
        self.records[fax_id] = record
        return record

    # Sent records from the outbox -------------------------------------------------------------

    def sync(self, outbox_faxes: Iterable[Any], now: float) -> None:
        """Every outbox fax that has left by ``now`` (sent, not cancelled) gets its sent record, once."""
        for outbox_fax in list(outbox_faxes):
            left = outbox_fax.left_at()
            if left is None or left > now or outbox_fax.id in self.made_from:
                continue
            self.made_from.add(outbox_fax.id)
            outcome = self.outcomes.get(outbox_fax.id, self.default_outcome)
            fax_id = outcome.get("id") or (outbox_fax.id if self.id_policy == "same" else uuid.uuid4().hex)
            record = outbox_fax.to_outbox(outbox_fax.created_at, stage=0)
            pages = record.get("page_count") or 1
            status = outcome["status"]
            fax = self._fax(
                fax_id,
                outbox_fax.owner,
                status=status,
                description=outcome.get("description", DESCRIPTIONS.get(status, status.replace("_", " "))),
                direction="outgoing",
                sender=record.get("src") or "no_number",
                to=(record.get("to") or ["+16699990000"])[0],
                pages=pages,
                comment=outbox_fax.comment_text,
                at=left,
                submit_time=outbox_fax.created_at,
            )
            fax["cost"] = 0 if status.startswith("failed") or status == "insufficient_credit" else pages
            self.records[fax_id] = Record(fax_id, outbox_fax.owner, "sent", left, fax, 0, outbox_fax.id)

    def _fax(
        self,
        fax_id: str,
        owner: str,
        *,
        status: str,
        description: str,
        direction: str,
        sender: str,
        to: str,
        pages: int,
        comment: str,
        at: float,
        submit_time: float | None = None,
    ) -> dict[str, Any]:
        """A ``Fax`` of faxplus-api 3.0.5 (every property)."""
        fax: dict[str, Any] = {
            "id": fax_id,
            "owner_id": owner,
            "pages": pages,
            "status": status,
            "comment": comment,
            "cost_details": {"multiplier": 1.0, "notification_cost": 0.0},
            "cost": pages,
            "description": description,
            "direction": direction,
            "duration": 30 * pages,
            "file": fax_id,
            "file_name": f"{fax_id}.pdf",
            self.from_field: sender,
            "to": to,
            "header": "",
            "is_read": direction == "outgoing",
            "is_spam": False,
            "last_update": fmt_plain(at),
            "max_retry": 0,
            "retry_delay": 0,
            "scheduled_time": fmt_plain(submit_time if submit_time is not None else at),
            "start_time": fmt_plain(at),
            "cover_page": None,
        }
        if submit_time is not None:
            fax["submit_time"] = fmt_plain(submit_time)
        return fax

    def page_answered(self, resolve_user: Any, now: float) -> None:
        """Counts list answers; applies ``between_pages`` once, right after the one it names."""
        self.pages_answered += 1
        change = self.between_pages
        if change is None or self.pages_answered != change["after"]:
            return
        for fax_id in change["delete"]:
            if fax_id in self.records:
                self.records[fax_id].deleted = True
        for n in range(change["receive"]):
            self.receive(resolve_user, {"id": f"arrived-{self.pages_answered}-{n:04d}"}, now)

    # Reads ----------------------------------------------------------------------------------------

    def find(self, owner: str, fax_id: str) -> Record | None:
        record = self.records.get(fax_id)
        if record is None or record.deleted or record.owner != owner:
            return None
        return record

    def listing(
        self, owner: str, category: str | None, after: float | None, before: float | None
    ) -> list[Record]:
        """Newest first, as Fax.Plus's list is documented to sort by date by default."""
        found = [
            r
            for r in self.records.values()
            if r.owner == owner
            and not r.deleted
            and (category is None or r.category == category)
            and (after is None or r.at >= after)
            and (before is None or r.at < before)
        ]
        return sorted(found, key=lambda r: (-r.at, r.id))


def _between_pages(data: object) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise SandboxInputError("between_pages is an object {after, delete, receive}")
    after, receive = _int(data, "after", 1), _int(data, "receive", 0)
    delete = data.get("delete", [])
    if after < 1 or not isinstance(delete, list) or not all(isinstance(i, str) for i in delete):
        raise SandboxInputError("between_pages: after >= 1, delete a list of fax ids")
    return {"after": after, "delete": delete, "receive": receive}


def _outcome(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SandboxInputError("an outcome is an object {status, description}")
    status = data.get("status")
    if status not in STATUSES and not (isinstance(status, str) and status.startswith("failed_")):
        raise SandboxInputError(f"status {status!r} is not a fax record status (success, failed_*, ...)")
    outcome: dict[str, Any] = {"status": status}
    if "description" in data:
        if not isinstance(data["description"], str):
            raise SandboxInputError("description must be a string")
        outcome["description"] = data["description"]
    return outcome


def _str(data: dict[str, Any], name: str, default: str) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise SandboxInputError(f"{name} must be a string")
    return value


def _int(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SandboxInputError(f"{name} must be a whole number >= 0")
    return value


# Files ---------------------------------------------------------------------------------------------


def pdf_file(title: str, size: int = 0) -> tuple[int, Iterator[bytes]]:
    """A valid one-page PDF showing ``title``, as its length and its chunks; ``size`` pads it (PDF comment
    lines) to about that many bytes without building it in memory, for download tests."""
    text = title.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    content = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode("latin-1", errors="replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    head = b"%PDF-1.4\n"
    lines = max(0, size - 1000) // 1000
    base = len(head) + lines * 1000
    tail = bytearray()
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(base + len(tail))
        tail += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = base + len(tail)
    tail += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    tail += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    tail += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)

    def chunks() -> Iterator[bytes]:
        yield head
        line = b"%" + b"x" * 998 + b"\n"
        full, rest = divmod(lines, 64)
        block = line * 64
        for _ in range(full):
            yield block
        if rest:
            yield line * rest
        yield bytes(tail)

    return base + len(tail), chunks()


def pdf_bytes(title: str) -> bytes:
    return b"".join(pdf_file(title)[1])


def tiff_bytes() -> bytes:
    """A valid 8x1 bilevel TIFF (little-endian, uncompressed, one strip)."""
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 3, 1, 8),  # ImageWidth
        (257, 3, 1, 1),  # ImageLength
        (258, 3, 1, 1),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 0),  # Photometric: white is zero
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),  # StripOffsets: right after the IFD
        (278, 3, 1, 1),  # RowsPerStrip
        (279, 4, 1, 1),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\xaa"
