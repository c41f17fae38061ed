"""Upload, send, list and cancel through FaxPlusHook against the sandbox over real HTTP, and the
never-twice rule for sends: retried only when the request provably did not reach the API."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_faxplus import send
from airflow_provider_faxplus.exceptions import (
    FaxPlusAPIError,
    FaxPlusAuthError,
    FaxPlusInputError,
    FaxPlusNotFoundError,
    FaxPlusNotSentError,
    FaxPlusResponseError,
)
from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.models import OutboxFax, OutboxStatus, parse_outbox
from airflow_provider_faxplus.send import FaxPlusSendUncertainError
from tests.conftest import TOKEN

PDF = b"%PDF-1.4\n% tiny\n%%EOF\n"
SECRET_CONTENT = b"%PDF-1.4\nCONTENT-SENTINEL-7c1e\n%%EOF\n"


def _posts(control, suffix="/outbox"):
    return [e for e in control.requests() if e["method"] == "POST" and e["path"].endswith(suffix)]


def test_upload_bytes_path_and_object_storage_path(hook, control, tmp_path):
    from airflow_provider_faxplus.files import object_storage_path

    local = tmp_path / "report.pdf"
    local.write_bytes(PDF * 1000)
    first = hook.upload_file(PDF, file_name="a.pdf")
    second = hook.upload_file(str(local))
    third = hook.upload_file(object_storage_path(f"file://{local}"), format="pdf")
    fourth = hook.upload_file(f"file://{local}")  # a URI string opens as an ObjectStoragePath
    assert [u.path.startswith("/transient-") for u in (first, second, third, fourth)] == [True] * 4
    assert (first.size, second.size, third.size) == (len(PDF), len(PDF) * 1000, len(PDF) * 1000)
    assert (fourth.size, fourth.file_name) == (len(PDF) * 1000, "report.pdf")
    uploads = _posts(control, "/files")
    assert len(uploads) == 4
    assert uploads[2]["query"] == "format=pdf"
    assert all(e["headers"]["content-type"].startswith("multipart/form-data; boundary=") for e in uploads)
    # Streamed with a length, not chunked.
    assert uploads[1]["headers"]["content-length"].isdigit()
    assert "transfer-encoding" not in uploads[1]["headers"]
    assert 'name="fax_file"; filename="report.pdf"' in uploads[1]["body"]


def test_upload_is_streamed_from_a_file_without_reading_it_whole(tmp_path):
    from airflow_provider_faxplus.files import CHUNK_BYTES, MultipartBody, file_source

    local = tmp_path / "big.tiff"
    local.write_bytes(b"x" * (3 * CHUNK_BYTES + 5))
    body = MultipartBody(b"HEAD", file_source(str(local)), b"TAIL")
    reads = []
    while chunk := body.read(16384):
        reads.append(len(chunk))
    assert sum(reads) == len(body) == 3 * CHUNK_BYTES + 13
    assert max(reads) <= 16384


def test_send_returns_an_outbox_id_per_destination_with_every_field(hook, control):
    path = hook.upload_file(PDF, file_name="a.pdf").path
    when = datetime(2030, 1, 2, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    sent = hook.send_fax(
        ["+16699990001", "+16699990002"],
        [path],
        from_number="+16699990000",
        comment="batch 1",
        comment_tags=["billing"],
        send_time=when,
        retry_count=2,
        retry_delay=60,
        enhancement=True,
        cover_page={"name_to": "Ops", "flags": ["urgent"]},
    )
    assert set(sent.outbox_fax_ids) == {"+16699990001", "+16699990002"}
    [post] = _posts(control)
    payload = json.loads(post["body"])
    assert payload == {
        "from": "+16699990000",
        "to": ["+16699990001", "+16699990002"],
        "files": [path],
        "return_ids": True,
        "comment": {"tags": ["billing"], "text": "batch 1"},
        "options": {"enhancement": True, "retry": {"count": 2, "delay": 60}},
        "send_time": "2030-01-02 02:05:06 +0000",
        "cover_page": {"name_to": "Ops", "flags": ["urgent"]},
    }
    listed = {entry.id: entry for entry in hook.list_outbox_faxes()}
    for destination, fax_id in sent.outbox_fax_ids.items():
        assert listed[fax_id].to == (destination,)
        assert listed[fax_id].comment.tags == ("billing",)
        assert listed[fax_id].status == "submitted"
        assert hook.get_outbox_fax(fax_id).comment.text == "batch 1"


def test_cancel_takes_the_fax_out_of_the_outbox(hook, control):
    path = hook.upload_file(PDF, file_name="a.pdf").path
    [fax_id] = hook.send_fax("+16699990001", [path]).outbox_fax_ids.values()
    hook.cancel_outbox_fax(fax_id)
    assert fax_id not in {entry.id for entry in hook.list_outbox_faxes()}
    with pytest.raises(FaxPlusNotFoundError):
        hook.cancel_outbox_fax(fax_id)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"to": "16699990001"}, "'16699990001' is not a fax number in E.164 form"),
        ({"to": ["+1 669 999 0001"]}, "'+1 669 999 0001'"),
        ({"to": ["+16699990001", "+16699990001"]}, "given twice: +16699990001"),
        ({"to": []}, "to is empty"),
        ({"from_number": "0800"}, "from_number '0800'"),
        ({"files": ["/transient-x"] * 11}, "11 files given; Fax.Plus accepts at most 10"),
        ({"files": ["report.pdf"]}, "'report.pdf' is not an uploaded path"),
        ({"send_time": datetime(2030, 1, 1)}, "has no time zone"),
        ({"retry_count": 4}, "retry_count must be a whole number from 0 to 3, got 4"),
        ({"retry_delay": 181}, "retry_delay must be a whole number from 0 to 180, got 181"),
        ({"cover_page": {"colour": "red"}}, "unknown field(s) colour"),
        ({"comment_tags": "x"}, "comment_tags must be a list"),
    ],
)
def test_send_refuses_bad_input_before_any_request(hook, control, kwargs, named):
    arguments = {"to": ["+16699990001"], "files": ["/transient-x"], **kwargs}
    with pytest.raises(FaxPlusInputError) as caught:
        hook.send_fax(arguments.pop("to"), arguments.pop("files"), **arguments)
    assert named in str(caught.value)
    assert control.requests() == []


def test_upload_refuses_bad_files_before_any_request(hook, control, tmp_path):
    big = tmp_path / "big.pdf"
    with big.open("wb") as handle:  # sparse: 150 MB + 1 byte without writing them
        handle.truncate(send.MAX_TOTAL_BYTES + 1)
    with pytest.raises(FaxPlusInputError, match=r"big.pdf \(150,000,001 bytes\)"):
        hook.upload_file(str(big))
    with pytest.raises(FaxPlusInputError, match=r"'notes.exe' has a type Fax.Plus does not accept"):
        hook.upload_file(PDF, file_name="notes.exe")
    with pytest.raises(FaxPlusInputError, match="file_name is required with bytes"):
        hook.upload_file(PDF)
    with pytest.raises(FaxPlusInputError, match="cannot read file"):
        hook.upload_file(str(tmp_path / "missing.pdf"))
    assert control.requests() == []


def test_file_contents_never_reach_logs_or_errors(hook, control, caplog):
    caplog.set_level("DEBUG")
    control.add_fault(status=400, method="POST", path_contains="/files")
    with pytest.raises(FaxPlusAPIError) as caught:
        hook.upload_file(SECRET_CONTENT, file_name="a.pdf")
    hook.upload_file(SECRET_CONTENT, file_name="a.pdf")
    assert "CONTENT-SENTINEL" not in caplog.text + str(caught.value) + repr(caught.value)
    assert TOKEN not in caplog.text


# Never twice ----------------------------------------------------------------------------------------


def test_a_send_whose_answer_is_lost_is_not_retried(hook, control):
    path = hook.upload_file(PDF, file_name="a.pdf").path
    control.add_fault(drop_after=True, method="POST", path_contains="/outbox")
    with pytest.raises(FaxPlusSendUncertainError, match=r"may have reached Fax\.Plus"):
        hook.send_fax("+16699990001", [path], comment_tags=["airflow-0123456789ab"])
    assert len(_posts(control)) == 1  # one attempt, though max_attempts is 5
    [fax] = [f for f in control.faxes() if "airflow-0123456789ab" in f["comment"]["tags"]]
    assert fax["in_outbox"]  # the fax exists: the answer was what got lost


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_send_answered_5xx_is_not_retried(hook, control, status):
    path = hook.upload_file(PDF, file_name="a.pdf").path
    control.add_fault(status=status, retry_after="0", method="POST", path_contains="/outbox", times=3)
    with pytest.raises(FaxPlusSendUncertainError):
        hook.send_fax("+16699990001", [path])
    assert len(_posts(control)) == 1


@pytest.mark.parametrize("status", [408, 429])
def test_a_send_refused_unprocessed_is_retried(hook, control, status):
    path = hook.upload_file(PDF, file_name="a.pdf").path
    control.add_fault(status=status, retry_after="0", method="POST", path_contains="/outbox", times=2)
    sent = hook.send_fax("+16699990001", [path])
    assert [e["status"] for e in _posts(control)] == [status, status, 201]
    assert len(sent.outbox_fax_ids) == 1


def test_a_send_refused_with_4xx_is_a_plain_error_not_an_uncertain_one(hook, control):
    with pytest.raises(FaxPlusAPIError) as caught:
        hook.send_fax("+16699990001", ["/transient-never-uploaded"])
    assert not isinstance(caught.value, FaxPlusSendUncertainError)
    assert caught.value.status == 400
    assert caught.value.error == "invalid_file"


def test_a_send_that_cannot_connect_is_retried_as_not_sent(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connections are refused
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAXPLUS_DEFAULT",
        json.dumps(
            {
                "conn_type": "faxplus",
                "host": f"http://127.0.0.1:{port}/v3",
                "password": TOKEN,
                "extra": {"initial_backoff": 0.01, "max_attempts": 3},
            }
        ),
    )
    hook = FaxPlusHook()
    with pytest.raises(FaxPlusNotSentError, match=r"gave up after 3 attempt\(s\)"):
        hook.send_fax("+16699990001", ["/transient-x"])


def test_too_many_files_and_destinations_are_refused_by_the_sandbox(hook, control):
    """The sandbox's own limits (what the hook refuses earlier), checked on the wire."""
    path = hook.upload_file(PDF, file_name="a.pdf").path
    session = hook.session
    # The hook's session carries no token (the hook adds the current one per attempt): add it here.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = hook.config.base_url + "/accounts/self/outbox"
    payload = {"from": "no_number", "to": ["+16699990001"], "files": [path] * 11}
    files = session.post(url, json=payload, headers=auth)
    assert (files.status_code, files.json()["error"]) == (400, "too_many_files")
    many = [f"+1669{n:07d}" for n in range(4001)]
    dests = session.post(url, json={"from": "no_number", "to": many, "files": [path]}, headers=auth)
    assert (dests.status_code, dests.json()["error"]) == (400, "too_many_destinations")
    assert control.faxes() == []


def test_a_send_that_times_out_waiting_for_the_answer_is_not_retried(faxplus_conn, control):
    hook = FaxPlusHook(timeout=0.5)
    path = hook.upload_file(PDF, file_name="a.pdf").path
    control.add_fault(delay=1.5, method="POST", path_contains="/outbox")  # then handled: the fax is made
    with pytest.raises(FaxPlusSendUncertainError, match=r"no answer within 0\.5 s"):
        hook.send_fax("+16699990001", [path])
    assert len(_posts(control)) == 1


def test_the_mark_is_stable_per_task_instance_and_differs_otherwise():
    mark = send.send_mark("dag", "task", "run", -1)
    assert mark == send.send_mark("dag", "task", "run", -1)
    assert send.MARK_PATTERN.fullmatch(mark)
    others = {
        send.send_mark("dag", "task", "run", 0),
        send.send_mark("dag", "task", "run2", -1),
        send.send_mark("dag", "task2", "run", -1),
        send.send_mark("dag2", "task", "run", -1),
        send.send_mark("da", "gtask", "run", -1),  # fields are separated, not concatenated
    }
    assert mark not in others
    assert len(others) == 5


def test_find_marked_maps_destinations_to_the_marked_faxes():
    def record(fax_id: str, to: str, tags: list[str], status: str) -> OutboxFax:
        body = {"id": fax_id, "uid": "u", "status": status, "to": [to], "comment": {"tags": tags}}
        return parse_outbox(body)

    entries = [
        record("a", "+16699990001", ["airflow-000000000001"], "submitted"),
        record("b", "+16699990002", ["x", "airflow-000000000001"], "sending"),
        record("c", "+16699990003", ["airflow-000000000002"], "submitted"),
    ]
    assert send.find_marked(entries, "airflow-000000000001") == {"+16699990001": "a", "+16699990002": "b"}
    assert send.find_marked(entries, "airflow-ffffffffffff") == {}


def test_find_marked_takes_only_faxes_with_this_sends_comment_and_tags():
    """Issue 20 review, break 4: another deployment's fax with the same mark is not this send's."""

    def record(fax_id: str, tags: list[str], text: str) -> OutboxFax:
        body = {"id": fax_id, "uid": "u", "status": "submitted", "to": ["+16699990001"]}
        return parse_outbox({**body, "comment": {"tags": tags, "text": text}})

    mark = "airflow-000000000001"
    staging = record("s", [mark, "staging"], "invoice")
    prod = record("p", [mark, "prod"], "invoice")
    other_text = record("t", [mark, "prod"], "STAGING test fax")
    assert send.find_marked([staging, prod], mark, tags=["prod"], text="invoice") == {"+16699990001": "p"}
    assert send.find_marked([other_text], mark, tags=["prod"], text="invoice") == {}
    assert send.marked_elsewhere([staging, prod], mark, {"+16699990001": "p"}) == ["s"]


def test_the_sandbox_refuses_an_upload_over_150_mb_from_its_declared_length(sandbox, control):
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(sandbox.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.putrequest("POST", f"{url.path}/accounts/self/files")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Type", "multipart/form-data; boundary=b")
    from airflow_provider_faxplus.sandbox.send import MULTIPART_ALLOWANCE

    # More than a 150 MB file and the form around it: the answer comes from the declared length.
    conn.putheader("Content-Length", str(send.MAX_TOTAL_BYTES + MULTIPART_ALLOWANCE + 1))
    conn.endheaders()  # no body is sent
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"] == "payload_too_large"
    conn.close()


# List outgoing faxes --------------------------------------------------------------------------------


def test_list_outbox_faxes_answers_typed_records(hook, control):
    control.create_fax(id="f1", tags=["t1"], lifecycle=[{"status": "converting", "seconds": 60}])
    control.create_fax(id="f2", lifecycle=[{"status": "sending", "seconds": 60}])
    records = {record.id: record for record in hook.list_outbox_faxes()}
    assert set(records) == {"f1", "f2"}
    assert isinstance(records["f1"], OutboxFax)
    assert records["f1"].status is OutboxStatus.CONVERTING
    assert records["f1"].comment.tags == ("t1",)
    assert records["f2"].last_updated_status_time is not None
    [entry] = control.requests()
    assert (entry["method"], entry["path"]) == ("GET", "/v3/accounts/self/outbox")


def test_list_outbox_faxes_checks_its_input_before_any_request(hook, control):
    with pytest.raises(FaxPlusInputError, match="user_id"):
        hook.list_outbox_faxes("../self")
    assert control.requests() == []


def test_list_outbox_faxes_is_retried_like_a_get(hook, control):
    control.create_fax(id="f1")
    control.add_fault(status=503, method="GET", path_contains="/outbox", times=2)
    assert [record.id for record in hook.list_outbox_faxes()] == ["f1"]
    assert [entry["status"] for entry in control.requests()] == [503, 503, 200]


def test_list_outbox_faxes_maps_errors_like_a_get(hook, control):
    control.add_fault(status=403, method="GET", path_contains="/outbox")
    with pytest.raises(FaxPlusAuthError, match="List outgoing faxes") as caught:
        hook.list_outbox_faxes()
    assert caught.value.status == 403
    assert TOKEN not in str(caught.value)


def test_a_list_record_that_is_no_outbox_fails_the_list_naming_it(hook, control):
    """A list with a hole could hide the fax a caller (the send operator's mark lookup) looks for:
    the whole answer fails, and the message names the record."""
    body = json.dumps(
        {"records": [{"id": "ok", "uid": "u", "status": "sending"}, {"id": "broken", "uid": 7}]}
    )
    control.add_fault(status=200, method="GET", path_contains="/outbox", body=body)
    with pytest.raises(FaxPlusResponseError, match=r"record #1 \(id 'broken'\) is not an Outbox") as caught:
        hook.list_outbox_faxes()
    assert "uid, status" in str(caught.value)
