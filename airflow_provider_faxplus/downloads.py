"""Where a downloaded fax file or report goes: a local path or an ``ObjectStoragePath``, written atomically.

Each attempt writes a hidden temporary sibling (``.<name>.<random>.part``); only a complete download is
renamed onto the destination, and a failed one is removed, so no half file is ever left under the
destination's name. On object storage the rename is the store's move (a copy then a delete on S3-like
stores): the destination still appears only complete.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Any

from airflow_provider_faxplus.exceptions import FaxPlusError, FaxPlusInputError
from airflow_provider_faxplus.files import is_object_storage_uri, object_storage_path


class FaxPlusDownloadError(FaxPlusError):
    """The destination could not be written (nothing is left under its name)."""


def default_name(fax_id: str, fmt: str, report: bool) -> str:
    return f"{fax_id}-report.pdf" if report else f"{fax_id}.{'tif' if fmt == 'tiff' else fmt}"


class Destination:
    """One download's target; :meth:`attempt` gives a fresh temporary file per HTTP attempt."""

    def __init__(self, destination: Any, name: str) -> None:
        self._temp: Any = None
        self._handle: IO[bytes] | None = None
        if isinstance(destination, str) and is_object_storage_uri(destination):
            is_dir = destination.endswith("/")
            destination = object_storage_path(destination)
            if is_dir:
                destination = destination / name
        if isinstance(destination, os.PathLike) and not hasattr(destination, "fs"):
            destination = os.fspath(destination)
        if isinstance(destination, str):
            if not destination.strip():
                raise FaxPlusInputError("destination is empty")
            path = Path(destination)
            if destination.endswith(("/", os.sep)) or path.is_dir():
                path = path / name
            if not path.parent.is_dir():
                raise FaxPlusInputError(f"destination directory {str(path.parent)!r} does not exist")
            self.local: Path | None = path
            self.remote: Any = None
        elif hasattr(destination, "fs") and hasattr(destination, "open"):  # ObjectStoragePath, both lines
            if str(destination).endswith("/") or _is_dir(destination):
                destination = destination / name
            self.local, self.remote = None, destination
        else:
            raise FaxPlusInputError(
                "destination must be a local path, an object-storage URI or an ObjectStoragePath, "
                f"got {type(destination).__name__}"
            )

    def __str__(self) -> str:
        return str(self.local if self.local is not None else self.remote)

    @property
    def result(self) -> Any:
        """What the caller gets back: the local path as a string, or the ObjectStoragePath."""
        return str(self.local) if self.local is not None else self.remote

    def attempt(self) -> IO[bytes]:
        """A fresh temporary file for one attempt (an earlier attempt's is removed first)."""
        self.discard()
        suffix = f".{uuid.uuid4().hex[:12]}.part"
        try:
            if self.local is not None:
                self._temp = self.local.with_name(f".{self.local.name}{suffix}")
                self._handle = open(self._temp, "xb")  # noqa: SIM115 - closed by commit/discard
            else:
                self._temp = self.remote.parent / f".{self.remote.name}{suffix}"
                self._handle = self._temp.open("wb")
        except OSError as exc:
            raise FaxPlusDownloadError(f"cannot write to {self}: {exc}") from None
        assert self._handle is not None
        return self._handle

    def commit(self) -> Any:
        """Move the complete temporary file onto the destination; returns :attr:`result`."""
        assert self._handle is not None
        assert self._temp is not None
        try:
            if self.local is not None:
                self._handle.flush()
                os.fsync(self._handle.fileno())
                self._handle.close()
                os.replace(self._temp, self.local)
            else:
                self._handle.close()  # object stores upload on close
                self.remote.fs.mv(self._temp.path, self.remote.path)
        except Exception as exc:
            self.discard()
            raise FaxPlusDownloadError(f"cannot write to {self}: {exc}") from None
        self._handle = self._temp = None
        return self.result

    def discard(self) -> None:
        """Remove what an unfinished attempt wrote."""
        handle, temp = self._handle, self._temp
        self._handle = self._temp = None
        if handle is not None and self.local is not None:
            with contextlib.suppress(OSError):
                handle.close()
        # An object-store file is never closed here (closing would upload the half file): discarded.
        if handle is not None and self.remote is not None and hasattr(handle, "discard"):
            with contextlib.suppress(Exception):
                handle.discard()
        if temp is not None:
            with contextlib.suppress(Exception):
                if self.local is not None:
                    os.unlink(temp)
                elif temp.exists():
                    temp.unlink()


def _is_dir(path: Any) -> bool:
    try:
        return bool(path.is_dir())
    except Exception:
        return False
