"""OutboxFaxTrigger: waits, in the triggerer, until an outbox fax has left the outbox."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_faxplus import oauth, protocol, redaction
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import (
    FaxPlusAuthError,
    FaxPlusConfigError,
    FaxPlusError,
    FaxPlusInputError,
    FaxPlusNotFoundError,
    FaxPlusRequestError,
)
from airflow_provider_faxplus.retry import backoff_seconds
from airflow_provider_faxplus.triggers.session import (  # noqa: F401 - also this module's names (tests, users)
    POOL_MAX_CONNECTIONS,
    _Lease,
    _redacted,
    access_token,
    environment_proxy,
    fetch_outbox_fax,
    load_connection,
    shared_session,
)
from airflow_provider_faxplus.waiting import (
    Decision,
    WaitPolicy,
    WaitProgress,
    observe_not_found,
    observe_record,
    parse_waiting_statuses,
)

if TYPE_CHECKING:
    from airflow_provider_faxplus.triggers.outbox_poll import AccountPoll

log = logging.getLogger(__name__)

# Doubling the poll interval (exponential_backoff) stops here: 2**30 poke intervals is beyond any timeout.
MAX_BACKOFF_EXPONENT = 30


class _Reconnect(Exception):
    """The connection changed after a 401: poll again with its new settings."""

    def __init__(self, config: FaxPlusConfig) -> None:
        super().__init__("the connection changed")
        self.config = config


def _error_kind(exc: FaxPlusRequestError) -> str:
    if isinstance(exc, FaxPlusAuthError):
        return "auth"
    return "rejected" if protocol.is_permanent(exc) else "api"


class OutboxFaxTrigger(BaseTrigger):
    """Polls *Get outgoing fax* every ``poke_interval`` seconds until the fax has left the outbox.

    Yields exactly one event, whatever happens short of cancellation: ``{"status": "success", "result":
    {...}}``, ``{"status": "checkpoint", "progress": {...}, "deferred_at": ...}`` when it sees the fax for
    the first time (the sensor records that and defers again: Airflow keeps a trigger's kwargs from the
    deferral on, never what a running trigger learned), or ``{"status": "error", "kind": ..., "message":
    ...}``, where ``kind`` is ``auth``, ``rejected`` (another 3xx/4xx answer), ``config``, ``input`` or
    ``never_seen``, which no retry can fix, or ``api`` (a malformed response) or ``unexpected`` (any
    other exception), which a retry of the task may. Transient errors (429, 5xx, network) back off
    exponentially, never faster than ``poke_interval`` and never sooner than ``Retry-After``.
    The token is never part of the serialized kwargs: the connection is read again in the triggerer.

    With ``shared_poll`` (the default), the triggers of one connection and ``user_id`` in a triggerer
    share one *List outgoing faxes* request per tick (see ``outbox_poll``); a fax absent from the list
    waits within its grace period, and any verdict on absence is confirmed by one *Get outgoing fax*.
    A trigger alone on its account, or on an account whose list the API refuses, polls its own fax.
    ``shared_poll=False``: every look is its own *Get outgoing fax*.
    """

    def __init__(
        self,
        *,
        outbox_fax_id: str,
        user_id: str = "self",
        faxplus_conn_id: str = "faxplus_default",
        poke_interval: float = 60.0,
        waiting_statuses: list[str] | None = None,
        not_found_grace_period: float = 60.0,
        fail_if_never_seen: bool = True,
        progress: dict[str, Any] | None = None,
        exponential_backoff: bool = False,
        max_wait: float | None = None,
        deferred_at: float | None = None,
        shared_poll: bool = True,
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.outbox_fax_id = outbox_fax_id
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.poke_interval = float(poke_interval)
        self.waiting_statuses = sorted(s.value for s in parse_waiting_statuses(waiting_statuses))
        self.not_found_grace_period = float(not_found_grace_period)
        self.fail_if_never_seen = bool(fail_if_never_seen)
        # No progress: the task started in the triggerer (the sensor's start_from_trigger) and this
        # trigger makes the first look; the grace period runs from it.
        self.first_look_here = not progress
        self.progress = WaitProgress.from_dict(progress) if progress else WaitProgress(started_at=time.time())
        # Serialized as "no progress" until this trigger learns something: a rebuilt trigger must
        # still make the first look.
        self._fresh_progress = self.progress.to_dict() if self.first_look_here else None
        self.exponential_backoff = bool(exponential_backoff)
        self.max_wait = None if max_wait is None else float(max_wait)
        self.deferred_at = time.time() if deferred_at is None else float(deferred_at)
        self._deferred_at_given = deferred_at is not None
        self.shared_poll = bool(shared_poll)
        # The sensor's timeout (start_from_trigger): with the deadline Airflow fixed when the task
        # deferred, it gives the moment of the deferral, which no rebuild of the trigger moves.
        self.timeout = None if timeout is None else float(timeout)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "outbox_fax_id": self.outbox_fax_id,
                "user_id": self.user_id,
                "faxplus_conn_id": self.faxplus_conn_id,
                "poke_interval": self.poke_interval,
                "waiting_statuses": list(self.waiting_statuses),
                "not_found_grace_period": self.not_found_grace_period,
                "fail_if_never_seen": self.fail_if_never_seen,
                "progress": None if self._progress_is_fresh() else self.progress.to_dict(),
                "exponential_backoff": self.exponential_backoff,
                "max_wait": self.max_wait,
                "deferred_at": self.deferred_at,
                "shared_poll": self.shared_poll,
                "timeout": self.timeout,
            },
        )

    def _progress_is_fresh(self) -> bool:
        return self._fresh_progress is not None and self.progress.to_dict() == self._fresh_progress

    def _fix_deferred_at(self) -> None:
        """Without a ``deferred_at`` (a task started in the triggerer), take it from the deadline
        Airflow stored when the task deferred (``timeout_after``, less the sensor's timeout), not from
        when this triggerer built the trigger: a triggerer restart must not push the deadline back."""
        if self._deferred_at_given or self.timeout is None:
            return
        deadline = getattr(self, "timeout_after", None)
        if deadline is None or not hasattr(deadline, "timestamp"):
            return
        self.deferred_at = float(deadline.timestamp()) - self.timeout
        self._deferred_at_given = True

    async def _load_config(self) -> FaxPlusConfig:
        return await load_connection(self.faxplus_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Exactly one event: every exception but cancellation becomes an error event."""
        # The event is yielded once the session and the poll are let go: Airflow's in-process runner
        # (`dags test`) takes the first event and leaves the generator for asyncio.run to close, which
        # closes every open async generator at once (ERROR lines in a successful run).
        config: FaxPlusConfig | None = None
        event: TriggerEvent | None = None
        try:
            self._fix_deferred_at()
            if self.first_look_here:
                self._start_without_a_worker_look()
            config = await self._load_config()
            policy = WaitPolicy(
                waiting_statuses=parse_waiting_statuses(self.waiting_statuses),
                not_found_grace_period=self.not_found_grace_period,
                fail_if_never_seen=self.fail_if_never_seen,
            )
            renewed = False
            while event is None:
                try:
                    async with self._hold(config) as (lease, poll):
                        event = await self._poll(lease, config, policy, renewed, poll)
                except _Reconnect as reconnect:
                    config, renewed = reconnect.config, True
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            if event is None:
                event = TriggerEvent(self._error_event(exc, config))
            else:  # e.g. closing the session after the event: the verdict stands
                log.warning("After the event: %s", _redacted(f"{type(exc).__name__}: {exc}", config))
        yield event

    def _start_without_a_worker_look(self) -> None:
        try_number = getattr(self.task_instance, "try_number", None) or 1
        if try_number > 1:
            # Earlier tries wrote what they saw to the task state store, which a trigger cannot read.
            self.progress.forget_earlier_looks(
                f"this is try {try_number}, started in the triggerer, which cannot read what earlier tries "
                "saw (the task state store is served to workers only)"
            )
        log.info(
            "Started in the triggerer (start_from_trigger), try %d: the first look at outbox fax %r is "
            "this trigger's",
            try_number,
            self.outbox_fax_id,
        )

    @asynccontextmanager
    async def _hold(self, config: FaxPlusConfig) -> AsyncIterator[tuple[_Lease, AccountPoll | None]]:
        """The shared session, and with ``shared_poll`` the account's poll on it."""
        if not self.shared_poll:
            async with shared_session(config) as lease:
                yield lease, None
            return
        from airflow_provider_faxplus.triggers.outbox_poll import account_poll

        async with account_poll(config, self.user_id) as poll:
            yield poll.lease, poll

    async def _look(
        self,
        lease: _Lease,
        config: FaxPlusConfig,
        policy: WaitPolicy,
        token: str,
        poll: AccountPoll | None,
        due: float,
        interval: float,
    ) -> tuple[Decision, float]:
        """One look at the fax: its decision, and the moment the next interval counts from. With a shared
        poll the account's list answers; where absence would decide (the fax left, or was never seen
        after the grace period), one *Get outgoing fax* confirms. Raises the GET's errors (a not-found
        included) and the list's."""
        from airflow_provider_faxplus.triggers.outbox_poll import ListUnavailable

        confirming = False
        if poll is not None and poll.shared:
            try:
                snapshot = await poll.snapshot(due=due, interval=interval)
            except ListUnavailable:
                pass  # the poll said so once; this look and the next are GETs
            else:
                record = snapshot.records.get(self.outbox_fax_id)
                now = time.time()
                if record is not None:
                    redact = redaction.for_config(config)
                    decision = observe_record(record, self.progress, policy, now, self.user_id, redact)
                    return decision, snapshot.started_at
                absent = observe_not_found(self.outbox_fax_id, self.progress, policy, now, self.user_id)
                if absent.action == "wait":  # never seen, within the grace period: no request
                    return absent, snapshot.started_at
                confirming = True
        if not confirming:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        record = await fetch_outbox_fax(lease, config, self.outbox_fax_id, self.user_id, token)
        # The next GET is an interval after this answer, as ever; a list look counts from its tick.
        redact = redaction.for_config(config)
        decision = observe_record(record, self.progress, policy, time.time(), self.user_id, redact)
        return decision, time.monotonic()

    async def _renew_after_401(self, config: FaxPlusConfig, token: str) -> bool:
        """After a 401: with a refresh token, drop the refused access token (the next poll refreshes,
        once for all triggers of the identity); without one, read the connection once more and poll
        with it if it changed (raises :class:`_Reconnect`). Whether a new try is worth it."""
        if config.uses_oauth_refresh:
            oauth.source_for(config).invalidate(token)
            log.info("Fax.Plus refused the OAuth2 access token (HTTP 401): refreshing it once")
            return True
        try:
            fresh = await self._load_config()
        except FaxPlusError as exc:
            log.warning("Reading connection %r again after HTTP 401 failed: %s", self.faxplus_conn_id, exc)
            return False
        if fresh == config:
            return False
        log.info("Connection %r changed since it was read: polling with it", self.faxplus_conn_id)
        raise _Reconnect(fresh)

    def _error_event(self, exc: Exception, config: FaxPlusConfig | None) -> dict[str, Any]:
        from airflow.exceptions import AirflowNotFoundException

        if isinstance(exc, AirflowNotFoundException):
            message = (
                f"the connection {self.faxplus_conn_id!r} is not visible to the triggerer: define it where "
                "the triggerer can read it (the metadata database, a secrets backend, or an "
                f"AIRFLOW_CONN_{self.faxplus_conn_id.upper()} variable in the triggerer's environment), "
                "not only in the worker's"
            )
            return {"status": "error", "kind": "config", "message": message}
        if isinstance(exc, FaxPlusError) and config is None:  # the connection is unusable
            return {"status": "error", "kind": "config", "message": str(exc)}
        if isinstance(exc, FaxPlusConfigError):
            return {"status": "error", "kind": "config", "message": str(exc)}
        log.exception("OutboxFaxTrigger for outbox fax %r failed unexpectedly", self.outbox_fax_id)
        message = _redacted(
            f"the trigger for outbox fax {self.outbox_fax_id!r} failed unexpectedly: {type(exc).__name__}: "
            f"{exc}",
            config,
        )
        return {"status": "error", "kind": "unexpected", "message": message}

    def _next_interval(self, looks: int) -> float:
        """``poke_interval``, or with ``exponential_backoff`` doubled after each look, capped by
        ``max_wait`` (as a poking sensor with those settings would)."""
        if not self.exponential_backoff:
            return self.poke_interval
        interval = self.poke_interval * 2.0 ** min(max(looks - 1, 0), MAX_BACKOFF_EXPONENT)
        return interval if self.max_wait is None else min(interval, max(self.max_wait, self.poke_interval))

    async def _poll(
        self,
        lease: _Lease,
        config: FaxPlusConfig,
        policy: WaitPolicy,
        renewed: bool = False,
        poll: AccountPoll | None = None,
    ) -> TriggerEvent:
        """Poll until there is an event (exactly one). ``renewed``: a 401 already made it
        refresh or re-read the connection, and no call has succeeded since."""
        failures = 0
        looks = 0
        logged: tuple[object, ...] | None = None
        # The first look may take a list answer up to one interval old; a GET goes at once. Schedules
        # run on the monotonic clock (a wall-clock step must not stop or rush the polls); the progress
        # keeps wall-clock times, which outlive the process.
        due = time.monotonic() - self.poke_interval
        while True:
            decision: Decision
            token = ""
            seen_before = self.progress.ever_seen
            interval = self._next_interval(looks)
            try:
                token = await access_token(lease, config)
                decision, answered_at = await self._look(lease, config, policy, token, poll, due, interval)
                renewed = False
            except FaxPlusNotFoundError:
                answered_at = time.monotonic()
                renewed = False
                decision = observe_not_found(
                    self.outbox_fax_id, self.progress, policy, time.time(), self.user_id
                )
            except FaxPlusRequestError as exc:
                if (
                    isinstance(exc, FaxPlusAuthError)
                    and exc.status == 401
                    and not oauth.is_token_error(exc)
                    and not renewed
                ):
                    renewed = True
                    if await self._renew_after_401(config, token):
                        continue
                if not protocol.is_retryable(exc):
                    return TriggerEvent({"status": "error", "kind": _error_kind(exc), "message": str(exc)})
                failures += 1
                wait = max(
                    self.poke_interval, backoff_seconds(failures, config.initial_backoff, exc.retry_after)
                )
                log.warning("Transient error #%d, polling again in %.1f s: %s", failures, wait, exc)
                await asyncio.sleep(wait)
                due = time.monotonic()
                continue
            except FaxPlusInputError as exc:
                return TriggerEvent({"status": "error", "kind": "input", "message": str(exc)})
            failures = 0
            looks += 1
            if decision.action == "left":
                log.info("%s", decision.message)
                return TriggerEvent(
                    {"status": "success", "message": decision.message, "result": decision.result}
                )
            if decision.action == "fail":
                return TriggerEvent({"status": "error", "kind": "never_seen", "message": decision.message})
            if self.progress.ever_seen is True and seen_before is not True:
                # The first sighting: hand it to the sensor, which defers again with it in the kwargs,
                # the only part of a trigger that Airflow keeps when a triggerer restarts.
                # A status the spec does not know is a WARNING here too: the rebuilt trigger knows it.
                log.log(
                    logging.WARNING if decision.unknown_status else logging.INFO,
                    "%s; first sighting, checkpointed through the sensor",
                    decision.message,
                )
                return TriggerEvent(
                    {
                        "status": "checkpoint",
                        "message": decision.message,
                        "progress": None if self._progress_is_fresh() else self.progress.to_dict(),
                        "deferred_at": self.deferred_at,
                    }
                )
            # INFO when what we know changes, DEBUG for the same again: a triggerer may hold thousands.
            # A status the spec does not know is a WARNING, once per fax and status.
            known = (decision.action, self.progress.last_status, self.progress.ever_seen)
            level = logging.INFO if known != logged else logging.DEBUG
            log.log(logging.WARNING if decision.unknown_status else level, "%s", decision.message)
            logged = known
            due = answered_at + self._next_interval(looks)
