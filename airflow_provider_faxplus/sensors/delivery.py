"""FaxDeliverySensor: wait until a sent fax has its sent record, and succeed or fail on its outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow import __version__ as AIRFLOW_VERSION
from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_provider_faxplus.constants import DEFAULT_CONN_ID, DEFAULT_NOT_FOUND_GRACE_PERIOD
from airflow_provider_faxplus.sensors.outbox import TRIGGERER_RENDERS_TEMPLATES

if TYPE_CHECKING:
    from airflow_provider_faxplus.delivery import SentFax
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

log = logging.getLogger(__name__)

STATE_KEY = "faxplus_delivery_sensor"
TRIGGER_CLASSPATH = "airflow_provider_faxplus.triggers.delivery.FaxDeliveryTrigger"
PARTIAL_AS = ("delivered", "failed")
# After the fax left the outbox, how long a missing record is "not there yet" before the wait fails for
# want of the fields to look it up by (only when neither the outbox nor ``sent`` gave them).
DEFAULT_RECORD_GRACE_PERIOD = 300.0


class FaxDeliverySensor(BaseSensorOperator):
    """Wait until a sent fax has left the Fax.Plus outbox and its sent fax record exists, then succeed
    if it was delivered (``success``) and fail at once (no retries) if it was not (``failed``, a
    ``failed_*`` status, ``insufficient_credit``), naming the status and its description.

    The record is the one with the outbox id, or else the one ``sent`` record that fits the fax's
    destination, sender, submit time (within two minutes) and comment text (the README's "Delivery
    outcome"); several fitting records fail the task naming them.

    Returns (XCom) ``{"outbox_fax_id", "fax_id", "status", "outcome": "delivered" | "failed" |
    "partial", "record", "matched_by": "id" | "fields"}``.

    :param outbox_fax_id: The outbox id (templated), e.g. ``send.output["outbox_fax_ids"]["+1..."]``.
    :param sent: SendFaxOperator's XCom (templated; ``send.output``): its ``faxes`` give the destination,
        sender, submit time and comment to find a record that has an id of its own. Optional when the
        sensor sees the fax in the outbox (the outbox record gives them).
    :param partial_as: What ``partially_sent`` means: ``"delivered"`` (succeed, ``outcome`` ``partial``)
        or ``"failed"`` (fail at once). Required: no default decides it for you.
    :param user_id: ``self`` or a member's user id (templated).
    :param deferrable: Look once, then wait in the triggerer, sharing the account's outbox list and its
        list of sent records with the other faxes waited on there (one of each per account and interval).
    :param start_from_trigger: With ``deferrable=True`` on Airflow 3.3+: the task starts in the triggerer,
        which renders the templated fields and makes the first look; no worker runs until the trigger has
        an event. On older Airflow, in mapped tasks and in ``airflow dags test`` (which start the task on a
        worker) the sensor looks once from the worker and defers, with one warning.
    :param not_found_grace_period: Seconds after the sensor's first look (or the send's submit time, if
        earlier) during which an outbox id that is not found, and was never seen, is "not there yet" (a
        new id can be briefly unknown), as for ``OutboxFaxSensor``; after it, it counts as left.
    :param record_grace_period: Seconds after the fax left the outbox during which a record that cannot
        be looked up (no record with the outbox id, and no fields to match by) counts as "not there yet";
        in poke, reschedule and deferrable mode alike.
    """

    template_fields: Sequence[str] = ("outbox_fax_id", "sent", "user_id", "faxplus_conn_id")
    ui_color = "#e8fde9"

    def __init__(
        self,
        *,
        outbox_fax_id: str,
        partial_as: str,
        sent: Mapping[str, Any] | None = None,
        user_id: str = "self",
        faxplus_conn_id: str = DEFAULT_CONN_ID,
        record_grace_period: float = DEFAULT_RECORD_GRACE_PERIOD,
        not_found_grace_period: float = DEFAULT_NOT_FOUND_GRACE_PERIOD,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        start_from_trigger: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = bool(deferrable)
        if not isinstance(start_from_trigger, bool):
            raise TypeError("start_from_trigger must be True or False")
        if start_from_trigger and not deferrable:
            raise ValueError(
                "start_from_trigger=True needs deferrable=True: only a deferrable sensor waits in the "
                "triggerer"
            )
        if partial_as not in PARTIAL_AS:
            raise ValueError(f"partial_as must be one of {', '.join(PARTIAL_AS)}, got {partial_as!r:.30}")
        if isinstance(record_grace_period, bool) or not isinstance(record_grace_period, int | float):
            raise TypeError("record_grace_period must be a number of seconds")
        if isinstance(not_found_grace_period, bool) or not isinstance(not_found_grace_period, int | float):
            raise TypeError("not_found_grace_period must be a number of seconds")
        self.not_found_grace_period = float(not_found_grace_period)
        self.outbox_fax_id = outbox_fax_id
        self.partial_as = partial_as
        self.sent = sent
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.record_grace_period = float(record_grace_period)
        self._seen: dict[str, Any] | None = None  # the outbox's fields, once seen there
        self._left_at: float | None = None
        self._first_look_at: float | None = None
        self.start_from_trigger_requested = start_from_trigger
        self.start_from_trigger = start_from_trigger and TRIGGERER_RENDERS_TEMPLATES
        if self.start_from_trigger:
            self.start_trigger_args = self._start_trigger_args()

    def _start_trigger_args(self) -> Any:
        """The trigger of a task that starts in the triggerer: kwargs fixed at parse time, the templated
        ones (the sensor's template fields, trigger attributes of the same names) rendered there. No
        ``deferred_at``: the trigger takes it from the deadline Airflow stores."""
        from airflow.triggers.base import StartTriggerArgs

        return StartTriggerArgs(
            trigger_cls=TRIGGER_CLASSPATH,
            trigger_kwargs={
                "outbox_fax_id": self.outbox_fax_id,
                "sent": self.sent,
                "user_id": self.user_id,
                "faxplus_conn_id": self.faxplus_conn_id,
                "poke_interval": float(self.poke_interval),
                "record_grace_period": self.record_grace_period,
                "not_found_grace_period": self.not_found_grace_period,
                "timeout": float(self.timeout),
            },
            next_method="execute_complete",
            next_kwargs=None,
            timeout=timedelta(seconds=float(self.timeout)),
        )

    @cached_property
    def hook(self) -> FaxPlusHook:
        from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

        return FaxPlusHook(faxplus_conn_id=self.faxplus_conn_id)

    # State across pokes: in this process (poke mode), and in Airflow 3.3's task state store.

    def _load(self, context: Any) -> None:
        store = context.get("task_state_store")
        if store is None or self._first_look_at is not None:
            return
        saved = store.get(STATE_KEY)
        if isinstance(saved, dict) and saved.get("outbox_fax_id") == self.outbox_fax_id:
            self._seen = saved.get("seen")
            self._left_at = saved.get("left_at")
            self._first_look_at = saved.get("first_look_at")

    def _save(self, context: Any) -> None:
        store = context.get("task_state_store")
        if store is not None:
            store.set(
                STATE_KEY,
                {
                    "outbox_fax_id": self.outbox_fax_id,
                    "seen": self._seen,
                    "left_at": self._left_at,
                    "first_look_at": self._first_look_at,
                },
            )

    def _progress(self) -> Any:
        """What OutboxFaxSensor's not-found rule needs: when the looks began (the send's submit time if
        earlier: a reschedule without a task state store restarts this object) and whether the fax was
        seen in the outbox."""
        from airflow_provider_faxplus.waiting import WaitProgress

        if self._first_look_at is None:
            self._first_look_at = time.time()
        started = self._first_look_at
        submitted = self._sent_fax().submitted_at
        if submitted is not None:
            started = min(started, submitted.timestamp())
        return WaitProgress(started_at=started, ever_seen=self._seen is not None)

    def _policy(self) -> Any:
        from airflow_provider_faxplus.waiting import WaitPolicy

        # Never seen after the grace period: the fax may have left before the first look; the record
        # (and the matching rule) decides, not a wrong-id failure.
        return WaitPolicy(not_found_grace_period=self.not_found_grace_period, fail_if_never_seen=False)

    def _sent_fax(self) -> SentFax:
        from airflow_provider_faxplus.delivery import SentFax, sent_fax_from_send_result
        from airflow_provider_faxplus.exceptions import FaxPlusInputError

        try:
            given = sent_fax_from_send_result(self.outbox_fax_id, self.sent)
        except FaxPlusInputError as exc:
            raise AirflowFailException(str(exc)) from exc
        # The outbox's own fields (Fax.Plus's clock) come first; the send's fill what the outbox lacked.
        return given if self._seen is None else SentFax.from_dict(self._seen).merged(given)

    def poke(self, context: Any) -> bool | PokeReturnValue:
        from airflow_provider_faxplus import protocol
        from airflow_provider_faxplus.exceptions import FaxPlusError

        if not isinstance(self.outbox_fax_id, str) or not self.outbox_fax_id.strip():
            raise AirflowFailException(
                f"outbox_fax_id must be a non-empty string, got {self.outbox_fax_id!r:.40}"
            )
        self._load(context)
        try:
            result = self._look()
        except FaxPlusError as exc:
            if protocol.is_permanent(exc):
                raise AirflowFailException(str(exc)) from exc
            if protocol.is_retryable(exc):
                log.info("transient error, will look again at the next poke: %s", exc)
                return False
            raise
        finally:
            self._save(context)
        if result is None:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._conclude(result))

    def _look(self) -> dict[str, Any] | None:
        """One look: None to wait, else the XCom of the matched record."""
        from airflow_provider_faxplus.delivery import (
            SUBMIT_TOLERANCE,
            AmbiguousRecordError,
            SentFax,
            delivery_xcom,
            match_by_fields,
            match_by_id,
            no_record_message,
        )
        from airflow_provider_faxplus.exceptions import FaxPlusNotFoundError, FaxPlusResponseError
        from airflow_provider_faxplus.waiting import observe_not_found

        if self._left_at is None:
            progress = self._progress()
            try:
                outbox = self.hook.get_outbox_fax(self.outbox_fax_id, user_id=self.user_id)
            except FaxPlusNotFoundError:
                outbox = None
                absent = observe_not_found(
                    self.outbox_fax_id, progress, self._policy(), time.time(), self.user_id
                )
                if absent.action != "left":
                    log.info("%s", absent.message)
                    return None
            if outbox is not None:
                self._seen = SentFax.from_outbox(outbox).to_dict()
                if outbox.in_outbox_state:
                    log.info("outbox fax %r is still in the outbox (%s)", self.outbox_fax_id, outbox.status)
                    return None
            self._left_at = time.time()
            log.info("outbox fax %r has left the outbox; looking for its sent record", self.outbox_fax_id)
        sent = self._sent_fax()
        try:
            try:
                match = match_by_id(self.hook.get_fax(self.outbox_fax_id, user_id=self.user_id), sent)
            except FaxPlusNotFoundError:
                match = None
            if match is None and sent.fields_known():
                assert sent.submitted_at is not None
                try:
                    records = self.hook.list_faxes(
                        "sent", after=sent.submitted_at - SUBMIT_TOLERANCE, user_id=self.user_id
                    )
                except FaxPlusResponseError as exc:
                    # A malformed list answer (a proxy's HTML page) is a transient failure of the look.
                    log.warning("outbox fax %r: looking again at the next poke: %s", self.outbox_fax_id, exc)
                    return None
                match = match_by_fields(records, sent)
        except AmbiguousRecordError as exc:
            raise AirflowFailException(str(exc)) from exc
        if match is not None:
            return delivery_xcom(match, sent)
        if not sent.fields_known() and time.time() - self._left_at >= self.record_grace_period:
            raise AirflowFailException(no_record_message(sent, self.record_grace_period))
        log.info("outbox fax %r: its sent record is not there yet", self.outbox_fax_id)
        return None

    def _conclude(self, xcom: dict[str, Any]) -> dict[str, Any]:
        from airflow_provider_faxplus.delivery import bounded, failure_message

        outcome = xcom["outcome"]
        if outcome == "delivered" or (outcome == "partial" and self.partial_as == "delivered"):
            log.info(
                "fax %r: record %r, status %s (matched by %s)",
                self.outbox_fax_id,
                xcom["fax_id"],
                xcom["status"],
                xcom["matched_by"],
            )
            return xcom
        if outcome == "unknown":
            raise AirflowFailException(
                f"fax {self.outbox_fax_id!r} (record {bounded(repr(xcom['fax_id']))}) has status "
                f"{bounded(repr(xcom['status']))}, "
                "which this provider does not know as delivered or failed"
            )
        raise AirflowFailException(failure_message(xcom))

    # Deferrable ----------------------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.start_from_trigger_requested:
            if TRIGGERER_RENDERS_TEMPLATES:
                why = (
                    "Airflow started this task on a worker (it does for mapped tasks and `airflow dags test`)"
                )
            else:
                why = (
                    f"Airflow {AIRFLOW_VERSION} renders templated fields in the triggerer only from 3.3, so "
                    "the task cannot start there"
                )
            log.warning("start_from_trigger=True: %s; looking once from this worker, then deferring", why)
        done = self.poke(context)
        if isinstance(done, PokeReturnValue):
            return done.xcom_value
        self._defer(deferred_at=time.time(), timeout=float(self.timeout))

    def _defer(self, *, deferred_at: float, timeout: float) -> None:
        from airflow_provider_faxplus.triggers.delivery import FaxDeliveryTrigger

        self.defer(
            trigger=FaxDeliveryTrigger(
                outbox_fax_id=self.outbox_fax_id,
                user_id=self.user_id,
                faxplus_conn_id=self.faxplus_conn_id,
                poke_interval=float(self.poke_interval),
                sent=self._sent_fax().to_dict(),
                left=self._left_at is not None,
                record_grace_period=self.record_grace_period,
                left_at=self._left_at,
                deferred_at=deferred_at,
                not_found_grace_period=self.not_found_grace_period,
                first_look_at=self._first_look_at,
                seen=self._seen is not None,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        from airflow_provider_faxplus.exceptions import FaxPlusError

        if not event:
            raise FaxPlusError(f"outbox fax {self.outbox_fax_id!r}: the trigger ended without an event")
        if event.get("status") == "found":
            return self._conclude(event["result"])
        if event.get("status") == "checkpoint":
            return self._resume_after_checkpoint(context, event)
        message = str(event.get("message") or event)
        if event.get("kind") in ("ambiguous", "fatal", "config"):
            raise AirflowFailException(message)
        raise FaxPlusError(message)

    def _resume_after_checkpoint(self, context: Any, event: dict[str, Any]) -> None:
        """The trigger saw the fax leave and learned what a rebuilt trigger would not know: kept in the
        next deferral's kwargs (and the task state store), with the deadline of the first deferral."""
        from airflow_provider_faxplus.exceptions import FaxPlusError

        try:
            self._seen = dict(event["sent"])
            self._left_at = float(event["left_at"])
            deferred_at = float(event["deferred_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FaxPlusError(
                f"outbox fax {self.outbox_fax_id!r}: malformed checkpoint event: {exc}"
            ) from exc
        self._save(context)
        log.info(
            "outbox fax %r has left the outbox; remembered, waiting on in the triggerer", self.outbox_fax_id
        )
        remaining = max(0.0, float(self.timeout) - (time.time() - deferred_at))
        self._defer(deferred_at=deferred_at, timeout=remaining)
