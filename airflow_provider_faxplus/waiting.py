"""When has a fax left the outbox? The one state machine used by the sensor and the trigger.

A fax has left when its status is outside the waiting statuses, or when its outbox id stops resolving
(Fax.Plus drops a fax from the outbox once it is sent or has failed). Right after submission an id can be
unknown for a while, so a not-found before the fax was ever seen only counts after a grace period.
Past that period, ``fail_if_never_seen`` decides: fail (the id is probably wrong) or count it as left,
but only with evidence: ``ever_seen`` is ``False`` only when every earlier look of the task instance is
known; where they are not (``None``), such a not-found counts as left and the result says why.

A status outside the spec's four (a new upstream status) keeps the waiter waiting: a record that *Get
outgoing fax* answers is, by definition, still in the outbox. A status in another case is that status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pendulum

from airflow_provider_faxplus import redaction
from airflow_provider_faxplus.constants import DEFAULT_NOT_FOUND_GRACE_PERIOD, validate_waiting_statuses
from airflow_provider_faxplus.models import OUTBOX_STATUSES, OutboxFax, OutboxStatus


def parse_waiting_statuses(statuses: Iterable[str | OutboxStatus] | str | None) -> frozenset[OutboxStatus]:
    """The statuses that mean "still waiting"; a non-empty subset of the four outbox states."""
    return frozenset(OutboxStatus(value) for value in validate_waiting_statuses(statuses))


@dataclass(frozen=True)
class WaitPolicy:
    waiting_statuses: frozenset[OutboxStatus] = OUTBOX_STATUSES
    not_found_grace_period: float = DEFAULT_NOT_FOUND_GRACE_PERIOD
    fail_if_never_seen: bool = True

    def __post_init__(self) -> None:
        if self.not_found_grace_period < 0:
            raise ValueError("not_found_grace_period must be >= 0 seconds")


@dataclass
class WaitProgress:
    """What a waiter knows so far; JSON-safe so it can cross into a trigger or a state store."""

    started_at: float  # epoch seconds, UTC
    # None: unknown, for a waiter that cannot know what earlier looks saw (see ``unknown_because``).
    ever_seen: bool | None = False
    last_status: str | None = None
    last_record: dict[str, Any] | None = None
    # Why ever_seen is unknown, said in the result of a not-found counted as left.
    unknown_because: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "ever_seen": self.ever_seen,
            "last_status": self.last_status,
            "last_record": self.last_record,
            "unknown_because": self.unknown_because,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WaitProgress:
        ever_seen = data.get("ever_seen", False)
        if ever_seen not in (True, False, None):
            raise ValueError(f"progress: ever_seen must be true, false or null, not {ever_seen!r}")
        return cls(
            started_at=float(data["started_at"]),
            ever_seen=ever_seen,
            last_status=data.get("last_status"),
            last_record=data.get("last_record"),
            unknown_because=data.get("unknown_because"),
        )

    def forget_earlier_looks(self, because: str) -> None:
        """Earlier looks happened and what they saw is unknown: a not-found is no evidence of a wrong id."""
        if self.ever_seen is not True:
            self.ever_seen = None
            self.unknown_because = because


@dataclass(frozen=True)
class Decision:
    action: Literal["wait", "left", "fail"]
    message: str
    result: dict[str, Any] | None = field(default=None)
    # A status the spec does not know, seen for the first time on this fax: worth one warning.
    unknown_status: bool = False


def _result(
    outbox_fax_id: str, user_id: str, reason: str, progress: WaitProgress, now: float
) -> dict[str, Any]:
    return {
        "outbox_fax_id": outbox_fax_id,
        "user_id": user_id,
        "reason": reason,
        "last_status": progress.last_status,
        "last_record": progress.last_record,
        "ever_seen": progress.ever_seen,
        "detected_at": pendulum.from_timestamp(now, tz="UTC").isoformat(),
    }


def known_status(status: OutboxStatus | str) -> OutboxStatus | None:
    """The spec's status this one is, ignoring case; None for a status the spec does not know."""
    try:
        return OutboxStatus(str(status).strip().lower())
    except ValueError:
        return None


def observe_record(
    record: OutboxFax,
    progress: WaitProgress,
    policy: WaitPolicy,
    now: float,
    user_id: str,
    redact: Callable[[str], str],
) -> Decision:
    """What one look at ``record`` decides. ``redact`` is the connection's redactor: the record's texts
    go into messages, trigger events and the next trigger's kwargs."""
    previous = progress.last_status
    progress.ever_seen = True
    progress.unknown_because = None
    status = known_status(record.status)
    progress.last_status = redact(str(record.status)) if status is None else str(status)
    progress.last_record = redaction.redact_data(redact, record.to_dict())
    if status is None:
        return Decision(
            "wait",
            f"outbox fax {redact(record.id)!r} has the status {progress.last_status!r}, which the API spec "
            "does not know; it is still in the outbox, so waiting until it leaves (its id stops resolving) "
            "or takes a known status outside the waiting statuses",
            unknown_status=previous != progress.last_status,
        )
    if status in policy.waiting_statuses:
        return Decision("wait", f"outbox fax {redact(record.id)!r} is {status}; waiting")
    return Decision(
        "left",
        f"outbox fax {redact(record.id)!r} is {record.status}, outside the waiting statuses",
        _result(redact(record.id), user_id, "status", progress, now),
    )


def observe_not_found(
    outbox_fax_id: str, progress: WaitProgress, policy: WaitPolicy, now: float, user_id: str
) -> Decision:
    if progress.ever_seen is True:
        return Decision(
            "left",
            f"outbox fax {outbox_fax_id!r} no longer resolves: it has left the outbox (sent or failed; "
            f"last status seen: {progress.last_status})",
            _result(outbox_fax_id, user_id, "not_found", progress, now),
        )
    waited = now - progress.started_at
    if waited < policy.not_found_grace_period:
        return Decision(
            "wait",
            f"outbox fax {outbox_fax_id!r} is not found yet ({waited:.0f} s of a "
            f"{policy.not_found_grace_period:g} s grace period for newly submitted faxes); waiting",
        )
    if progress.ever_seen is None:
        because = progress.unknown_because or "what earlier looks saw is not known"
        return Decision(
            "left",
            f"outbox fax {outbox_fax_id!r} is not found after the {policy.not_found_grace_period:g} s grace "
            f"period: counted as left, not as a wrong id, because {because}",
            _result(outbox_fax_id, user_id, "not_found", progress, now),
        )
    never = (
        f"outbox fax {outbox_fax_id!r} was never found in {waited:.0f} s (grace period "
        f"{policy.not_found_grace_period:g} s): the id is wrong, or the fax left the outbox before the "
        "sensor first looked (no look of this task instance, in any try, saw it)"
    )
    if policy.fail_if_never_seen:
        return Decision("fail", never + " (set fail_if_never_seen=False to count this as left)")
    return Decision(
        "left", never + "; counted as left", _result(outbox_fax_id, user_id, "not_found", progress, now)
    )
