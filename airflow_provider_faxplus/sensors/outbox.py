"""OutboxFaxSensor: wait until a fax has left the Fax.Plus outbox."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow import __version__ as AIRFLOW_VERSION
from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_provider_faxplus.constants import (
    DEFAULT_CONN_ID,
    DEFAULT_NOT_FOUND_GRACE_PERIOD,
    validate_waiting_statuses,
)

# Parsing a DAG file needs only the names above; the hook (requests), the protocol, the models and the
# trigger (aiohttp) load when a task runs.
if TYPE_CHECKING:
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
    from airflow_provider_faxplus.waiting import Decision, WaitPolicy, WaitProgress

log = logging.getLogger(__name__)

STATE_KEY = "faxplus_outbox_sensor"
# Trigger error events that no retry of the task can fix (see OutboxFaxTrigger).
FATAL_EVENT_KINDS = frozenset({"auth", "config", "input", "rejected", "never_seen"})
TRIGGER_CLASSPATH = "airflow_provider_faxplus.triggers.outbox.OutboxFaxTrigger"


def airflow_release(version: str) -> tuple[int, int]:
    """(major, minor) of an Airflow version string such as ``3.3.2`` or ``3.4.0b2``."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise ValueError(f"not an Airflow version: {version!r}")
    return int(found[1]), int(found[2])


# A task started in the triggerer has its templated fields rendered there only from Airflow 3.3
# (apache/airflow PR #55068); before that the trigger would get the raw templates.
TRIGGERER_RENDERS_TEMPLATES = airflow_release(AIRFLOW_VERSION) >= (3, 3)


class OutboxFaxSensor(BaseSensorOperator):
    """Wait until an outgoing fax leaves the Fax.Plus outbox.

    It has left when its status is outside ``waiting_statuses`` (by default all four outbox states:
    submitted, converting, scheduled_for_sending, sending), or when its outbox id no longer resolves
    (Fax.Plus drops a fax from the outbox once it is sent or failed).

    Returns (XCom) ``{"outbox_fax_id", "user_id", "reason": "status" | "not_found", "last_status",
    "last_record", "ever_seen", "detected_at"}``, datetimes as ISO-8601 UTC strings.

    :param outbox_fax_id: The outbox id of the fax (templated).
    :param user_id: ``self`` or a member's user id (templated).
    :param faxplus_conn_id: The ``faxplus`` connection (templated).
    :param waiting_statuses: Statuses that mean "keep waiting"; narrow it to stop earlier, e.g.
        ``["submitted", "converting"]`` to wait only until conversion is done.
    :param not_found_grace_period: Seconds after the sensor's first look during which a fax that was
        never seen and is not found counts as "not visible yet" (a newly submitted fax can be unknown
        for a while; Fax.Plus's own tooling waits about 30 s before looking).
    :param fail_if_never_seen: After the grace period, a fax that was never seen and is not found
        fails the task (``True``: the id is probably wrong) or counts as left (``False``; the XCom says
        ``ever_seen: false``). Default: ``True``, except in reschedule mode on an Airflow without a task
        state store (before 3.3). Either way it fails only with evidence that no look of this task
        instance, in any try, saw the fax; where earlier looks are unknown (a retry, or a reschedule
        poke, on an Airflow without a task state store) a not-found after the grace period counts as
        left and the XCom says ``ever_seen: null``.
    :param deferrable: Check once, then wait in the triggerer (frees the worker slot).
    :param start_from_trigger: With ``deferrable=True`` on Airflow 3.3+: the scheduler hands the task
        straight to the triggerer, which renders the templated fields and makes the first look itself;
        no worker runs the task until the trigger has an event (the first sighting of the fax, which a
        worker records and defers again, or the verdict). ``timeout`` still bounds the wait. A retry starts
        in the triggerer too, which cannot read the task state store: it does not know what earlier tries
        saw, so a not-found after the grace period counts as left (``ever_seen: null``), never as a wrong
        id. On older Airflow, in mapped tasks and in ``airflow dags test`` (which Airflow starts on a
        worker) the sensor defers from the worker as with ``deferrable=True`` and warns once.
    :param shared_poll: Deferred, share one *List outgoing faxes* request per poll with the other
        sensors of the connection and ``user_id`` in the triggerer (the README's "Shared polling");
        ``False``: poll this fax alone with *Get outgoing fax*.
    """

    template_fields: Sequence[str] = ("outbox_fax_id", "user_id", "faxplus_conn_id")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        outbox_fax_id: str,
        user_id: str = "self",
        faxplus_conn_id: str = DEFAULT_CONN_ID,
        waiting_statuses: Iterable[str] | str | None = None,
        not_found_grace_period: float = DEFAULT_NOT_FOUND_GRACE_PERIOD,
        fail_if_never_seen: bool | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        start_from_trigger: bool = False,
        shared_poll: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.outbox_fax_id = outbox_fax_id
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.waiting_statuses = validate_waiting_statuses(waiting_statuses)
        if isinstance(not_found_grace_period, bool) or not isinstance(not_found_grace_period, int | float):
            raise TypeError("not_found_grace_period must be a number of seconds")
        self.not_found_grace_period = float(not_found_grace_period)
        self.fail_if_never_seen = fail_if_never_seen
        self.deferrable = deferrable
        if not isinstance(start_from_trigger, bool):
            raise TypeError("start_from_trigger must be True or False")
        if start_from_trigger and not deferrable:
            raise ValueError(
                "start_from_trigger=True needs deferrable=True: only a deferrable sensor waits in the "
                "triggerer"
            )
        self.shared_poll = bool(shared_poll)
        self.start_from_trigger_requested = start_from_trigger
        self.start_from_trigger = start_from_trigger and TRIGGERER_RENDERS_TEMPLATES
        if self.start_from_trigger:
            self.start_trigger_args = self._start_trigger_args()
        self._progress: WaitProgress | None = None
        self._saved: dict[str, Any] | None = None

    def _start_trigger_args(self) -> Any:
        """What the scheduler stores as the trigger of a task that starts in the triggerer: the kwargs are
        fixed when the DAG is parsed; the triggerer renders the templated ones (the sensor's template
        fields are the trigger's attributes of the same names). No ``progress``: the trigger makes the
        first look, and the grace period runs from it."""
        from airflow.triggers.base import StartTriggerArgs

        max_wait = self.max_wait.total_seconds() if isinstance(self.max_wait, timedelta) else self.max_wait
        return StartTriggerArgs(
            trigger_cls=TRIGGER_CLASSPATH,
            trigger_kwargs={
                "outbox_fax_id": self.outbox_fax_id,
                "user_id": self.user_id,
                "faxplus_conn_id": self.faxplus_conn_id,
                "poke_interval": float(self.poke_interval),
                "waiting_statuses": list(self.waiting_statuses),
                "not_found_grace_period": self.not_found_grace_period,
                # A deferrable sensor remembers its looks (the trigger checkpoints a first sighting).
                "fail_if_never_seen": self.fail_if_never_seen is not False,
                "exponential_backoff": bool(self.exponential_backoff),
                "max_wait": None if max_wait is None else float(max_wait),
                "shared_poll": self.shared_poll,
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

    # Poke and reschedule -------------------------------------------------------------------------

    def _state_store(self, context: Any) -> Any:
        return context.get("task_state_store")

    def _resolved_policy(self, context: Any) -> WaitPolicy:
        from airflow_provider_faxplus.waiting import WaitPolicy, parse_waiting_statuses

        remembers = self.deferrable or not self.reschedule or self._state_store(context) is not None
        fail = self.fail_if_never_seen
        if fail is None:
            fail = remembers
        elif fail and not remembers:
            raise AirflowFailException(
                "fail_if_never_seen=True needs the sensor to remember having seen the fax between pokes; "
                "in reschedule mode that takes Airflow's task state store (Airflow 3.3+). Use mode='poke', "
                "deferrable=True, or fail_if_never_seen=False."
            )
        return WaitPolicy(parse_waiting_statuses(self.waiting_statuses), self.not_found_grace_period, fail)

    def _load_progress(self, context: Any) -> WaitProgress:
        """What the looks of this task instance saw so far, in every try that Airflow lets us know of.

        Airflow 3.3's task state store keeps one record per task instance across tries and pokes: the
        first look's time (the grace period is not restarted by a retry or a reschedule) and whether the
        fax was ever seen. Without it, a retry or a reschedule poke cannot know what earlier looks saw, so
        ``ever_seen`` is unknown (None) and a not-found is no evidence of a wrong id.
        """
        from airflow_provider_faxplus.waiting import WaitProgress

        if self._progress is not None:  # poke mode: earlier pokes of this try, in this process
            return self._progress
        started = time.time()
        store = self._state_store(context)
        if store is not None:
            saved = store.get(STATE_KEY)
            if isinstance(saved, dict) and isinstance(saved.get("progress"), dict) and self._same_fax(saved):
                return WaitProgress.from_dict(saved["progress"])
        progress = WaitProgress(started_at=started)
        if self.reschedule:
            # The grace period runs from the first poke, not from this one.
            first_date = self._first_poke_date(context)
            if first_date is not None:
                progress.started_at = min(started, first_date.timestamp())
            if store is None:
                progress.forget_earlier_looks(
                    "in reschedule mode an Airflow without a task state store (before 3.3) cannot remember "
                    "what earlier pokes saw"
                )
                return progress
        try_number = getattr(context.get("ti"), "try_number", None) or 1
        if store is None and try_number > 1:
            progress.forget_earlier_looks(
                f"this is try {try_number} and an Airflow without a task state store (before 3.3) cannot "
                "remember what earlier tries saw"
            )
        return progress

    def _same_fax(self, saved: dict[str, Any]) -> bool:
        return bool(saved.get("outbox_fax_id") == self.outbox_fax_id and saved.get("user_id") == self.user_id)

    def _first_poke_date(self, context: Any) -> Any:
        """When the first reschedule poke started: where each Airflow line's own sensor reads it."""
        ti = context["ti"]
        getter = getattr(ti, "get_first_reschedule_date", None)
        if getter is not None:  # Airflow 3
            return getter(context)
        try:  # Airflow 2.x: the helper its BaseSensorOperator uses for the reschedule timeout
            from airflow.sensors.base import _orig_start_date
        except ImportError:
            return ti.start_date
        first_try_number = (ti.max_tries or 0) - (self.retries or 0) + 1
        return _orig_start_date(
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            map_index=ti.map_index,
            try_number=first_try_number,
        )

    def _save_progress(self, context: Any, progress: WaitProgress) -> None:
        """Keep the progress for the next poke and, where Airflow has a task state store, for every later
        poke, try and deferral of this task instance (written only when it changed)."""
        self._progress = progress
        store = self._state_store(context)
        if store is None:
            return
        record = {
            "outbox_fax_id": self.outbox_fax_id,
            "user_id": self.user_id,
            "progress": progress.to_dict(),
        }
        if record != self._saved:
            store.set(STATE_KEY, record)
            self._saved = record

    def check(self, progress: WaitProgress, policy: WaitPolicy) -> Decision:
        """One look at the fax. Transient errors are a "wait"; fatal ones fail the task at once."""
        from airflow_provider_faxplus import protocol
        from airflow_provider_faxplus.exceptions import FaxPlusError, FaxPlusNotFoundError
        from airflow_provider_faxplus.waiting import Decision, observe_not_found, observe_record

        try:
            record = self.hook.get_outbox_fax(self.outbox_fax_id, user_id=self.user_id)
        except FaxPlusNotFoundError:
            return observe_not_found(self.outbox_fax_id, progress, policy, time.time(), self.user_id)
        except FaxPlusError as exc:
            if protocol.is_permanent(exc):  # no retry of the task can fix it
                raise AirflowFailException(str(exc)) from exc
            if protocol.is_retryable(exc):
                return Decision("wait", f"transient error, will look again at the next poke: {exc}")
            raise  # e.g. a malformed response: the task's retries apply
        from airflow_provider_faxplus import redaction

        redact = redaction.for_config(self.hook.config)
        return observe_record(record, progress, policy, time.time(), self.user_id, redact)

    def poke(self, context: Any) -> bool | PokeReturnValue:
        policy = self._resolved_policy(context)
        progress = self._load_progress(context)
        decision = self.check(progress, policy)
        self._save_progress(context, progress)
        return self._conclude(decision)

    def _conclude(self, decision: Decision) -> bool | PokeReturnValue:
        if decision.action == "fail":
            raise AirflowFailException(decision.message)
        # A status the spec does not know: one warning per fax and status, not one per poke.
        log.log(logging.WARNING if decision.unknown_status else logging.INFO, "%s", decision.message)
        if decision.action == "left":
            return PokeReturnValue(is_done=True, xcom_value=decision.result)
        return False

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
        try:
            policy = self._resolved_policy(context)
            progress = self._load_progress(context)
            outcome = self._conclude(self.check(progress, policy))
            self._save_progress(context, progress)
        except AirflowSkipException:
            raise
        except Exception as exc:
            # super().execute() applies soft_fail and never_fail in poke mode; the first deferrable look
            # must too.
            if self.soft_fail and isinstance(exc, AirflowFailException):
                raise AirflowSkipException(str(exc)) from exc
            if getattr(self, "never_fail", False):
                raise AirflowSkipException(f"Skipping due to never_fail is set to True: {exc}") from exc
            raise
        if isinstance(outcome, PokeReturnValue):
            return outcome.xcom_value
        self._defer(progress, policy, deferred_at=time.time(), timeout=float(self.timeout))

    def _defer(self, progress: WaitProgress, policy: WaitPolicy, deferred_at: float, timeout: float) -> None:
        # Imported here: DAG files that only define the sensor should not pay for aiohttp.
        from airflow_provider_faxplus.triggers.outbox import OutboxFaxTrigger

        max_wait = self.max_wait.total_seconds() if isinstance(self.max_wait, timedelta) else self.max_wait
        self.defer(
            trigger=OutboxFaxTrigger(
                outbox_fax_id=self.outbox_fax_id,
                user_id=self.user_id,
                faxplus_conn_id=self.faxplus_conn_id,
                poke_interval=float(self.poke_interval),
                waiting_statuses=list(self.waiting_statuses),
                not_found_grace_period=self.not_found_grace_period,
                fail_if_never_seen=policy.fail_if_never_seen,
                progress=progress.to_dict(),
                exponential_backoff=bool(self.exponential_backoff),
                max_wait=None if max_wait is None else float(max_wait),
                deferred_at=deferred_at,
                shared_poll=self.shared_poll,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Turn the trigger's event into the same XCom as poke mode, or a clear exception; a checkpoint
        (the trigger saw the fax for the first time) is recorded and the sensor defers again."""
        from airflow_provider_faxplus.exceptions import FaxPlusError

        if not event:
            raise FaxPlusError(f"outbox fax {self.outbox_fax_id!r}: the trigger ended without an event")
        status = event.get("status")
        if status == "checkpoint":
            return self._resume_after_checkpoint(context, event)
        if status == "success":
            log.info("%s", event.get("message"))
            return event["result"]
        message = str(event.get("message") or event)
        if event.get("kind") in FATAL_EVENT_KINDS:
            raise AirflowFailException(message)
        raise FaxPlusError(message)

    def _resume_after_checkpoint(self, context: Any, event: dict[str, Any]) -> None:
        from airflow_provider_faxplus.exceptions import FaxPlusError
        from airflow_provider_faxplus.waiting import WaitProgress

        try:
            progress = WaitProgress.from_dict(event["progress"])
            deferred_at = float(event["deferred_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FaxPlusError(
                f"outbox fax {self.outbox_fax_id!r}: malformed checkpoint event: {exc}"
            ) from exc
        # Recorded in the trigger kwargs of the next deferral (durable on every Airflow line) and in the
        # task state store (durable across tries, Airflow 3.3+).
        self._save_progress(context, progress)
        log.info(
            "outbox fax %r was seen in the outbox (status %s); remembered, waiting on in the triggerer",
            self.outbox_fax_id,
            progress.last_status,
        )
        # The deferral resumed after a checkpoint keeps the deadline of the first one.
        remaining = max(0.0, float(self.timeout) - (time.time() - deferred_at))
        self._defer(progress, self._resolved_policy(context), deferred_at, remaining)
