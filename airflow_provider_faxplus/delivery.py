"""Which fax record is the sent record of an outbox fax, without I/O (the sensor and its trigger share it).

Fax.Plus documents no link from an outbox id to the fax record of the sent fax. Two cases are handled:
the record has the outbox id (``matched_by="id"``), or it has an id of its own and is found among the
``sent`` records by destination, sender, submit time and comment (``matched_by="fields"``). A record
whose id is another outbox id of the same send is never a candidate. More than one candidate is an
ambiguity that fails naming them; a lone candidate submitted before this fax (by Fax.Plus's own clock, as
the outbox showed it) may be an earlier fax's record and is not taken: the wait goes on. Never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pendulum import DateTime

from airflow_provider_faxplus.models import format_utc, parse_utc_datetime
from airflow_provider_faxplus.records import FaxRecord

# A record's submit time within this of the send's counts as the same submission (the API's times have
# whole seconds, and the send's own clock may differ from Fax.Plus's by a little).
SUBMIT_TOLERANCE = timedelta(seconds=120)
OUTCOMES = ("delivered", "failed", "partial")
# A field from the API in a message or an event is cut to this; an ambiguity names this many candidates.
MAX_FIELD_CHARS = 200
MAX_CANDIDATES = 10


def bounded(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """``value`` as text, cut with a marker past ``limit`` characters (a hostile or broken answer's field
    must not make an exception, a log line or a trigger event megabytes long)."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit} more characters]"


PARTIAL_AS = ("delivered", "failed")


@dataclass(frozen=True)
class SentFax:
    """What is known of a sent fax: from the SendFaxOperator's XCom and from the outbox while it was there."""

    outbox_fax_id: str
    to: str | None = None
    from_number: str | None = None
    submitted_at: DateTime | None = None
    comment: str | None = None
    # The other outbox ids of the same send (SendFaxOperator's ``faxes``): never this fax's record.
    siblings: tuple[str, ...] = ()
    # ``submitted_at`` is Fax.Plus's own (the outbox record's), not the sending worker's clock.
    exact_time: bool = False

    def fields_known(self) -> bool:
        return self.to is not None and self.submitted_at is not None

    def merged(self, other: SentFax) -> SentFax:
        """Fields of ``self``, each missing one taken from ``other``."""
        return SentFax(
            self.outbox_fax_id,
            self.to if self.to is not None else other.to,
            self.from_number if self.from_number is not None else other.from_number,
            self.submitted_at if self.submitted_at is not None else other.submitted_at,
            self.comment if self.comment is not None else other.comment,
            self.siblings or other.siblings,
            self.exact_time if self.submitted_at is not None else other.exact_time,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "outbox_fax_id": self.outbox_fax_id,
            "to": self.to,
            "from_number": self.from_number,
            "submitted_at": format_utc(self.submitted_at),
            "comment": self.comment,
            "siblings": list(self.siblings),
            "exact_time": self.exact_time,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SentFax:
        submitted = data.get("submitted_at")
        return cls(
            str(data["outbox_fax_id"]),
            data.get("to"),
            data.get("from_number"),
            parse_utc_datetime(submitted),
            data.get("comment"),
            tuple(str(s) for s in data.get("siblings") or ()),
            bool(data.get("exact_time", False)),
        )

    @classmethod
    def from_outbox(cls, record: Any) -> SentFax:
        """From an ``OutboxFax`` (one destination: the sensor waits on one outbox id)."""
        to = record.to[0] if len(record.to) == 1 else None
        return cls(
            record.id,
            to,
            record.src,
            record.submit_time,
            record.comment.text,
            exact_time=record.submit_time is not None,
        )


def sent_fax_from_send_result(outbox_fax_id: str, result: object) -> SentFax:
    """The fields SendFaxOperator's XCom keeps of ``outbox_fax_id`` (its ``faxes``); empty if none."""
    from airflow_provider_faxplus.exceptions import FaxPlusInputError

    if result is None:
        return SentFax(outbox_fax_id)
    if not isinstance(result, Mapping):
        raise FaxPlusInputError(
            f"sent must be SendFaxOperator's XCom (a mapping, e.g. send.output), got {type(result).__name__}"
        )
    faxes = result.get("faxes")
    if not isinstance(faxes, Mapping):
        raise FaxPlusInputError("sent has no 'faxes': pass the XCom of a SendFaxOperator (send.output)")
    entry = faxes.get(outbox_fax_id)
    if entry is None:
        raise FaxPlusInputError(
            f"sent does not list outbox fax {outbox_fax_id!r} (it lists {', '.join(map(repr, faxes))})"
        )
    siblings = [str(other) for other in faxes if other != outbox_fax_id]
    return SentFax.from_dict({**entry, "outbox_fax_id": outbox_fax_id, "siblings": siblings})


class AmbiguousRecordError(Exception):
    """More than one sent record fits the fax's fields (or an id match contradicts them)."""


@dataclass(frozen=True)
class Match:
    record: FaxRecord
    matched_by: str  # "id" or "fields"


def _same_time(a: DateTime | None, b: DateTime | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= SUBMIT_TOLERANCE


def _same_sender(record: FaxRecord, sent: SentFax) -> bool:
    # "no_number" sends from no number of the account: what the record then shows is not documented.
    if sent.from_number in (None, "no_number"):
        return True
    return record.from_number in (None, sent.from_number)


def _same_comment(record: FaxRecord, sent: SentFax) -> bool:
    return sent.comment is None or (record.comment or "") == sent.comment


def fits(record: FaxRecord, sent: SentFax) -> bool:
    """The record is an outgoing fax to the destination, from the sender, submitted at the send's time,
    with its comment text."""
    return (
        str(record.direction or "outgoing") == "outgoing"
        and record.to == sent.to
        and _same_sender(record, sent)
        and _same_time(record.submit_time, sent.submitted_at)
        and _same_comment(record, sent)
    )


def describe(record: FaxRecord) -> str:
    return (
        f"{bounded(record.id)} (to {bounded(record.to)}, from {bounded(record.from_number)}, "
        f"submitted {format_utc(record.submit_time)}, status {bounded(record.status)})"
    )


def match_by_id(record: FaxRecord, sent: SentFax) -> Match:
    """A record with the outbox id is the sent fax, unless what is known of the send contradicts it."""
    contradicts = [
        name
        for name, ok in (
            ("destination", sent.to is None or record.to in (None, sent.to)),
            ("direction", str(record.direction or "outgoing") == "outgoing"),
        )
        if not ok
    ]
    if contradicts:
        raise AmbiguousRecordError(
            f"fax record {describe(record)} has the outbox id {sent.outbox_fax_id!r} but another "
            f"{' and '.join(contradicts)} than the fax sent to {sent.to}: not taken as its record"
        )
    return Match(record, "id")


def _before_ours(record: FaxRecord, sent: SentFax) -> bool:
    """Submitted before this fax by Fax.Plus's clock: perhaps an earlier fax's record."""
    return (
        sent.exact_time
        and sent.submitted_at is not None
        and record.submit_time is not None
        and record.submit_time < sent.submitted_at
    )


def _candidates(found: list[FaxRecord]) -> str:
    named = "; ".join(describe(r) for r in found[:MAX_CANDIDATES])
    return named if len(found) <= MAX_CANDIDATES else f"{named}; and {len(found) - MAX_CANDIDATES} more"


def match_by_fields(records: Iterable[FaxRecord], sent: SentFax) -> Match | None:
    """The one sent record that fits ``sent``; None if none does (yet) or the only one may be an earlier
    fax's; an error naming them if several do."""
    found = [r for r in records if r.id not in sent.siblings and fits(r, sent)]
    if len(found) > 1:
        raise AmbiguousRecordError(
            f"outbox fax {sent.outbox_fax_id!r}: {len(found)} sent records fit its destination {sent.to}, "
            f"sender {sent.from_number}, submit time {format_utc(sent.submitted_at)} and comment "
            f"{bounded(repr(sent.comment))}: {_candidates(found)}. Not guessing which is its record"
        )
    if not found or _before_ours(found[0], sent):
        return None
    return Match(found[0], "fields")


def delivery_xcom(match: Match, sent: SentFax) -> dict[str, Any]:
    """The sensor's XCom; ``outcome`` is ``delivered``, ``failed``, ``partial`` or ``unknown``."""
    record = match.record
    return {
        "outbox_fax_id": sent.outbox_fax_id,
        "fax_id": record.id,
        "status": str(record.status),
        "outcome": record.outcome,
        "record": record.to_dict(),
        "matched_by": match.matched_by,
    }


def failure_message(xcom: Mapping[str, Any]) -> str:
    record = xcom["record"]
    return (
        f"fax {xcom['outbox_fax_id']!r} (record {xcom['fax_id']!r}, to {record.get('to')}) "
        f"was not delivered: status {bounded(xcom['status'])}, "
        f"description {bounded(repr(record.get('description')))}"
    )


def no_record_message(sent: SentFax, grace_period: float) -> str:
    """Why the wait for a record that only the outbox id could find ends after the grace period."""
    missing = [
        name
        for name, value in (("destination", sent.to), ("submit time", sent.submitted_at))
        if value is None
    ]
    return (
        f"outbox fax {sent.outbox_fax_id!r} left the outbox {grace_period:.0f} s ago "
        f"and no fax record has its id; a record with an id of its own is found by its fields, "
        f"and the {' and '.join(missing)} are unknown (the sensor never saw the fax in the outbox): "
        "pass sent=<the SendFaxOperator's output>"
    )
