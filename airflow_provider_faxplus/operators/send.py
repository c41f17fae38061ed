"""SendFaxOperator: upload files and send a fax, never twice (see the README's never-twice policy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

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
    "adopted"}``: ``adopted`` lists the destinations whose fax an earlier try had already sent.

    Never sends twice: each send carries a comment tag (``mark``) derived from the task instance; a
    retried try first looks for it in the outbox and adopts what it finds. When an earlier try may have
    sent the fax and the outbox does not show it (it may have been sent already, leaving the outbox),
    ``on_ambiguous="fail"`` (default) fails the task, ``"resend"`` sends again.

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

        store = context.get("task_state_store")
        saved = store.get(STATE_KEY) if store is not None else None
        saved = saved if isinstance(saved, dict) and saved.get("mark") == mark else {}
        if saved.get("phase") == "sent" and set(saved.get("ids", {})) >= set(destinations):
            self.log.info("An earlier try sent this fax (task state store): adopting %s", saved["ids"])
            return self._result(saved["ids"], mark, [], destinations)
        # Without a state store (Airflow < 3.3) any retry may follow a send whose answer was lost.
        maybe_sent = saved.get("phase") == "sending" or (store is None and ti.try_number > 1)
        try:
            found: dict[str, str] = {}
            if maybe_sent or ti.try_number > 1:
                marked = send.find_marked(self.hook.list_outbox_faxes(self.user_id), mark)
                found = {d: marked[d] for d in destinations if d in marked}
                if found:
                    self.log.info("Found this task's fax in the outbox (tag %s): adopting %s", mark, found)
            missing = [d for d in destinations if d not in found]
            if missing and maybe_sent:
                self._ambiguous(mark, missing)
            if not missing:
                if store is not None:
                    store.set(STATE_KEY, {"mark": mark, "phase": "sent", "ids": found})
                return self._result(found, mark, list(found), destinations)
            paths = [
                self.hook.upload_file(sources[i], user_id=self.user_id).path if i in sources else f
                for i, f in enumerate(files)
            ]
            if store is not None:
                store.set(STATE_KEY, {"mark": mark, "phase": "sending", "to": missing})
            try:
                sent = self.hook.send_fax(
                    missing, paths, comment_tags=tags, user_id=self.user_id, **options
                ).outbox_fax_ids
            except send.FaxPlusSendUncertainError as exc:
                raise AirflowException(
                    f"{exc}. The fax may have been sent. The next try of this task looks in the outbox for "
                    f"the tag {mark} before sending again (give the task retries, and a retry_delay of a "
                    "minute or more: Fax.Plus can take about 30 s to show a new fax)."
                ) from exc
            except FaxPlusError:
                if store is not None:  # certainly not sent: the next try needs no lookup
                    store.set(STATE_KEY, {"mark": mark, "phase": "not_sent"})
                raise
        except FaxPlusError as exc:
            if protocol.is_permanent(exc):
                raise AirflowFailException(str(exc)) from exc
            raise
        ids = {**found, **sent}
        if store is not None:
            store.set(STATE_KEY, {"mark": mark, "phase": "sent", "ids": ids})
        return self._result(ids, mark, list(found), destinations, paths)

    def _ambiguous(self, mark: str, missing: list[str]) -> None:
        message = (
            f"An earlier try of this task may have sent the fax to {', '.join(missing)} (its answer was "
            f"lost), and the outbox holds no fax tagged {mark} for it: the fax may already have been sent "
            "and left the outbox, or may never have been created. Check the account's sent faxes (Fax.Plus "
            "app, or GET /accounts/{user_id}/faxes?category=sent) before sending again"
        )
        if self.on_ambiguous == "fail":
            raise AirflowFailException(message + "; set on_ambiguous='resend' to send regardless.")
        self.log.warning("%s; on_ambiguous='resend': sending again.", message)

    def _result(
        self,
        ids: Mapping[str, str],
        mark: str,
        adopted: list[str],
        destinations: list[str],
        files: list[str] | None = None,
    ) -> dict[str, Any]:
        return {
            "outbox_fax_ids": {d: ids[d] for d in destinations},
            "mark": mark,
            "user_id": self.user_id,
            "files": files or [],
            "adopted": adopted,
        }
