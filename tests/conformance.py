"""Check requests and responses seen by the sandbox against the spec (openapi-core).

Responses answered by an injected fault are skipped (they break the spec on purpose), and so are statuses
the spec does not list for the operation (401, 403, 404, 409: the documented assumptions of the sandbox).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

import airflow_provider_faxplus.sandbox as sandbox_package
from airflow_provider_faxplus.sandbox.spec import document

SPEC = Path(sandbox_package.__file__).with_name("outbox.openapi.yaml")
DOCUMENTED = {"GET": {200, 400, 500}, "PUT": {204, 400, 500}}


@cache
def api() -> OpenAPI:
    return OpenAPI.from_dict(copy.deepcopy(document()))  # the spec with the sending operations


def _request(root_url: str, entry: dict[str, Any]) -> MockRequest:
    body = entry["body"].encode() if entry["body"] else None
    headers = dict(entry["headers"])
    return MockRequest(
        root_url,
        entry["method"].lower(),
        entry["path"],
        headers=headers,
        data=body,
        content_type=headers.get("content-type", "application/json").split(";")[0],
    )


def problems(root_url: str, log: list[dict[str, Any]]) -> list[str]:
    """What in ``log`` does not conform; requests only for those our provider sent."""
    found = []
    for entry in log:
        if not entry["path"].startswith("/v3/accounts/") or entry["method"] not in DOCUMENTED:
            continue
        request = _request(root_url, entry)
        ours = entry["headers"].get("user-agent", "").startswith("airflow-provider-faxplus/")
        if ours:
            try:
                api().validate_request(request)
            except Exception as exc:
                found.append(f"request {entry['method']} {entry['path']}: {exc!r}")
        if entry.get("fault") or entry["status"] not in DOCUMENTED[entry["method"]]:
            continue
        body = entry.get("response_body", "")
        content_type = entry.get("response_headers", {}).get("content-type", "application/json")
        if not content_type.startswith("application/json"):
            continue  # a downloaded file: the log keeps it as text, not the bytes to check

        response = MockResponse(body.encode(), status_code=entry["status"], content_type=content_type)
        try:
            api().validate_response(request, response)
        except Exception as exc:
            found.append(f"response {entry['status']} to {entry['method']} {entry['path']}: {exc!r}")
        if entry["status"] == 200 and content_type.startswith("application/json"):
            json.loads(body)
    return found
