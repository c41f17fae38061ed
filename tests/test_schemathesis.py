"""schemathesis (every check; examples, coverage, fuzzing and stateful phases) against the sandbox over HTTP.

It runs in-process through its command line (click's runner), deterministically (fixed seed, no example
database), against the sandbox's spec with three additions for this run only, written to a temporary file:

- the path parameters are constrained to the ids that exist (the account's user ids and one seeded fax per
  outbox status), so positive cases reach a fax and negative ones are unknown ids;
- ``links`` GET -> PUT -> GET, so the stateful phase chains operations on the same fax;
- the statuses the sandbox answers by documented assumption (401, 403, 404, 409, 413, 415; README) are
  listed with the spec's ``Error`` body, so schemathesis checks their bodies and still fails on any other
  undocumented status.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner
from openapi_core import OpenAPI
from schemathesis.cli import schemathesis as schemathesis_cli

from airflow_provider_faxplus.sandbox import SandboxServer
from airflow_provider_faxplus.sandbox.spec import document
from airflow_provider_faxplus.sandbox.state import DEFAULT_UID, OUTBOX_STATUSES
from tests.conftest import TOKEN

FAX_IDS = [f"fax-{status}" for status in OUTBOX_STATUSES]
ASSUMED_STATUSES = {
    "401": "missing or invalid token (assumed)",
    "403": "token without the operation's scope (assumed)",
    "404": "the fax is not in the outbox (assumed; 400 is the other setting)",
    "409": "PUT on a fax that is sending (assumed)",
    "413": "request body over the sandbox's limit (assumed)",
    "415": "PUT body that is not application/json (RFC 9110)",
}
LINKS = {
    "getOutboxFax": {
        "200": {
            "ModifyThisFax": {
                "operationId": "updateOutboxFax",
                "parameters": {"user_id": "$request.path.user_id", "outbox_fax_id": "$response.body#/id"},
            }
        }
    },
    "updateOutboxFax": {
        "204": {
            "ReadItBack": {
                "operationId": "getOutboxFax",
                "parameters": {
                    "user_id": "$request.path.user_id",
                    "outbox_fax_id": "$request.path.outbox_fax_id",
                },
            }
        }
    },
}


CANCELLABLE = ["cancel-1", "cancel-2"]
UPLOADED = "/transient-seeded"
DESTINATIONS = ["+16699990001", "+16699990002"]


def run_spec(uploaded: str = UPLOADED) -> dict[str, Any]:
    spec = copy.deepcopy(document())
    for path_item in spec["paths"].values():
        for operation in path_item.values():
            for parameter in operation["parameters"]:
                if parameter["name"] == "user_id":
                    ids = ["self", DEFAULT_UID]
                elif parameter["name"] in ("after", "before"):  # the pattern allows impossible dates
                    ids = ["2026-01-01 00:00:00", "2026-12-31 23:59:59"]
                elif parameter["name"] != "outbox_fax_id":
                    continue
                elif operation["operationId"] == "deleteOutboxFax":  # the other faxes stay for the rest
                    ids = [*CANCELLABLE, "fax-sending"]
                else:
                    ids = FAX_IDS
                parameter["schema"] = {"type": "string", "enum": ids}
                parameter["example"] = ids[0]
            for status, description in ASSUMED_STATUSES.items():
                operation["responses"][status] = {
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            for status, links in LINKS.get(operation["operationId"], {}).items():
                operation["responses"][status] = {**operation["responses"][status], "links": links}
    # A send that the sandbox can accept: numbers it takes, the seeded upload, nothing unknown.
    payload = spec["components"]["schemas"]["PayloadOutbox"]
    payload["additionalProperties"] = False
    payload["properties"]["from"] = {"type": "string", "enum": ["no_number", "+16699990000"]}
    payload["properties"]["to"]["items"] = {"type": "string", "enum": DESTINATIONS}
    payload["properties"]["files"]["items"] = {"type": "string", "enum": [uploaded]}
    return spec


@pytest.fixture(scope="module")
def seeded_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(token=TOKEN) as server:
        assert server.client is not None
        server.client.set_pace(0)  # nothing moves on its own: a fax keeps its status for the whole run
        server.client.create_faxes(
            [
                {"id": fax_id, "lifecycle": [{"status": status, "seconds": 3600}], "tags": ["t"]}
                for fax_id, status in zip(FAX_IDS, OUTBOX_STATUSES, strict=True)
            ]
            + [
                {"id": fax_id, "lifecycle": [{"status": "submitted", "seconds": 3600}]}
                for fax_id in CANCELLABLE
            ]
        )
        upload = requests.post(
            f"{server.base_url}/accounts/self/files",
            headers={"Authorization": f"Bearer {TOKEN}"},
            files={"fax_file": ("a.pdf", b"%PDF-1.4\n%%EOF\n")},
            timeout=10,
        )
        server.uploaded = upload.json()["path"]  # type: ignore[attr-defined]
        yield server


def test_the_run_spec_is_a_valid_openapi_document(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(run_spec()))
    OpenAPI.from_file_path(str(path))  # validates the document


def test_schemathesis_finds_nothing(seeded_sandbox, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it keeps a .schemathesis/ cache in the working directory
    path: Path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(run_spec(seeded_sandbox.uploaded)))
    args = [
        "run",
        str(path),
        f"--url={seeded_sandbox.base_url}",
        f"--header=Authorization: Bearer {seeded_sandbox.token}",
        "--checks=all",
        "--phases=examples,coverage,fuzzing,stateful",
        "--mode=all",
        # A quarter of the default: every operation is still tested in every phase (asserted below).
        "--max-examples=25",
        "--generation-deterministic",
        "--no-color",
        "--request-timeout=10",
    ]
    result = CliRunner().invoke(schemathesis_cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    log = seeded_sandbox.client.requests() if seeded_sandbox.client else []
    methods = {entry["method"] for entry in log}
    statuses = {entry["status"] for entry in log}
    # It really exercised the sandbox: both operations, successes, refusals and unlisted methods.
    assert {"GET", "PUT"} < methods, methods
    assert {200, 204, 400, 401, 404, 405, 409, 415} <= statuses, statuses
    # The stateful phase ran, following the links.
    assert re.search(r"Stateful \(in [0-9.]+s\)", result.output), result.output
    links = re.search(r"API Links: +([0-9]+) covered", result.output)
    assert links, result.output
    assert int(links.group(1)) >= 1, result.output
    # Every operation of the spec was tested.
    operations = sum(len(path_item) for path_item in run_spec()["paths"].values())
    assert re.search(rf"Selected: +{operations}/{operations}\b", result.output), result.output
    assert re.search(rf"Tested: +{operations}\b", result.output), result.output
