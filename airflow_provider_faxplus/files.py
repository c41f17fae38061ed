"""Files to upload: a local path, bytes with a file name, or an Airflow ``ObjectStoragePath`` (S3, GCS, ...),
streamed into a multipart body without reading it whole (a 150 MB file is never held twice in memory)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from airflow_provider_faxplus.exceptions import FaxPlusInputError
from airflow_provider_faxplus.send import validate_file_name

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileSource:
    """Where one file's bytes come from; ``open`` may be called once per upload attempt."""

    file_name: str
    size: int
    open: Callable[[], IO[bytes]]
    describe: str  # for messages: a name or a location, never contents


def is_object_storage_uri(value: object) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: anything Airflow's ObjectStoragePath opens."""
    return isinstance(value, str) and "://" in value


def object_storage_path(uri: str) -> Any:
    try:  # Airflow 3
        from airflow.sdk import ObjectStoragePath
    except ImportError:  # Airflow 2.11
        from airflow.io.path import ObjectStoragePath  # type: ignore[no-redef]
    return ObjectStoragePath(uri)


def _within_roots(source: object, allowed_roots: list[str] | tuple[str, ...]) -> object:
    """``source`` if it lies under one of ``allowed_roots``, else :class:`FaxPlusInputError`. A local path is
    resolved first (symbolic links and ``..`` followed), and the resolved path is what gets opened; an
    object-storage location must start with a root that is a URI (``s3://bucket/faxes/``)."""
    if isinstance(source, bytes | bytearray | memoryview | FileSource):
        return source
    text = str(source) if is_object_storage_uri(str(source)) else None
    if text is None and isinstance(source, str | os.PathLike):
        resolved = Path(os.fspath(source)).resolve()
        for root in allowed_roots:
            if "://" not in root and resolved.is_relative_to(Path(root).resolve()):
                return resolved
    elif text is not None:
        for root in allowed_roots:
            if "://" in root and text.startswith(root if root.endswith("/") else root + "/"):
                return source
    raise FaxPlusInputError(
        f"file {str(source)!r} is outside allowed_roots ({', '.join(map(repr, allowed_roots))}): "
        "refused before any request"
    )


def file_source(
    source: object, file_name: str | None = None, allowed_roots: list[str] | tuple[str, ...] | None = None
) -> FileSource:
    """A :class:`FileSource` for bytes (``file_name`` required), a local path, or an object-storage path;
    the name (given or the path's) must have a type Fax.Plus accepts. With ``allowed_roots``, a path or
    location outside every root is refused."""
    if isinstance(source, FileSource):
        return source
    if allowed_roots is not None:
        source = _within_roots(source, allowed_roots)
    if isinstance(source, bytes | bytearray | memoryview):
        if file_name is None:
            raise FaxPlusInputError("file_name is required with bytes: it gives Fax.Plus the file type")
        # Read in place: copying a 60 MB bytearray would hold it twice.
        view = memoryview(source).cast("B") if not isinstance(source, bytes) else memoryview(source)
        return FileSource(
            validate_file_name(file_name),
            view.nbytes,
            lambda: cast("IO[bytes]", _ViewReader(view)),
            file_name,
        )
    if isinstance(source, str) and is_object_storage_uri(source):
        source = object_storage_path(source)
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise FaxPlusInputError(f"cannot read file {str(path)!r}: {exc.strerror or exc}") from None
        if not path.is_file():
            raise FaxPlusInputError(f"{str(path)!r} is not a file")
        name = validate_file_name(file_name or path.name)
        _check_opens(lambda: path.open("rb"), str(path))
        return FileSource(name, size, lambda: path.open("rb"), str(path))
    if hasattr(source, "size") and hasattr(source, "open"):  # ObjectStoragePath on both Airflow lines
        where = str(source)
        try:
            size = int(source.size())
        except (OSError, ValueError) as exc:
            raise FaxPlusInputError(f"cannot read {where!r}: {exc}") from None
        try:
            is_file = bool(source.is_file())  # type: ignore[attr-defined]
        except (OSError, ValueError) as exc:
            raise FaxPlusInputError(f"cannot read {where!r}: {exc}") from None
        if not is_file:
            raise FaxPlusInputError(f"{where!r} is not a file")
        name = validate_file_name(file_name or str(getattr(source, "name", "")))
        _check_opens(lambda: source.open("rb"), where)
        return FileSource(name, size, lambda: source.open("rb"), where)
    if isinstance(source, os.PathLike):
        return file_source(os.fspath(source), file_name)
    raise FaxPlusInputError(
        f"a file must be a local path, bytes or an ObjectStoragePath, got {type(source).__name__}"
    )


def _check_opens(opener: Callable[[], IO[bytes]], where: str) -> None:
    """Open (and read a byte of) a file before any request: one that cannot be read is a clear,
    permanent error, never a failed upload that looks like a network error."""
    try:
        with opener() as handle:
            handle.read(1)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FaxPlusInputError(f"cannot read file {where!r}: {reason}") from None


class _ViewReader(io.RawIOBase):
    """Reads a memoryview without copying it whole (each read copies only what it returns)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def read(self, size: int = -1) -> bytes:
        end = self._view.nbytes if size is None or size < 0 else self._pos + size
        out = bytes(self._view[self._pos : end])
        self._pos += len(out)
        return out


class MultipartBody:
    """A file-like ``head + file + tail`` of known length, read in chunks by the HTTP client, so
    requests sends a ``Content-Length`` and streams the file."""

    def __init__(
        self, head: bytes, source: FileSource, tail: bytes, progress: Callable[[], None] | None = None
    ) -> None:
        self._progress = progress  # called as bytes are handed over: the timeout bounds inactivity
        self._length = len(head) + source.size + len(tail)
        self._parts = self._chunks(head, source, tail)
        self._buffer = b""
        self._offset = 0
        self._sent = 0

    def __len__(self) -> int:
        return self._length

    @staticmethod
    def _chunks(head: bytes, source: FileSource, tail: bytes) -> Iterator[bytes]:
        yield head
        try:
            with source.open() as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    yield chunk
        except OSError as exc:
            # Not an OSError: the HTTP client would take it for a network failure and retry.
            raise FaxPlusInputError(f"cannot read file {source.describe!r}: {exc.strerror or exc}") from None
        yield tail

    def read(self, size: int = -1) -> bytes:
        # One chunk at a time and an offset into it: no copying of what is still to send.
        while self._offset >= len(self._buffer):
            chunk = next(self._parts, None)
            if chunk is None:
                if self._sent != self._length:
                    raise FaxPlusInputError(
                        f"the file changed size while uploading ({self._sent:,} of {self._length:,} bytes)"
                    )
                return b""
            self._buffer, self._offset = chunk, 0
        end = len(self._buffer) if size < 0 else min(len(self._buffer), self._offset + size)
        out = self._buffer[self._offset : end]
        self._offset = end
        self._sent += len(out)
        if self._progress is not None:
            self._progress()
        return out

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_BYTES):
            yield chunk


def one_page_pdf(text: str) -> bytes:
    """A valid one-page PDF showing ``text`` (ASCII), built by hand: no PDF library needed."""
    safe = text.encode("ascii", "replace").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
    stream = b"BT /F1 18 Tf 72 720 Td (" + safe + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
