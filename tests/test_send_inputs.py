"""Issue 20's findings on the send path's inputs and edges, over real HTTP against the sandbox: files
that cannot be read, the upload timeout, 404s, E.164 lengths, memory, and the sandbox's fidelity."""

from __future__ import annotations

import io
import time
import tracemalloc
from types import SimpleNamespace
from typing import IO

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_faxplus import protocol, send
from airflow_provider_faxplus.exceptions import FaxPlusAPIError, FaxPlusInputError, FaxPlusNotFoundError
from airflow_provider_faxplus.files import CHUNK_BYTES, FileSource, MultipartBody, file_source
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.operators.send import SendFaxOperator
from airflow_provider_faxplus.sandbox.dagtest import wait_until

PDF = b"%PDF-1.4\n% tiny\n%%EOF\n"


def _uploads(control):
    return [e for e in control.requests() if e["method"] == "POST" and e["path"].endswith("/files")]


@pytest.fixture
def short_hook(sandbox, monkeypatch):
    """A connection with a 1.5 s timeout and short backoffs."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT", sandbox.connection_json(initial_backoff=0.05, timeout=1.5)
    )
    hook = FaxPlusHook()
    yield hook
    hook.close()


# Finding 3: a file that cannot be read -------------------------------------------------------------


def test_a_directory_given_as_a_file_uri_is_refused_before_any_request(hook, control, tmp_path):
    with pytest.raises(FaxPlusInputError, match="is not a file"):
        hook.upload_file(f"file://{tmp_path}")
    assert control.requests() == []


def test_the_operator_refuses_an_unreadable_file_at_once_without_retries(faxplus_conn, control, tmp_path):
    operator = SendFaxOperator(task_id="send", to="+16699990001", files=[f"file://{tmp_path}"])
    ti = SimpleNamespace(dag_id="d", task_id="send", run_id="r", map_index=-1, try_number=1)
    with pytest.raises(AirflowFailException, match="is not a file"):
        operator.execute({"ti": ti, "task_state_store": None})
    assert control.requests() == []


def test_a_file_that_fails_to_open_is_a_clear_error_not_a_network_error(hook, control, tmp_path):
    def refuse() -> IO[bytes]:
        raise PermissionError(13, "Permission denied")

    source = FileSource("a.pdf", 100, refuse, "/data/a.pdf")
    with pytest.raises(FaxPlusInputError, match=r"cannot read file '/data/a\.pdf': Permission denied"):
        hook.upload_file(source)
    assert len(_uploads(control)) <= 1  # not five attempts of a "network error"


def test_an_unreadable_local_file_is_refused_before_any_request(hook, control, tmp_path, monkeypatch):
    local = tmp_path / "a.pdf"
    local.write_bytes(PDF)
    real_open = type(local).open

    def no_read(self, mode="r", *args, **kwargs):  # root reads any file: refuse as the OS would
        if self == local:
            raise PermissionError(13, "Permission denied")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(type(local), "open", no_read)
    with pytest.raises(FaxPlusInputError, match="Permission denied"):
        file_source(str(local))
    assert control.requests() == []


# Finding 4: the timeout bounds inactivity, not the whole upload ----------------------------------------


class _Slow(io.RawIOBase):
    """A source that gives 1 MiB every ``pause`` seconds (an object store at 1 MiB/s and more)."""

    def __init__(self, chunks: int, pause: float) -> None:
        self.left, self.pause = chunks, pause

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self.left:
            return b""
        self.left -= 1
        time.sleep(self.pause)
        return b"x" * CHUNK_BYTES


def test_a_slow_upload_that_keeps_moving_is_not_cut_off_by_the_timeout(short_hook, control):
    chunks, pause = 6, 0.4  # 2.4 s in all against a 1.5 s timeout; never 1.5 s without a byte
    source = FileSource("slow.pdf", chunks * CHUNK_BYTES, lambda: _Slow(chunks, pause), "slow.pdf")  # type: ignore[arg-type,return-value]
    uploaded = short_hook.upload_file(source)
    assert uploaded.size == chunks * CHUNK_BYTES
    assert len(_uploads(control)) == 1


# Finding 5: 404 on send or upload ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/files", "/outbox"])
def test_a_404_on_send_or_upload_names_the_path_and_is_permanent(hook, control, suffix):
    control.add_fault(status=404, method="POST", path_endswith=suffix)
    call = (
        (lambda: hook.upload_file(PDF, file_name="a.pdf"))
        if suffix == "/files"
        else (lambda: hook.send_fax("+16699990001", ["/transient-x"]))
    )
    with pytest.raises(FaxPlusAPIError) as raised:
        call()
    assert not isinstance(raised.value, FaxPlusNotFoundError)
    assert "outbox id" not in str(raised.value)
    assert "No such path on this API" in str(raised.value)
    assert protocol.is_permanent(raised.value)


# Finding 9: bytes are not copied whole ---------------------------------------------------------------


def test_a_bytearray_upload_is_not_copied_whole():
    data = bytearray(20 * 1024 * 1024)
    tracemalloc.start()
    try:
        body = MultipartBody(b"HEAD", file_source(data, file_name="big.pdf"), b"TAIL")
        while body.read(CHUNK_BYTES):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024, f"{peak:,} bytes at peak for a 20 MiB bytearray"
    assert len(body) == len(data) + 8


# Finding 10: E.164 lengths ---------------------------------------------------------------------------


def test_seven_digit_international_numbers_are_valid(hook, control):
    for number in ("+6834002", "+6907001"):  # Niue, Tokelau
        assert send.validate_number("to", number) == number
    path = hook.upload_file(PDF, file_name="a.pdf").path
    assert list(hook.send_fax("+6834002", [path]).outbox_fax_ids) == ["+6834002"]
    for number in ("+123456", "+1234567890123456"):  # 6 and 16 digits
        with pytest.raises(FaxPlusInputError, match="7 to 15 digits"):
            send.validate_number("to", number)


# Finding 11: sandbox fidelity --------------------------------------------------------------------------


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = min(self.left, CHUNK_BYTES if size is None or size < 0 else size)
        self.left -= n
        return bytes(n)


def test_the_sandbox_takes_a_file_of_exactly_150_mb_and_refuses_one_byte_more(hook, control):
    limit = send.MAX_TOTAL_BYTES
    exact = FileSource("big.pdf", limit, lambda: _Zeros(limit), "big.pdf")  # type: ignore[arg-type,return-value]
    assert hook.upload_file(exact).size == limit
    over = FileSource("big.pdf", limit + 1, lambda: _Zeros(limit + 1), "big.pdf")  # type: ignore[arg-type,return-value]
    with pytest.raises(FaxPlusInputError, match="150,000,000"):
        hook.upload_file(over)  # the provider refuses it first


def test_a_late_fault_processes_the_send_after_the_client_gave_up(short_hook, control):
    path = short_hook.upload_file(PDF, file_name="a.pdf").path
    control.add_fault(delay=3, late=True, method="POST", path_endswith="/outbox")
    with pytest.raises(send.FaxPlusSendUncertainError):
        short_hook.send_fax("+16699990001", [path])
    wait_until(lambda: len(control.faxes()) == 1, "the late send to create its fax", timeout=30, interval=0.2)
