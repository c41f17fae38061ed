"""Fax.Plus's own SDK (faxplus-api 3.0.5) reads the sandbox's fax records, files and reports: its
``Fax`` model (required fields, enums, bounds) accepts every record the sandbox makes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from faxplus import ApiClient, Configuration, FaxesApi, FilesApi
from faxplus.models import FaxStatus, PayloadFaxModification

from airflow_provider_faxplus.sandbox import SandboxServer
from tests.conftest import TOKEN


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[ApiClient]:
    config = Configuration()
    config.host = sandbox.base_url
    config.access_token = sandbox.token
    api_client = ApiClient(config)
    yield api_client
    api_client.rest_client.pool_manager.clear()


@pytest.mark.parametrize("status", [s.value for s in FaxStatus if s.value != "partially_received"])
def test_every_sent_outcome_deserializes(client, control, status):
    control.create_fax(id="out-1", lifecycle=[{"status": "sending", "polls": 1}])
    control.set_record_outcome("out-1", status)
    requests.get(
        f"{control.root_url}/v3/accounts/self/outbox/out-1",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    fax = FaxesApi(client).get_fax("self", "out-1")
    assert fax.status == FaxStatus(status)
    assert fax.direction.value == "outgoing"
    (listed,) = FaxesApi(client).list_faxes("self", category="sent").data.records
    assert listed.id == "out-1"


def test_received_faxes_modification_and_files(client, control):
    control.receive_fax(id="r1", status="partially_received", **{"from": "+4930123456"})
    faxes = FaxesApi(client)
    fax = faxes.get_fax("self", "r1")
    assert (fax.from_number, fax.is_read, fax.status) == ("+4930123456", False, FaxStatus.PARTIALLY_RECEIVED)
    faxes.update_fax("self", "r1", body=PayloadFaxModification(is_read=True, comment="done"))
    assert (faxes.get_fax("self", "r1").is_read, faxes.get_fax("self", "r1").comment) == (True, "done")
    data = FilesApi(client).get_file("self", "r1", format="pdf", _preload_content=False).data
    assert data.startswith(b"%PDF")
    faxes.delete_fax("self", "r1")
    assert faxes.list_faxes("self", category="inbox").data.records == []
