"""SendFaxOperator: upload files and send a fax, never twice (see the README's never-twice policy)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.exceptions import AirflowException
from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator

from airflow_provider_faxplus.constants import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

STATE_KEY = "faxplus_send"
ON_AMBIGUOUS = ("fail", "resend")


class SendFaxOperator(BaseOperator):
    """Send a fax with Fax.Plus: upload the files that are not uploaded yet, then *Send a fax*.

    Returns (XCom) ``{"outbox_fax_ids": {destination: outbox id}, "mark", "user_id", "files",
    "adopted", "faxes"}``: ``adopted`` lists the destinations whose fax an earlier try had already sent;
    ``faxes`` maps each outbox id to ``{"to", "from_number", "comment", "submitted_at"}`` (the submit
    time as ISO-8601 UTC: this try's clock just before the send, the outbox's for a fax adopted from it,
    ``None`` for one adopted from the record of an earlier try), what ``FaxDeliverySensor`` matches a
    sent record by.

    Never sends twice: each send carries a comment tag (``mark``) derived from the task instance, and a
    :class:`SendRecord` keeps what the tries learned (ids, destinations possibly sent) where the next try
    reads it; ``send.send_outcome`` is the rule for every outcome. A try that may follow a send (or finds
    no record of earlier tries) first looks for the mark in the outbox and adopts what it finds. When the
    outbox does not show it (it may have been sent already, leaving the outbox),
    ``on_ambiguous="fail"`` (default) fails the task, ``"resend"`` sends to those destinations again.

    :param to: One destination or a list, E.164 (``+16699990000``) (templated; mappable).
    :param files: Local paths, object-storage URIs or ``ObjectStoragePath``s, or paths already uploaded
        (``/transient-...``); at most 10, 150 MB in all (templated).
    :param allowed_roots: Directories (or object-storage prefixes such as ``s3://bucket/faxes/``) that
        ``files`` must lie under, symbolic links and ``..`` resolved; anything else fails the task before
        any request. Set it when ``files`` is templated from input such as ``dag_run.conf``: whoever
        triggers the DAG would otherwise choose any file the worker can read. Not templated.
    :param from_number: A number of the account, or ``no_number`` (templated).
    :param comment: Comment text (templated). ``comment_tags``: extra tags (templated).
    :param send_time: When to send: an aware ``datetime`` or an ISO-8601 string with an offset.
    :param fax_retry_count: Fax.Plus's own redial count, 0..3; ``fax_retry_delay`` seconds between,
        0..180 (named apart from the task's ``retries`` and ``retry_delay``).
    :param enhancement: Fax.Plus's image enhancement. ``cover_page``: ``name_to``, ``name_from``,
        ``subject``, ``message``, ``flags``.
    :param on_ambiguous: ``"fail"`` or ``"resend"``, see above.
    :param user_id: ``self`` or a member's user id (templated).
    """

    template_fields: Sequence[str] = ("to", "files", "comment", "comment_tags", "from_number", "user_id")
    ui_color = "#e8f3fd"

    def __init__(
        self,
        *,
        to: str | list[str],
        files: list[Any] | str,
        from_number: str = "no_number",
        comment: str | None = None,
        comment_tags: list[str] | None = None,
        send_time: datetime | str | None = None,
        fax_retry_count: int | None = None,
        fax_retry_delay: int | None = None,
        enhancement: bool | None = None,
        cover_page: Mapping[str, Any] | None = None,
        on_ambiguous: str = "fail",
        user_id: str = "self",
        faxplus_conn_id: str = DEFAULT_CONN_ID,
        allowed_roots: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_ambiguous not in ON_AMBIGUOUS:
            raise ValueError(f"on_ambiguous must be 'fail' or 'resend', got {on_ambiguous!r}")
        if allowed_roots is not None and (
            isinstance(allowed_roots, str)
            or not all(isinstance(root, str) and root.strip() for root in allowed_roots)
        ):
            raise ValueError("allowed_roots must be a list of non-empty directory paths or URI prefixes")
        self.allowed_roots = None if allowed_roots is None else list(allowed_roots)
        self.to = to
        self.files = files
        self.from_number = from_number
        self.comment = comment
        self.comment_tags = comment_tags
        self.send_time = send_time
        self.fax_retry_count = fax_retry_count
        self.fax_retry_delay = fax_retry_delay
        self.enhancement = enhancement
        self.cover_page = cover_page
        self.on_ambiguous = on_ambiguous
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id

    @cached_property
    def hook(self) -> FaxPlusHook:
        from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

        return FaxPlusHook(faxplus_conn_id=self.faxplus_conn_id)

    def _send_time(self) -> datetime | None:
        if isinstance(self.send_time, str):
            try:
                return datetime.fromisoformat(self.send_time)
            except ValueError:
                raise AirflowFailException(
                    f"send_time {self.send_time!r:.60} is not an ISO-8601 date and time"
                ) from None
        return self.send_time

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_faxplus import protocol, send
        from airflow_provider_faxplus.exceptions import FaxPlusError, FaxPlusInputError
        from airflow_provider_faxplus.files import file_source
        from airflow_provider_faxplus.models import format_utc

        files = [self.files] if isinstance(self.files, str) else self.files
        options: dict[str, Any] = {
            "from_number": self.from_number,
            "comment": self.comment,
            "send_time": self._send_time(),
            "retry_count": self.fax_retry_count,
            "retry_delay": self.fax_retry_delay,
            "enhancement": self.enhancement,
            "cover_page": self.cover_page,
        }
        ti = context["ti"]
        mark = send.send_mark(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))
        # Everything is checked before any request: the payload (with stand-in paths), each file.
        try:
            if not isinstance(files, list | tuple):
                raise FaxPlusInputError(f"files must be a list, got {type(files).__name__}")
            tags = [*send.validate_tags(self.comment_tags), mark]
            payload = send.send_payload(
                to=self.to, files=["/transient-check"] * len(files), comment_tags=tags, **options
            )
            sources = {
                i: file_source(f, allowed_roots=self.allowed_roots)
                for i, f in enumerate(files)
                if not send.is_transient_path(f)
            }
            send.validate_sizes({f"{i + 1}. {s.describe}": s.size for i, s in sources.items()})
        except FaxPlusInputError as exc:
            raise AirflowFailException(str(exc)) from exc
        destinations: list[str] = payload["to"]
        self._refuse_mapped_duplicates(destinations, getattr(ti, "map_index", -1))

        record = SendRecord.open(context, mark, self.log)
        if record.lost:
            self.log.warning(
                "Try %s of this task finds no record of its earlier tries (the record was cleared or "
                "expired): they may have sent the fax, so it counts as possibly sent",
                ti.try_number,
            )
            record.uncertain |= set(destinations)
        record.save()  # a later try then knows that this one began
        try:
            known = {d: record.ids[d] for d in destinations if d in record.ids}
            from_record = list(known)
            if from_record:
                self.log.info("An earlier try sent this fax (recorded): adopting %s", known)
            look = [d for d in destinations if d not in known and d in record.uncertain]
            found: dict[str, str] = {}
            if look:
                outbox = self.hook.list_outbox_faxes(self.user_id)
                # More than the mark: the comment this task sends, all its tags (the same mark can come
                # from another deployment of this DAG sharing the account).
                marked = send.find_marked(outbox, mark, tags=tags, text=self.comment or "")
                found = {d: marked[d] for d in look if d in marked}
                by_id = {fax.id: fax for fax in outbox}
                record.submitted.update(
                    {
                        i: format_utc(by_id[i].submit_time) or ""
                        for i in found.values()
                        if by_id[i].submit_time
                    }
                )
                others = send.marked_elsewhere(outbox, mark, marked)
                if others:
                    self.log.warning(
                        "The outbox holds fax(es) %s tagged %s with another comment or other tags than "
                        "this task sends (another deployment of this DAG?): not adopted",
                        ", ".join(others),
                        mark,
                    )
                if found:
                    record.learn(found)  # written before anything else happens
                    self.log.info("Found this task's fax in the outbox (tag %s): adopting %s", mark, found)
                known.update(found)
            adopted = [d for d in destinations if d in known]
            missing = [d for d in destinations if d not in known]
            unresolved = [d for d in missing if d in record.uncertain]
            if unresolved:
                self._ambiguous(mark, unresolved, known)
            if not missing:
                return self._result(record.submitted, known, mark, adopted, destinations, record.files)
            paths = [
                self.hook.upload_file(sources[i], user_id=self.user_id).path if i in sources else f
                for i, f in enumerate(files)
            ]
            # Another execution of this task instance (a try still running beside this one) may have
            # sent, or begun to send, while this one uploaded: read the record again just before the POST.
            decided = set(record.uncertain)
            record.refresh()
            sent_meanwhile = {d: record.ids[d] for d in missing if d in record.ids}
            if sent_meanwhile:
                self.log.info("Another try of this task sent this fax meanwhile: adopting %s", sent_meanwhile)
                known.update(sent_meanwhile)
                adopted += list(sent_meanwhile)
                missing = [d for d in missing if d not in sent_meanwhile]
            raced = [d for d in missing if d in record.uncertain and d not in decided]
            if raced:
                record.save()
                raise AirflowException(
                    f"Another try of this task, running at the same time as this one, may be sending the "
                    f"fax to {', '.join(raced)} (it marked them possibly sent while this try uploaded): "
                    f"this try does not send. The next try looks in the outbox for the tag {mark}."
                )
            if not missing:
                record.save()
                return self._result(record.submitted, known, mark, adopted, destinations, record.files)
            record.files = paths
            before = set(record.uncertain)
            record.uncertain |= set(missing)
            record.save()  # possibly sent from here on, until the answer says otherwise
            submitted_at = format_utc(pendulum.now("UTC")) or ""
            try:
                sent = self.hook.send_fax(
                    missing, paths, comment_tags=tags, user_id=self.user_id, **options
                ).outbox_fax_ids
            except send.FaxPlusSendUncertainError as exc:
                if exc.known_ids:
                    record.submitted.update(dict.fromkeys(exc.known_ids.values(), submitted_at))
                    record.learn(exc.known_ids)
                raise AirflowException(
                    f"{exc}. The fax may have been sent. The next try of this task looks in the outbox for "
                    f"the tag {mark} before sending again (give the task retries, and a retry_delay of a "
                    "minute or more: Fax.Plus can take about 30 s to show a new fax)."
                ) from exc
            except FaxPlusError as exc:
                if send.send_outcome("send", exc) != send.NOT_SENT:
                    raise
                record.not_sent(set(missing) - before)  # certainly not sent by this try
                raise
            record.submitted.update(dict.fromkeys(sent.values(), submitted_at))
            record.learn(sent)
        except FaxPlusError as exc:
            if protocol.is_permanent(exc):
                raise AirflowFailException(str(exc)) from exc
            raise
        return self._result(record.submitted, {**known, **sent}, mark, adopted, destinations, paths)

    def _refuse_mapped_duplicates(self, destinations: list[str], map_index: int | None) -> None:
        """Mapped instances have a mark each, so a number that two instances would send the same way is
        faxed twice. Refused where the expand input is literal (an XCom's is not visible): this task's
        ``expand(to=[...])`` or ``expand_kwargs([...])``, or, for a task in a mapped task group whose
        ``to`` is the group's argument, the group's ``expand``/``expand_kwargs``."""
        if map_index is None or map_index < 0:
            return
        dag = getattr(self, "dag", None)
        original = getattr(dag, "task_dict", {}).get(self.task_id) if dag is not None else None
        expand_input = getattr(original, "expand_input", None)
        key, where = "to", "this task's"
        if expand_input is None:  # a task in a mapped task group?
            to = getattr(original, "to", None)
            group_key = getattr(to, "_key", None)  # the group's argument passed as to (a MappedArgument)
            if type(to).__name__ != "MappedArgument" or not isinstance(group_key, str):
                return
            key = group_key
            group = getattr(original, "task_group", None)
            while group is not None and getattr(group, "_expand_input", None) is None:
                group = getattr(group, "parent_group", None)
            expand_input, where = getattr(group, "_expand_input", None), "its task group's"
        value = getattr(expand_input, "value", None)
        twice, call = _doubled(value, key, map_index, destinations)
        if twice:
            raise AirflowFailException(
                f"destination(s) given twice in {where} {call}: {', '.join(twice)}; each mapped "
                "instance sends on its own, so they would be faxed twice"
            )

    def _ambiguous(self, mark: str, missing: list[str], known: Mapping[str, str]) -> None:
        message = (
            f"An earlier try of this task may have sent the fax to {', '.join(missing)} (its answer was "
            f"lost, or the record of earlier tries is gone), and the outbox holds no fax tagged {mark} "
            "with this task's comment and tags for it: the fax may already have been sent and left the "
            "outbox, or may never have been created."
        )
        if known:
            message += (
                " Already sent (recorded, never sent again by this task): "
                + ", ".join(f"{d} (outbox id {i})" for d, i in known.items())
                + "."
            )
        message += (
            " Check the account's sent faxes (Fax.Plus app, or GET /accounts/{user_id}/faxes?category=sent)"
            " before sending again"
        )
        if self.on_ambiguous == "fail":
            raise AirflowFailException(
                message + "; set on_ambiguous='resend' and clear the task to send to "
                f"{', '.join(missing)} regardless."
            )
        self.log.warning("%s; on_ambiguous='resend': sending to %s again.", message, ", ".join(missing))

    def _result(
        self,
        submitted: Mapping[str, str],
        ids: Mapping[str, str],
        mark: str,
        adopted: list[str],
        destinations: list[str],
        files: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        return {
            "outbox_fax_ids": {d: ids[d] for d in destinations},
            # What FaxDeliverySensor matches a sent record by when it has an id of its own.
            "faxes": {
                ids[d]: {
                    "to": d,
                    "from_number": self.from_number,
                    "comment": self.comment or "",
                    "submitted_at": submitted.get(ids[d]) or None,
                }
                for d in destinations
            },
            "mark": mark,
            "user_id": self.user_id,
            "files": list(files or []),
            "adopted": adopted,
        }


def _numbers(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [n for n in value if isinstance(n, str)] if isinstance(value, list | tuple) else []


def _doubled(value: object, key: str, index: int, destinations: list[str]) -> tuple[list[str], str]:
    """The destinations of mapped instance ``index`` that another instance of the literal expand input
    ``value`` sends the same way, and the call that named them. ``expand`` (a dict of lists, a cross
    product): a number listed twice under ``key``. ``expand_kwargs`` (a list of dicts): a number another
    entry also sends, all its other arguments equal (entries that differ, say in files, are two faxes)."""
    if isinstance(value, Mapping):
        listed = value.get(key)
        if not isinstance(listed, list | tuple):
            return [], ""
        numbers = [n for item in listed for n in _numbers(item)]
        return sorted({n for n in destinations if numbers.count(n) > 1}), f"expand({key}=...)"
    if not isinstance(value, list | tuple) or not 0 <= index < len(value):
        return [], ""
    if not all(isinstance(entry, Mapping) for entry in value):
        return [], ""
    mine = value[index]
    rest = {k: v for k, v in mine.items() if k != key}
    twice: set[str] = set()
    for i, entry in enumerate(value):
        if i == index or {k: v for k, v in entry.items() if k != key} != rest:
            continue
        if key in entry and key in mine:
            twice |= set(destinations) & set(_numbers(entry[key]))
        elif key not in entry and key not in mine:  # both send to the same (partial's) destinations
            twice |= set(destinations)
    return sorted(twice), "expand_kwargs([...])"


class SendRecord:
    """What the tries of one task instance know of its send, kept where the next try reads it: the ids
    learned (``ids``: certainly sent, never sent again), the destinations possibly sent (``uncertain``)
    and the uploaded ``files``. Airflow 3.3: the task state store; Airflow 2.11 (no store): an Airflow
    Variable ``faxplus_send.<mark>``, in the metadata database as well."""

    def __init__(
        self, store: Any, key: str, mark: str, saved: object, run: Mapping[str, Any] | None = None
    ) -> None:
        self._store = store
        self._key = key
        self.mark = mark
        self.run: dict[str, Any] | None = None if run is None else dict(run)
        data = self._valid(saved, adopt=True) or {}
        self.lost = False
        self.ids: dict[str, str] = dict(data.get("ids") or {})
        self.also_sent: list[list[str]] = list(data.get("also_sent") or [])
        self.uncertain: set[str] = set(data.get("uncertain") or [])
        self.files: list[str] = list(data.get("files") or [])
        # Outbox id -> when it was submitted (ISO-8601 UTC), for FaxDeliverySensor's match by fields.
        self.submitted: dict[str, str] = dict(data.get("submitted") or {})
        self.found = bool(data)
        self._not_sent: set[str] = set()
        if self.run is not None and "token" not in self.run:
            self.run["token"] = uuid.uuid4().hex  # a record begun anew: its own lineage

    def _valid(self, saved: object, adopt: bool = False) -> dict[str, Any] | None:
        """A record of this task instance in this very DAG run, not one of an earlier run with the same
        run_id that was deleted (a Variable outlives it). ``adopt``: on opening, take its lineage."""
        if not isinstance(saved, dict) or saved.get("mark") != self.mark:
            return None
        theirs = saved.get("run")
        if self.run is None or not isinstance(theirs, dict):
            return saved if theirs == self.run else None
        if adopt and theirs.get("id") == self.run.get("id") and isinstance(theirs.get("token"), str):
            self.run["token"] = theirs["token"]
            return saved
        return saved if theirs == self.run else None

    @classmethod
    def open(cls, context: Any, mark: str, log: Any) -> SendRecord:
        store = context.get("task_state_store")
        key = STATE_KEY
        run = None
        if store is None:
            store, key = _VariableStore(), f"{STATE_KEY}.{mark}"
            run = run_identity(context)
        saved = store.get(key)
        if run is not None and context["ti"].try_number <= 1:
            # A Variable outlives its DAG run, and a deleted run's database id can come back (SQLite
            # reuses the highest row id): a first try takes no record as its own run's. Its later tries,
            # clears included, take the lineage it began (same run id and token).
            saved = None
        record = cls(store, key, mark, saved, run)
        # A try after the first with no record of earlier tries: they may have sent.
        record.lost = not record.found and context["ti"].try_number > 1
        return record

    def refresh(self) -> None:
        """Merge in what another execution of this task instance wrote since this one read the record:
        ids learned by anyone are kept (never overwritten), and so are destinations it marked possibly
        sent (except those this execution learned were certainly not sent by it)."""
        data = self._valid(self._store.get(self._key))
        if data is None:
            return
        for destination, fax_id in (data.get("ids") or {}).items():
            mine = self.ids.setdefault(destination, fax_id)
            if mine != fax_id and [destination, fax_id] not in self.also_sent:
                self.also_sent.append([destination, fax_id])  # two faxes: both ids are kept
        for pair in data.get("also_sent") or []:
            if pair not in self.also_sent:
                self.also_sent.append(pair)
        self.uncertain |= set(data.get("uncertain") or []) - self._not_sent
        if not self.files:
            self.files = list(data.get("files") or [])
        for fax_id, at in (data.get("submitted") or {}).items():
            self.submitted.setdefault(fax_id, at)

    def learn(self, ids: Mapping[str, str]) -> None:
        """Ids are written at once, and never taken back."""
        self.ids.update(ids)
        self.uncertain -= set(ids)
        self.save()

    def not_sent(self, destinations: set[str]) -> None:
        """This execution's send certainly made no fax for ``destinations``."""
        self._not_sent |= destinations
        self.uncertain -= destinations
        self.save()

    def save(self) -> None:
        """Read, merge, write: what another execution wrote meanwhile is kept. The store has no
        compare-and-set, so two writes in the same instant can still cross (see the README)."""
        self.refresh()
        value: dict[str, Any] = {
            "mark": self.mark,
            "run": self.run,
            "ids": self.ids,
            "uncertain": sorted(self.uncertain - set(self.ids)),
            "files": self.files,
        }
        if self.also_sent:
            value["also_sent"] = self.also_sent
        if self.submitted:
            value["submitted"] = self.submitted
        self._store.set(self._key, value)


def run_identity(context: Any) -> dict[str, Any] | None:
    """The DAG run's database id where the context has it (Airflow 2.11's DagRun); ``None`` otherwise."""
    run_id = getattr(context.get("dag_run"), "id", None)
    if not isinstance(run_id, int) or isinstance(run_id, bool):
        return None
    return {"id": run_id}


class _VariableStore:
    """Without a task state store (Airflow 2.11) an Airflow Variable is the durable record."""

    def get(self, key: str) -> Any:
        try:
            from airflow.sdk import Variable
        except ImportError:
            from airflow.models import Variable  # type: ignore[no-redef]

            return Variable.get(key, default_var=None, deserialize_json=True)  # type: ignore[call-arg]
        return Variable.get(key, default=None, deserialize_json=True)

    def set(self, key: str, value: Any) -> None:
        try:
            from airflow.sdk import Variable
        except ImportError:
            from airflow.models import Variable  # type: ignore[no-redef]
        Variable.set(key, value, serialize_json=True)
