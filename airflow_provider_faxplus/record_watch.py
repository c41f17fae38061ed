"""Which fax records are new, without I/O: the window a record watcher lists and its cursor.

Fax records accumulate (no record ever leaves the list the way a fax leaves the outbox), so the cursor
cannot be every id ever seen. It is a time window instead, on the server's clock (each list answer's
``Date``): ``horizon``, the lower bound (``after``) of the next list, and the ids seen at or after it.

Rules:

- new: a record whose id was never reported, listed at or after the horizon; on a first start without
  ``report_existing``, not if it is in that start's first answer or its time is before the server's
  time of that start (``since``), so an empty or short first answer invents nothing;
- the horizon trails the newest record time by ``lookback`` and never passes server-now minus
  ``lookback``: a record dated after server-now is reported once, with a parse warning, as of server-now;
- a record without a time counts as listed at server-now;
- ids leave ``seen`` when the horizon passes their time and are kept (hashed) in ``gone``, the newest
  ``GONE_MAX`` of them: a record already reported whose time moves, or goes missing, is not reported
  again while its id is there (an id listed again stays there);
- the cursor fits ``limit`` bytes (:meth:`RecordWindow.fit`): the oldest ``gone`` first, then the
  horizon moves up past the oldest seconds of ``seen`` (records then listed later than that are lost).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_provider_faxplus.protocol import validate_path_param
from airflow_provider_faxplus.records import FaxRecord

log = logging.getLogger(__name__)

CURSOR_VERSION = 2
GONE_MAX = 2_000
MAX_FIELD_CHARS = 4_096  # a string field of an event's record longer than this is cut
TRUNCATED = "…[truncated]"


def record_time(record: FaxRecord) -> int | None:
    """The record's time (epoch seconds): when it started (received or sent), else its last update."""
    for value in (record.start_time, record.last_update, record.submit_time, record.scheduled_time):
        if value is not None:
            return int(value.timestamp())
    return None


def api_time(epoch: int) -> str:
    """The list's ``after`` for ``epoch``: ``YYYY-MM-DD HH:mm:ss`` UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def id_key(fax_id: str) -> str:
    """The cursor's form of an id: 72 bits of its SHA-256 (12 characters, whatever the id's length)."""
    return base64.urlsafe_b64encode(
        hashlib.sha256(fax_id.encode("utf-8", "surrogatepass")).digest()[:9]
    ).decode()


def refused_id(fax_id: str) -> str | None:
    """Why the hook would refuse ``fax_id`` as a path segment (None: it is usable)."""
    if any(char.isspace() for char in fax_id):
        return "it contains whitespace"
    try:
        validate_path_param("fax_id", fax_id)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class RecordWindow:
    """The cursor: ``horizon`` (epoch seconds; None lists every record), ``seen`` (id key -> time),
    ``since`` (server time of a first start without ``report_existing``: older records are the
    starting point) and ``gone`` (id keys that left ``seen``, oldest first)."""

    horizon: int | None
    seen: dict[str, int] = field(default_factory=dict)
    since: int | None = None
    gone: list[str] = field(default_factory=list)

    def after(self) -> str | None:
        return None if self.horizon is None else api_time(self.horizon)

    def encode(self) -> dict[str, Any]:
        """``{"v", "h", "s", "t": [[time, [keys]]], "g": [keys]}`` (~16 bytes an id)."""
        groups: dict[int, list[str]] = {}
        for key, at in self.seen.items():
            groups.setdefault(at, []).append(key)
        return {
            "v": CURSOR_VERSION,
            "h": self.horizon,
            "s": self.since,
            "t": [[at, sorted(keys)] for at, keys in sorted(groups.items())],
            "g": list(self.gone),
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
            if not isinstance(value, dict) or value.get("v") not in (1, CURSOR_VERSION):
                raise ValueError("unknown version")
            horizon, since = value["h"], value.get("s")
            for number in (horizon, since):
                if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
                    raise ValueError("bad time")
            old = value["v"] == 1  # version 1 kept whole ids
            seen = {
                (id_key(str(key)) if old else str(key)): int(at) for at, keys in value["t"] for key in keys
            }
            gone = [str(key) for key in value.get("g", [])]
        except (KeyError, TypeError, ValueError):
            log.warning("Ignoring a fax record cursor this version cannot read: starting afresh")
            return None
        return cls(horizon, seen, since, gone)

    def size(self) -> int:
        return len(json.dumps(self.encode()))

    def fit(self, limit: int) -> RecordWindow:
        """This window, shed to at most ``limit`` bytes encoded: the oldest ``gone`` first, then the
        horizon moves up past the oldest second of ``seen``, until it fits or one second is left."""
        window = RecordWindow(self.horizon, dict(self.seen), self.since, list(self.gone))
        excess = window.size() - limit
        if excess <= 0:
            return window
        drop = min(len(window.gone), -(-excess // 16))
        window.gone = window.gone[drop:]
        while window.size() > limit and window.gone:
            window.gone = window.gone[max(1, len(window.gone) // 8) :]
        times = sorted(set(window.seen.values()))
        while window.size() > limit and len(times) > 1:
            oldest = times.pop(0)
            window.horizon = times[0]
            window.seen = {key: at for key, at in window.seen.items() if at != oldest}
        if window.size() > limit:
            log.warning(
                "The fax record cursor holds %d records of one second: %d bytes, over %d",
                len(window.seen),
                window.size(),
                limit,
            )
        else:
            log.warning(
                "The fax record cursor was over %d bytes: records listed later than %s are not reported",
                limit,
                window.after(),
            )
        return window


def first_window(server_now: int, lookback: float, *, report_existing: bool) -> RecordWindow:
    """The window of a first start: every record when reporting those already there; else the last
    ``lookback`` seconds by the server's clock, whose records before ``server_now`` are the starting
    point."""
    if report_existing:
        return RecordWindow(None)
    return RecordWindow(int(server_now - lookback), since=server_now)


def diff(
    window: RecordWindow,
    records: Iterable[FaxRecord],
    *,
    lookback: float,
    server_now: int,
    first: bool = False,
) -> tuple[list[FaxRecord], RecordWindow]:
    """The new records of one list answer (oldest first, a future-dated one with a parse warning) and
    the window after them. ``first``: the first answer of a first start (with ``since``, its records are
    the starting point)."""
    answer: dict[str, FaxRecord] = {}
    for record in records:
        answer.setdefault(record.id, record)  # a page shifted by a new record repeats one: same fax
    seen = dict(window.seen)
    gone = dict.fromkeys(window.gone)
    fresh: list[tuple[int, FaxRecord]] = []
    for fax_id, record in answer.items():
        key = id_key(fax_id)
        listed = record_time(record)
        at = server_now if listed is None else min(listed, server_now)
        if key in gone:
            gone.pop(key)
            gone[key] = None  # listed again: kept among the newest
            continue
        if key in seen or (window.horizon is not None and at < window.horizon):
            continue
        seen[key] = at
        if window.since is not None and (first or at < window.since):
            continue  # the starting point
        if listed is not None and listed > server_now:
            warning = f"time {api_time(listed)} is after the server's {api_time(server_now)}: taken as now"
            record = dataclasses.replace(record, parse_warnings=(*record.parse_warnings, warning))
        fresh.append((at, record))
    newest = max(seen.values(), default=None)
    horizon = window.horizon
    if newest is not None:
        trailing = int(min(newest, server_now) - lookback)
        horizon = trailing if horizon is None else max(horizon, trailing)
    if horizon is not None:
        for key, at in sorted(seen.items(), key=lambda item: item[1]):
            if at < horizon:
                del seen[key]
                gone[key] = None
    since = window.since if window.since is not None and (horizon is None or horizon < window.since) else None
    fresh.sort(key=lambda item: item[0])
    kept = list(gone)[-GONE_MAX:]
    return [record for _, record in fresh], RecordWindow(horizon, seen, since, kept)


def _bounded(value: Any) -> tuple[Any, list[str]]:
    """``value`` with every string over ``MAX_FIELD_CHARS`` cut, and the paths cut."""
    cut: list[str] = []

    def walk(item: Any, path: str) -> Any:
        if isinstance(item, str) and len(item) > MAX_FIELD_CHARS:
            cut.append(f"{path} ({len(item):,} characters)")
            return item[:MAX_FIELD_CHARS] + TRUNCATED
        if isinstance(item, dict):
            return {key: walk(sub, f"{path}.{key}") for key, sub in list(item.items())[:64]}
        if isinstance(item, list):
            return [walk(sub, f"{path}[{n}]") for n, sub in enumerate(item[:64])]
        return item

    return walk(value, "record"), cut


def payload(record: FaxRecord, *, user_id: str, category: str, detected_at: datetime) -> dict[str, Any]:
    """The asset event of one new record (JSON-safe, with the record's ``parse_warnings``; a string
    field over ``MAX_FIELD_CHARS`` is cut, ending in ``TRUNCATED``, and named there)."""
    body, cut = _bounded(record.to_dict())
    body["parse_warnings"] = [*record.parse_warnings, *(f"{path} truncated" for path in cut)]
    return {
        "fax_id": record.id,
        "user_id": user_id,
        "category": category,
        "status": str(record.status)[:MAX_FIELD_CHARS],
        "record": body,
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
