"""DownloadFaxOperator: save a fax's file, or its confirmation report, to a local path or object storage."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator

from airflow_provider_faxplus.constants import DEFAULT_CONN_ID

# The hook (requests) loads when the task runs, not when a DAG file is parsed.
if TYPE_CHECKING:
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

FORMATS = ("pdf", "tiff")


def _templated(value: object) -> bool:
    return isinstance(value, str) and "{{" in value


class DownloadFaxOperator(BaseOperator):
    """Download a sent or received fax (*Download a fax file*), or with ``report=True`` the confirmation
    report of a sent fax, streamed and written atomically (no half file is ever left at ``destination``).

    Returns (XCom) ``{"fax_id", "user_id", "destination", "format", "report", "marked_read"}`` with
    ``destination`` where the file was written (a path or a URI).

    :param fax_id: The fax record's id (templated).
    :param destination: A local file path or existing directory, an object-storage URI (``s3://...``;
        one ending in ``/`` is a directory) or an ``ObjectStoragePath`` (templated). A directory gets
        ``<fax_id>.pdf`` (``.tif``) or ``<fax_id>-report.pdf``. An existing file is replaced.
    :param format: ``pdf`` or ``tiff`` (templated); the report is always a PDF.
    :param report: Download the confirmation report instead of the fax.
    :param mark_read: After the download, mark the record read (*Modify a fax record*, ``is_read``).
    :param user_id: ``self`` or a member's user id (templated).
    :param faxplus_conn_id: The ``faxplus`` connection (templated); the token needs ``fax:fax:read``, and
        ``fax:fax:edit`` for ``mark_read``.
    """

    template_fields: Sequence[str] = ("fax_id", "destination", "format", "user_id", "faxplus_conn_id")
    ui_color = "#e8f3fd"

    def __init__(
        self,
        *,
        fax_id: str,
        destination: Any,
        format: str = "pdf",
        report: bool = False,
        mark_read: bool = False,
        user_id: str = "self",
        faxplus_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = f"{type(self).__name__} {kwargs.get('task_id')!r}"
        if not isinstance(report, bool) or not isinstance(mark_read, bool):
            raise TypeError(f"{name}: report and mark_read must be True or False")
        if isinstance(format, str) and not _templated(format) and format not in FORMATS:
            raise ValueError(f"{name}: format must be one of {', '.join(FORMATS)}, got {format!r:.20}")
        if report and format != "pdf":
            raise ValueError(
                f"{name}: the confirmation report is a PDF; leave format as 'pdf' with report=True"
            )
        if destination is None or (isinstance(destination, str) and not destination.strip()):
            raise ValueError(f"{name}: destination is empty")
        self.fax_id = fax_id
        self.destination = destination
        self.format = format
        self.report = report
        self.mark_read = mark_read
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id

    @cached_property
    def hook(self) -> FaxPlusHook:
        from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

        return FaxPlusHook(faxplus_conn_id=self.faxplus_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_faxplus import protocol
        from airflow_provider_faxplus.exceptions import FaxPlusError, FaxPlusNotFoundError

        if self.format not in FORMATS:
            raise AirflowFailException(f"format must be one of {', '.join(FORMATS)}, got {self.format!r:.40}")
        what = "confirmation report" if self.report else f"file ({self.format})"
        try:
            if self.report:
                written = self.hook.download_fax_report(self.fax_id, self.destination, user_id=self.user_id)
            else:
                written = self.hook.download_fax(
                    self.fax_id, self.destination, format=self.format, user_id=self.user_id
                )
            if self.mark_read:
                self.hook.update_fax(self.fax_id, is_read=True, user_id=self.user_id)
        except FaxPlusNotFoundError as exc:
            raise AirflowFailException(f"Cannot download the {what} of fax {self.fax_id!r}: {exc}") from exc
        except FaxPlusError as exc:
            if protocol.is_permanent(exc):  # no retry of the task can fix it
                raise AirflowFailException(str(exc)) from exc
            raise  # transient beyond the retry budget, or a malformed answer: the task's retries apply
        self.log.info("Saved the %s of fax %s to %s", what, self.fax_id, written)
        return {
            "fax_id": self.fax_id,
            "user_id": self.user_id,
            "destination": str(written),
            "format": "pdf" if self.report else self.format,
            "report": self.report,
            "marked_read": self.mark_read,
        }
