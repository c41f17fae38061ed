"""Fax.Plus's own Python SDK (faxplus-api 3.0.5) against the sandbox: what works here works with its client.

The SDK is an independent reading of the API (swagger-codegen from Fax.Plus's spec): every answer must
deserialize into its models, whose enums refuse a status outside the four outbox states.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faxplus import ApiClient, Configuration, OutboxApi
from faxplus.models import Outbox, OutboxStatus, PayloadOutboxModification
from faxplus.rest import ApiException

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.state import OUTBOX_STATUSES

# Every optional property of the spec's Outbox, with a value of the right shape.
ALL_FIELDS = {
    "contact_name": "Ops desk",
    "designated_src": "+16699990001",
    "extra_info": {"source": "sandbox"},
    "file_changes": [
        {
            "at": "2026-11-23 10:00:00",
            "files": [{"file_name": "a.pdf", "mime_type": "application/pdf", "size": 1}],
        }
    ],
    "initiated_from": {"from_id": "api", "type": "api"},
    # delay: the SDK's RetryOptions stops at 30, the spec's at 180 (see the test at the end).
    "options": {"enhancement": False, "retry": {"count": 3, "delay": 30}, "partially_sent_retry": True},
    "page_count": 7,
    "retry": {"count": 2, "delay": 10},
    "should_enhance": True,
    "cover_page": {
        "name_to": "Bob",
        "name_from": "Alice",
        "subject": "Hi",
        "flags": ["urgent", "for_review", "please_reply", "confidential"],
        "message": "See attached",
        "include_company_logo": True,
    },
}


@pytest.fixture
def outbox_api(sandbox: SandboxServer) -> Iterator[OutboxApi]:
    config = Configuration()
    config.host = sandbox.base_url
    config.access_token = sandbox.token
    client = ApiClient(config)
    yield OutboxApi(client)
    client.rest_client.pool_manager.clear()


@pytest.mark.parametrize("status", OUTBOX_STATUSES)
def test_every_status_and_optional_field_deserializes(outbox_api, control, status):
    control.create_fax(
        id="f1", lifecycle=[{"status": status, "seconds": 3600}], tags=["t1"], fields=ALL_FIELDS
    )
    fax = outbox_api.get_outbox_fax("self", "f1")
    assert isinstance(fax, Outbox)
    assert fax.status == OutboxStatus(status)
    assert [change.status for change in fax.status_changes] == [OutboxStatus(status)]
    assert (fax.comment.tags, fax.comment.text) == (["t1"], "")
    assert fax.options.retry.count == 3
    assert fax.retry.delay == 10
    assert fax.cover_page.flags == ALL_FIELDS["cover_page"]["flags"]
    assert fax.file_changes[0].files[0].file_name == "a.pdf"
    assert fax.initiated_from.type == "api"
    assert (fax.page_count, fax.should_enhance, fax.extra_info) == (7, True, {"source": "sandbox"})
    assert fax.to_dict()["uid"] == control.fax("f1")["owner"]


def test_comment_update_round_trips(outbox_api, control):
    control.create_fax(id="f1", tags=["keep"])
    assert (
        outbox_api.update_outbox_fax("self", "f1", body=PayloadOutboxModification(comment="via the SDK"))
        is None
    )
    assert outbox_api.get_outbox_fax("self", "f1").comment.text == "via the SDK"
    # Without a body (the spec's request body is optional): nothing changes.
    assert outbox_api.update_outbox_fax("self", "f1") is None
    assert control.fax("f1")["comment"] == {"tags": ["keep"], "text": "via the SDK"}


def test_error_answers_reach_the_sdk_as_api_exceptions(outbox_api, control):
    control.create_fax(id="f1", lifecycle=[{"status": "sending", "seconds": 3600}])
    with pytest.raises(ApiException) as info:
        outbox_api.get_outbox_fax("nobody", "f1")
    assert (info.value.status, info.value.body) == (
        400,
        b'{"error":"invalid_user_id","description":"Invalid user id given"}',
    )
    with pytest.raises(ApiException) as info:
        outbox_api.update_outbox_fax("self", "f1", body=PayloadOutboxModification(comment="x"))
    assert info.value.status == 409
    with pytest.raises(ApiException) as info:
        outbox_api.get_outbox_fax("self", "gone")
    assert info.value.status == 404


def test_the_sdk_is_stricter_than_the_spec_on_retry_delay(outbox_api, control):
    """The spec allows retry.delay up to 180 s, the SDK's model only 30: the sandbox follows the spec, so a
    fax seeded with such a delay shows what the SDK does if Fax.Plus ever answers one."""
    control.create_fax(id="f1", fields={"retry": {"count": 0, "delay": 180}})
    with pytest.raises(ValueError, match="less than or equal to `30`"):
        outbox_api.get_outbox_fax("self", "f1")
