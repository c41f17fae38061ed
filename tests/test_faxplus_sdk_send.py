"""Fax.Plus's SDK (faxplus-api 3.0.5) sending through the sandbox: upload, send, list, cancel.

An independent client of the four sending operations: what it sends must be accepted, and what the
sandbox answers must deserialize into its models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faxplus import ApiClient, Configuration, FilesApi, OutboxApi
from faxplus.models import OutboxComment, PayloadOutbox
from faxplus.rest import ApiException

from airflow_provider_faxplus.sandbox import SandboxServer


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[ApiClient]:
    config = Configuration()
    config.host = sandbox.base_url
    config.access_token = sandbox.token
    api_client = ApiClient(config)
    yield api_client
    api_client.rest_client.pool_manager.clear()


def test_upload_send_list_cancel_with_the_sdk(client, control, tmp_path):
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.4\n%%EOF\n")
    uploaded = FilesApi(client).upload_file("self", fax_file=str(report))
    assert uploaded.path.startswith("/transient-")
    outbox = OutboxApi(client)
    body = PayloadOutbox(
        from_number="no_number",
        to=["+16699990001", "+16699990002"],
        files=[uploaded.path],
        comment=OutboxComment(tags=["sdk"], text="from the SDK"),
        return_ids=True,
    )
    sent = outbox.send_fax("self", body=body)
    assert set(sent.ids) == {"+16699990001", "+16699990002"}
    listed = outbox.list_outbox_faxes("self")
    assert {record.id for record in listed.records} == set(sent.ids.values())
    assert all(record.comment.tags == ["sdk"] for record in listed.records)
    outbox.delete_outbox_fax("self", sent.ids["+16699990001"])
    assert [record.id for record in outbox.list_outbox_faxes("self").records] == [sent.ids["+16699990002"]]
    upload = [e for e in control.requests() if e["path"].endswith("/files")]
    assert 'name="fax_file"; filename="report.pdf"' in upload[0]["body"]


def test_the_sdk_sees_the_documented_send_errors(client, control):
    outbox = OutboxApi(client)
    body = PayloadOutbox(from_number="no_number", to=["+16699990001"], files=["/transient-x"] * 11)
    with pytest.raises(ApiException) as caught:
        outbox.send_fax("self", body=body)
    assert caught.value.status == 400
    assert b'"too_many_files"' in caught.value.body
