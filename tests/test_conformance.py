"""The spec checker itself: it must object to what breaks the spec; the shipped spec is the contract."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.conformance import SPEC, problems

SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "outbox.openapi.yaml"
UA = {"user-agent": "airflow-provider-faxplus/0.1.0", "authorization": "Bearer <redacted>"}


def entry(method="GET", status=200, body="", response=None, headers=UA, fault=None):
    return {
        "method": method,
        "path": "/v3/accounts/self/outbox/f1",
        "headers": dict(headers, **({"content-type": "application/json"} if body else {})),
        "body": body,
        "status": status,
        "fault": fault,
        "response_body": json.dumps(response) if response is not None else "",
        "response_headers": {"content-type": "application/json"},
    }


GOOD = {"id": "f1", "uid": "u1", "status": "submitted", "comment": {"tags": [], "text": ""}}


def test_conforming_traffic_passes():
    log = [entry(response=GOOD), entry("PUT", 204, json.dumps({"comment": "x"}))]
    assert problems("http://127.0.0.1:1", log) == []


def test_a_response_outside_the_schema_is_reported():
    assert problems("http://127.0.0.1:1", [entry(response={**GOOD, "surprise": 1})])
    assert problems("http://127.0.0.1:1", [entry(response={**GOOD, "status": "sent"})])
    assert problems("http://127.0.0.1:1", [entry(response={"id": "f1"})])
    assert problems("http://127.0.0.1:1", [entry(status=400, response={"error": "x", "extra": 1})])


def test_a_request_outside_the_schema_is_reported_when_ours():
    bad = entry("PUT", 204, json.dumps({"comment": "x", "tags": ["t"]}))
    assert problems("http://127.0.0.1:1", [bad])
    # Other clients' requests (tests probing the sandbox with bad input) are not the provider's.
    assert (
        problems(
            "http://127.0.0.1:1",
            [
                entry(
                    "PUT",
                    400,
                    "{}",
                    headers={"user-agent": "python-requests"},
                    response={"error": "invalid_payload", "description": "d"},
                )
            ],
        )
        == []
    )


def test_fault_responses_are_skipped():
    assert problems("http://127.0.0.1:1", [entry(response={"broken": True}, fault=3)]) == []


def test_the_shipped_spec_is_the_shared_contract():
    if SHARED_SPEC.exists():  # beside the repository in CI; a user's clone has only the shipped copy
        assert SPEC.read_bytes() == SHARED_SPEC.read_bytes()
    assert "updateOutboxFax" in SPEC.read_text()


def test_sandbox_answers_conform(sandbox, control):
    """Real traffic through the sandbox, checked by the autouse conformance fixture as well."""
    control.create_fax(id="f1", tags=["t"])
    auth = {"Authorization": f"Bearer {sandbox.token}", "User-Agent": "airflow-provider-faxplus/test"}
    url = f"{sandbox.base_url}/accounts/self/outbox/f1"
    assert requests.get(url, headers=auth, timeout=5).status_code == 200
    assert requests.put(url, headers=auth, json={"comment": "c"}, timeout=5).status_code == 204
    assert (
        requests.get(f"{sandbox.base_url}/accounts/nobody/outbox/f1", headers=auth, timeout=5).status_code
        == 400
    )
    assert problems(sandbox.root_url, control.requests()) == []
