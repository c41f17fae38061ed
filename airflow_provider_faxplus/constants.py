"""Names and values needed when a DAG file is parsed; kept free of heavy imports (requests, aiohttp)."""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_CONN_ID = "faxplus_default"
# A fax can be unknown for a while after submission (Fax.Plus's own tooling waits ~30 s to look).
DEFAULT_NOT_FOUND_GRACE_PERIOD = 60.0
CONN_TYPE = "faxplus"
# The spec's OutboxStatus enum, in the order a fax goes through them.
OUTBOX_STATUS_VALUES = ("submitted", "converting", "scheduled_for_sending", "sending")


def validate_waiting_statuses(statuses: Iterable[str] | str | None) -> list[str]:
    """The statuses that mean "still waiting", sorted; a non-empty subset of the four outbox states."""
    if statuses is None:
        return sorted(OUTBOX_STATUS_VALUES)
    if isinstance(statuses, str):
        statuses = [statuses]
    chosen = set()
    for status in statuses:
        value = str(status)
        if value not in OUTBOX_STATUS_VALUES:
            allowed = ", ".join(OUTBOX_STATUS_VALUES)
            raise ValueError(f"waiting_statuses: {status!r} is not an outbox status ({allowed})")
        chosen.add(value)
    if not chosen:
        raise ValueError("waiting_statuses must name at least one outbox status")
    return sorted(chosen)
