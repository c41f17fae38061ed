"""Which fax records are new, without I/O: the window a record watcher lists and its cursor.

Fax records accumulate (no record ever leaves the list the way a fax leaves the outbox), so the cursor
cannot be every id ever seen. It is a time window instead: ``horizon``, the lower bound (``after``) of
the next list, and the ids seen at or after it. The horizon trails the newest record seen by
``lookback`` seconds, so a record that shows up in the list up to ``lookback`` after its own time is
still new; ids fall out of the cursor only when the horizon passes their time (then no list asks for
them again), never because one list answer left them out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_provider_faxplus.records import FaxRecord

log = logging.getLogger(__name__)

CURSOR_VERSION = 1


def record_time(record: FaxRecord) -> int | None:
    """The record's time (epoch seconds): when it started (received or sent), else its last update."""
    for value in (record.start_time, record.last_update, record.submit_time, record.scheduled_time):
        if value is not None:
            return int(value.timestamp())
    return None


def api_time(epoch: int) -> str:
    """The list's ``after`` for ``epoch``: ``YYYY-MM-DD HH:mm:ss`` UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class RecordWindow:
    """The cursor: ``horizon`` (epoch seconds; None lists every record) and ``seen`` (id -> time)."""

    horizon: int | None
    seen: dict[str, int] = field(default_factory=dict)

    def after(self) -> str | None:
        return None if self.horizon is None else api_time(self.horizon)

    def encode(self) -> dict[str, Any]:
        """Ids grouped by time: ``{"v", "h", "t": [[time, [ids]]]}`` (~35 bytes an id)."""
        groups: dict[int, list[str]] = {}
        for fax_id, at in self.seen.items():
            groups.setdefault(at, []).append(fax_id)
        return {
            "v": CURSOR_VERSION,
            "h": self.horizon,
            "t": [[at, ids] for at, ids in sorted(groups.items())],
        }

    @classmethod
    def decode(cls, value: Any) -> RecordWindow | None:
        """The stored cursor, or None for none (or one this version cannot read, said in a warning)."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = {}
        if value is None:
            return None
        try:
            if not isinstance(value, dict) or value.get("v") != CURSOR_VERSION:
                raise ValueError("unknown version")
            horizon = value["h"]
            if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int)):
                raise ValueError("bad horizon")
            seen = {str(fax_id): int(at) for at, ids in value["t"] for fax_id in ids}
        except (KeyError, TypeError, ValueError):
            log.warning("Ignoring a fax record cursor this version cannot read: starting afresh")
            return None
        return cls(horizon, seen)

    def size(self) -> int:
        return len(json.dumps(self.encode()))


def first_window(now: datetime, lookback: float, *, report_existing: bool) -> RecordWindow:
    """The window of a first start: every record when reporting those already there; else the last
    ``lookback`` seconds by this machine's clock, whose records are then taken as the starting point."""
    if report_existing:
        return RecordWindow(None)
    return RecordWindow(int(now.timestamp() - lookback))


def diff(
    window: RecordWindow, records: Iterable[FaxRecord], *, lookback: float, baseline: bool = False
) -> tuple[list[FaxRecord], RecordWindow]:
    """The new records of one list answer (oldest first) and the window after them.

    ``baseline``: the records are the starting point, none is new. A record older than the horizon is
    never new (it was reported before the horizon passed it, or is older than the watch); a record
    without a time counts as the newest one seen, so it is kept for ``lookback`` like the others.
    """
    answer: dict[str, FaxRecord] = {}
    for record in records:
        answer.setdefault(record.id, record)  # a page shifted by a new record repeats one: same fax
    times = [t for t in map(record_time, answer.values()) if t is not None]
    newest = max([*times, *window.seen.values()], default=window.horizon)
    seen = dict(window.seen)
    fresh: list[tuple[int, FaxRecord]] = []
    for fax_id, record in answer.items():
        at = record_time(record)
        if at is None:
            at = newest if newest is not None else 0
        if fax_id in seen or (window.horizon is not None and at < window.horizon):
            continue
        seen[fax_id] = at
        if not baseline:
            fresh.append((at, record))
    horizon = window.horizon
    if newest is not None:
        trailing = int(newest - lookback)
        horizon = trailing if horizon is None else max(horizon, trailing)
    if horizon is not None:
        seen = {fax_id: at for fax_id, at in seen.items() if at >= horizon}
    fresh.sort(key=lambda item: item[0])
    return [record for _, record in fresh], RecordWindow(horizon, seen)


def payload(record: FaxRecord, *, user_id: str, category: str, detected_at: datetime) -> dict[str, Any]:
    """The asset event of one new record (JSON-safe)."""
    return {
        "fax_id": record.id,
        "user_id": user_id,
        "category": category,
        "status": str(record.status),
        "record": record.to_dict(),
        "detected_at": detected_at.astimezone(UTC).isoformat(),
    }


PAYLOAD_KEYS = ("fax_id", "user_id", "category", "status", "record", "detected_at")
WATCHED = ("inbox", "sent")


def read_event(payload: Any) -> dict[str, Any]:
    """The payload of an asset event, checked to be one ``FaxRecordEventTrigger`` yields (an asset may
    receive events from elsewhere, which a DAG should not take for a fax).

    :raises ValueError: naming what is missing or wrong.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"not a fax record event: the payload is {type(payload).__name__}, not an object")
    missing = [key for key in PAYLOAD_KEYS if key not in payload]
    if missing:
        raise ValueError(f"not a fax record event: the payload lacks {missing} (it has {sorted(payload)})")
    if payload["category"] not in WATCHED:
        raise ValueError(f"not a fax record event: category {payload['category']!r}")
    if not isinstance(payload["fax_id"], str) or not payload["fax_id"]:
        raise ValueError(f"not a fax record event: fax_id {payload['fax_id']!r}")
    return dict(payload)
