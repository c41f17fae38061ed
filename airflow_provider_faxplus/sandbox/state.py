"""The sandbox's state, without HTTP: accounts, outbox faxes on a clock, injected faults, request log.

Faxes go through their lifecycle (by default submitted -> converting -> scheduled_for_sending ->
sending, then out of the outbox) on a virtual clock: ``pace`` virtual seconds per real second, plus
whatever the control API adds with ``advance``. A lifecycle can count polls instead of seconds
(``{"status": "submitted", "polls": 2}``): the fax then moves on each time an answer (a GET, or a list)
has shown it so many times, which keeps tests deterministic however slowly the client gets round to looking.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_provider_faxplus.sandbox.fax_records import RecordStore, fmt_plain
from airflow_provider_faxplus.sandbox.oauth import OAuthState
from airflow_provider_faxplus.sandbox.spec import schema_errors

# The spec's OutboxStatus enum (tests/test_sandbox.py checks they agree).
OUTBOX_STATUSES = ("submitted", "converting", "scheduled_for_sending", "sending")
DEFAULT_LIFECYCLE: tuple[tuple[str, float], ...] = tuple((status, 2.0) for status in OUTBOX_STATUSES)
DEFAULT_UID = "53a1afb8585345a39033857e1f36bf8d"
# Assumed (Fax.Plus documents no limit for a PUT body or a comment): large enough for a 1 MiB comment,
# small enough that a runaway client cannot make every later GET carry megabytes.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024


class SandboxInputError(ValueError):
    """A control-API request is invalid."""


class Clock:
    """Virtual UTC time: real time scaled by ``pace``, plus manual advances."""

    def __init__(self, pace: float = 1.0) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()
        self._pace = pace
        self._offset = 0.0

    @property
    def pace(self) -> float:
        return self._pace

    def now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0) * self._pace + self._offset

    def set_pace(self, pace: float) -> None:
        current = self.now()
        self._wall0, self._mono0, self._offset, self._pace = current, time.monotonic(), 0.0, pace

    def advance(self, seconds: float) -> None:
        self._offset += seconds


def fmt_offset(ts: float) -> str:
    """``YYYY-MM-DD HH:mm:ss +0000``: the spec's format for send_time and submit_time."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


@dataclass
class Fax:
    id: str
    owner: str
    created_at: float
    lifecycle: tuple[tuple[str, float], ...]
    visible_after: float = 0.0
    comment_text: str = ""
    comment_tags: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    unit: str = "seconds"  # or "polls"
    polls_seen: int = 0
    poll_stage_starts: list[float] = field(default_factory=list)
    poll_left_at: float | None = None
    # Seconds counted from the first look (a GET or a list answer showing it), not from creation: a
    # seeded fax waits, however long the user takes to start Airflow (faxplus-sandbox --seed).
    start_on_first_look: bool = False
    first_look_at: float | None = None

    def _waiting_for_first_look(self) -> bool:
        return self.unit == "seconds" and self.start_on_first_look and self.first_look_at is None

    def _stage_starts(self) -> list[float]:
        if self.unit == "polls":
            return self.poll_stage_starts or [self.created_at]
        if self._waiting_for_first_look():
            return [self.created_at]
        starts, start = [], self.created_at if self.first_look_at is None else self.first_look_at
        for _, seconds in self.lifecycle:
            starts.append(start)
            start += seconds
        return starts

    def position(self, now: float) -> tuple[int, float] | None:
        """(stage index, stage start) at ``now``; ``None`` once the fax has left the outbox."""
        starts = self._stage_starts()
        if self.unit == "polls":
            index = self._poll_index(self.polls_seen)
            return None if index is None else (index, starts[index])
        if self._waiting_for_first_look():
            return 0, self.created_at
        for index, (_, seconds) in enumerate(self.lifecycle):
            if now < starts[index] + seconds:
                return index, starts[index]
        return None

    def _poll_index(self, polls: int) -> int | None:
        used = 0
        for index, (_, count) in enumerate(self.lifecycle):
            used += int(count)
            if polls < used:
                return index
        return None

    def record_poll(self, now: float) -> None:
        """A GET or a list answer has shown the fax: poll-counted lifecycles move on, and a lifecycle
        that starts on the first look starts now."""
        if self._waiting_for_first_look():
            self.first_look_at = now
        if self.unit != "polls":
            return
        if not self.poll_stage_starts:
            self.poll_stage_starts = [self.created_at]
        before = self._poll_index(self.polls_seen)
        self.polls_seen += 1
        after = self._poll_index(self.polls_seen)
        if after is None:
            self.poll_left_at = now
        elif after != before:
            self.poll_stage_starts.append(now)

    def left_at(self) -> float | None:
        if self.unit == "polls":
            return self.poll_left_at
        if self._waiting_for_first_look():
            return None
        start = self.created_at if self.first_look_at is None else self.first_look_at
        return start + sum(seconds for _, seconds in self.lifecycle)

    def visible(self, now: float) -> bool:
        return now >= self.created_at + self.visible_after

    def status(self, now: float) -> str | None:
        position = self.position(now)
        return None if position is None else self.lifecycle[position[0]][0]

    def to_outbox(self, now: float, stage: int | None = None) -> dict[str, Any]:
        """The ``Outbox`` object of the spec (no property outside its schema); ``stage`` forces a stage."""
        starts = self._stage_starts()
        if stage is None:
            position = self.position(now)
            assert position is not None
            index, stage_start = position
        else:
            index, stage_start = stage, now
            starts = [now] * (stage + 1)
        changes = [{"at": fmt_plain(starts[i]), "status": self.lifecycle[i][0]} for i in range(index + 1)]
        record: dict[str, Any] = {
            "comment": {"tags": list(self.comment_tags), "text": self.comment_text},
            "contact_name": "",
            "designated_src": "",
            "extra_info": {},
            "file_changes": [],
            "files": [f"/transient-{self.id}"],
            "id": self.id,
            "initiated_from": {"from_id": "", "type": ""},
            "ip": "127.0.0.1",
            "last_updated_status_time": fmt_plain(stage_start),
            "options": {},
            "page_count": 1,
            "retry": {"count": 0, "delay": 0},
            "send_time": fmt_offset(self.created_at),
            "should_enhance": False,
            "src": "+16699990000",
            "status": self.lifecycle[index][0],
            "status_changes": changes,
            "submit_time": fmt_offset(self.created_at),
            "to": ["+16699990000"],
            "uid": self.owner,
        }
        record.update(self.fields)
        return record

    def summary(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        left_at = self.left_at()
        return {
            "id": self.id,
            "owner": self.owner,
            "status": status,
            "in_outbox": status is not None,
            "visible": self.visible(now),
            "created_at": fmt_offset(self.created_at),
            "left_at": None if left_at is None else fmt_offset(left_at),
            "left_at_ts": left_at,
            "comment": {"tags": list(self.comment_tags), "text": self.comment_text},
            "to": list(self.fields.get("to", [])),
        }


@dataclass
class Fault:
    """A scripted misbehaviour for the next ``times`` matching requests under /v3."""

    id: int
    times: int = 1
    method: str | None = None
    path_contains: str | None = None
    # "/outbox" picks the list (and send) route alone: path_contains would match every fax's path too.
    path_endswith: str | None = None
    status: int | None = None
    body: str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: str | None = None
    delay: float = 0.0
    drop: bool = False
    # The request is handled (a send creates its fax), then the answer is cut off mid-body.
    drop_after: bool = False
    # The handler's answer passes, but only its first ``cut_after`` body bytes: then the connection drops.
    cut_after: int | None = None
    # The request is handled, then ``status`` answers instead (a proxy that passed the POST on).
    processed: bool = False
    # The body is read first, then the delay, then the request is handled even if the client has gone:
    # a send processed after the client gave up.
    late: bool = False
    # The request is handled, then its answer held this many seconds: the client waits on a request
    # that has taken effect (a send whose worker dies meanwhile).
    hold_after: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (
            (self.method is None or self.method == method)
            and (self.path_contains is None or self.path_contains in path)
            and (self.path_endswith is None or path.endswith(self.path_endswith))
        )

    def describe(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _number(data: dict[str, Any], name: str, default: float, minimum: float = 0.0) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise SandboxInputError(f"{name} must be a number >= {minimum:g}")
    return float(value)


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise SandboxInputError(f"{name} must be true or false")
    return value


def _string(data: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = data.get(name, default)
    if value is not None and not isinstance(value, str):
        raise SandboxInputError(f"{name} must be a string")
    return value


class SandboxState:
    def __init__(
        self,
        *,
        tokens: dict[str, frozenset[str] | None],
        client_id: str | None = None,
        uid: str = DEFAULT_UID,
        members: tuple[str, ...] = (),
        pace: float = 1.0,
        not_found_status: int = 404,
        sending_modify_status: int = 409,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        oauth: OAuthState | None = None,
        control_token: str | None = None,
    ) -> None:
        self.tokens = tokens
        # Required (as a Bearer token) by every control request but the health check, when set.
        self.control_token = control_token
        self.oauth = oauth or OAuthState()
        self.max_body_bytes = max_body_bytes
        self.client_id = client_id
        self.uid = uid
        self.members = set(members)
        self.clock = Clock(pace)
        self.not_found_status = not_found_status
        self.sending_modify_status = sending_modify_status
        self.log_response_bodies = True  # the request log keeps each answer's body (conformance checks)
        self.faxes: dict[str, Fax] = {}
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        # Sending (sandbox/send.py): uploaded path -> (owner, file name, size); cancelled fax ids;
        # the lifecycle of sent faxes (control API settings).
        self.uploads: dict[str, tuple[str, str, int]] = {}
        self.cancelled: list[str] = []
        self.send_lifecycle: list[dict[str, Any]] = [{"status": s, "seconds": 2.0} for s in OUTBOX_STATUSES]
        self.send_lifecycles: dict[str, list[dict[str, Any]]] = {}
        # Fax records (sandbox/records.py): sent records of faxes that left, received faxes.
        self.fax_records = RecordStore()
        # Bumped by reset(): a request delayed by a fault across a reset must not touch the new state.
        self.generation = 0
        self._fault_ids = 0

    # Accounts
    def resolve_user(self, user_id: str) -> str | None:
        if user_id == "self":
            return self.uid
        if user_id == self.uid or user_id in self.members:
            return user_id
        return None

    # Faxes
    def create_fax(self, data: dict[str, Any], now: float | None = None) -> Fax:
        """A fax created at ``now`` (default: the clock's now), its answers checked against the spec."""
        fax_id = _string(data, "id") or uuid.uuid4().hex
        if fax_id in self.faxes:
            raise SandboxInputError(f"fax {fax_id!r} exists already")
        owner = _string(data, "user_id", "self") or "self"
        resolved = self.resolve_user(owner)
        if resolved is None:
            raise SandboxInputError(f"unknown user {owner!r}")
        lifecycle = DEFAULT_LIFECYCLE
        unit = "seconds"
        if "lifecycle" in data:
            raw = data["lifecycle"]
            if not isinstance(raw, list) or not raw:
                raise SandboxInputError("lifecycle must be a non-empty list of {status, seconds | polls}")
            units = {"polls" if isinstance(stage, dict) and "polls" in stage else "seconds" for stage in raw}
            if len(units) > 1:
                raise SandboxInputError("a lifecycle counts either seconds or polls, not both")
            unit = units.pop()
            stages = []
            for stage in raw:
                if not isinstance(stage, dict) or not isinstance(stage.get("status"), str):
                    raise SandboxInputError("each lifecycle stage needs a string status")
                if stage["status"] not in OUTBOX_STATUSES:
                    raise SandboxInputError(
                        f"lifecycle status {stage['status']!r} is not an outbox status of the spec "
                        f"({', '.join(OUTBOX_STATUSES)})"
                    )
                if unit == "polls":
                    polls = stage["polls"]
                    if isinstance(polls, bool) or not isinstance(polls, int) or polls < 1:
                        raise SandboxInputError("polls must be a whole number >= 1")
                    stages.append((stage["status"], float(polls)))
                else:
                    stages.append((stage["status"], _number(stage, "seconds", 2.0)))
            lifecycle = tuple(stages)
        tags = data.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise SandboxInputError("tags must be a list of strings")
        extra_fields = data.get("fields", {})
        if not isinstance(extra_fields, dict):
            raise SandboxInputError("fields must be an object")
        fax = Fax(
            id=fax_id,
            owner=resolved,
            created_at=self.clock.now() if now is None else now,
            lifecycle=lifecycle,
            visible_after=_number(data, "visible_after", 0.0),
            comment_text=_string(data, "comment", "") or "",
            comment_tags=list(tags),
            fields=extra_fields,
            unit=unit,
            start_on_first_look=_flag(data, "start_on_first_look"),
        )
        # Every answer this fax can give must be an Outbox of the spec: check each stage's.
        for index in range(len(lifecycle)):
            record = fax.to_outbox(fax.created_at, stage=index)
            problems = schema_errors("Outbox", record)
            if problems:
                raise SandboxInputError("fields break the spec's Outbox schema: " + "; ".join(problems))
        self.faxes[fax_id] = fax
        return fax

    def find(self, owner: str, fax_id: str) -> Fax | None:
        """The fax while it is visible and in the outbox, else ``None`` (not found)."""
        now = self.clock.now()
        fax = self.faxes.get(fax_id)
        if fax is None or fax.owner != owner or not fax.visible(now) or fax.status(now) is None:
            return None
        return fax

    # Faults
    def add_fault(self, data: dict[str, Any]) -> Fault:
        self._fault_ids += 1
        status = data.get("status")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise SandboxInputError("status must be an HTTP status code")
        headers = data.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise SandboxInputError("headers must be an object of strings")
        times = _number(data, "times", 1, minimum=1)
        retry_after = data.get("retry_after")
        if retry_after is not None and not isinstance(retry_after, str | int):
            raise SandboxInputError("retry_after must be a string or an integer")
        fault = Fault(
            id=self._fault_ids,
            times=int(times),
            method=(_string(data, "method") or "").upper() or None,
            path_contains=_string(data, "path_contains"),
            path_endswith=_string(data, "path_endswith"),
            status=status,
            body=_string(data, "body"),
            content_type=_string(data, "content_type", "application/json") or "application/json",
            headers=headers,
            retry_after=None if retry_after is None else str(retry_after),
            delay=_number(data, "delay", 0.0),
            drop=bool(data.get("drop", False)),
            drop_after=bool(data.get("drop_after", False)),
            cut_after=None if data.get("cut_after") is None else int(_number(data, "cut_after", 0)),
            processed=bool(data.get("processed", False)),
            late=bool(data.get("late", False)),
            hold_after=_number(data, "hold_after", 0.0),
        )
        if fault.hold_after and (fault.status is not None or fault.drop or fault.drop_after):
            raise SandboxInputError("hold_after handles the request for real: no status, drop or drop_after")
        if (
            fault.status is None
            and not fault.drop
            and not fault.drop_after
            and fault.cut_after is None
            and not (fault.delay or fault.hold_after)
        ):
            raise SandboxInputError(
                "a fault needs a status, drop=true, drop_after=true, cut_after, a delay or hold_after"
            )
        if fault.processed and (fault.status is None or fault.drop or fault.drop_after):
            raise SandboxInputError("processed=true needs a status (and no drop): it answers after handling")
        if fault.late and (fault.delay == 0 or fault.status is not None or fault.drop or fault.drop_after):
            raise SandboxInputError("late=true needs a delay, and no status or drop")
        self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def reset(self) -> None:
        self.generation += 1
        self.clock = Clock(self.clock.pace)  # back on real time: advances would leak into the next test
        self.faxes.clear()
        self.faults.clear()
        self.requests.clear()
        self.uploads.clear()
        self.cancelled.clear()
        self.send_lifecycle = [{"status": s, "seconds": 2.0} for s in OUTBOX_STATUSES]
        self.send_lifecycles = {}
        self.oauth.reset()
        self.fax_records.reset()
