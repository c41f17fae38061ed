"""UpdateOutboxCommentOperator: set the comment of a fax in the Fax.Plus outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator

from airflow_provider_faxplus.constants import DEFAULT_CONN_ID

# The hook (requests) loads when the task runs, not when a DAG file is parsed.
if TYPE_CHECKING:
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

# Values that can never render into a string comment; anything else (a str, a template, an XComArg)
# is checked once rendered.
_NOT_A_COMMENT = (type(None), bool, int, float, bytes, list, tuple, dict, set)
SUMMARY_COMMENT_CHARS = 1000


class UpdateOutboxCommentOperator(BaseOperator):
    """Set the comment of a fax that is still in the Fax.Plus outbox (*Modify an outgoing fax*).

    Returns (XCom) ``{"outbox_fax_id", "user_id", "comment", "comment_truncated", "updated_at"}``:
    the comment is cut to 1,000 characters in the summary (the whole comment is sent).

    :param outbox_fax_id: The outbox id of the fax (templated).
    :param comment: The new comment text (templated). Must render to a string.
    :param user_id: ``self`` or a member's user id (templated).
    :param faxplus_conn_id: The ``faxplus`` connection (templated); the token needs ``fax:fax:edit``.
    """

    template_fields: Sequence[str] = ("outbox_fax_id", "comment", "user_id", "faxplus_conn_id")
    ui_color = "#fdf3e8"

    def __init__(
        self,
        *,
        outbox_fax_id: str,
        comment: str,
        user_id: str = "self",
        faxplus_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(comment, _NOT_A_COMMENT):
            raise TypeError(
                f"{type(self).__name__} {kwargs.get('task_id')!r}: comment must be a string, "
                f"got {type(comment).__name__}"
            )
        self.outbox_fax_id = outbox_fax_id
        self.comment = comment
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id

    @cached_property
    def hook(self) -> FaxPlusHook:
        from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

        return FaxPlusHook(faxplus_conn_id=self.faxplus_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_faxplus import protocol
        from airflow_provider_faxplus.exceptions import (
            FaxPlusConflictError,
            FaxPlusError,
            FaxPlusNotFoundError,
        )

        if not isinstance(self.comment, str):
            raise AirflowFailException(
                f"comment must render to a string, got {type(self.comment).__name__}: {self.comment!r:.100}"
            )
        try:
            self.hook.update_outbox_fax(self.outbox_fax_id, comment=self.comment, user_id=self.user_id)
        except FaxPlusNotFoundError as exc:
            raise AirflowFailException(
                f"Cannot set the comment: outbox fax {self.outbox_fax_id!r} is not in the outbox (it has "
                f"already been sent or has failed, or the id is wrong). {exc}"
            ) from exc
        except FaxPlusConflictError as exc:
            raise AirflowFailException(
                f"Cannot set the comment: Fax.Plus refuses to modify outbox fax {self.outbox_fax_id!r} "
                f"in its current state (a fax that is sending cannot be modified). {exc}"
            ) from exc
        except FaxPlusError as exc:
            if protocol.is_permanent(exc):  # no retry of the task can fix it
                raise AirflowFailException(str(exc)) from exc
            raise  # transient beyond the retry budget, or a malformed response: the task's retries apply
        self.log.info(
            "Set the comment of outbox fax %s (%d characters)", self.outbox_fax_id, len(self.comment)
        )
        return {
            "outbox_fax_id": self.outbox_fax_id,
            "user_id": self.user_id,
            "comment": self.comment[:SUMMARY_COMMENT_CHARS],
            "comment_truncated": len(self.comment) > SUMMARY_COMMENT_CHARS,
            "updated_at": datetime.now(UTC).isoformat(),
        }
