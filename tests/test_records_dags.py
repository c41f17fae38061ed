"""DownloadFaxOperator: real ``airflow dags test`` runs against the sandbox, and its argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from airflow_provider_faxplus.operators.records import DownloadFaxOperator
from airflow_provider_faxplus.sandbox.dagtest import AirflowHome
from tests.conftest import TOKEN

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def home(sandbox_server, tmp_path_factory):
    return AirflowHome.create(
        dags_folder=ROOT / "tests" / "dags",
        connections={"faxplus_default": sandbox_server},
        path=tmp_path_factory.mktemp("airflow-records"),
    )


def _sent(control, fax_id, status):
    control.create_fax(id=fax_id, lifecycle=[{"status": "sending", "polls": 1}])
    control.set_record_outcome(fax_id, status)
    requests.get(
        f"{control.root_url}/v3/accounts/self/outbox/{fax_id}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )


def test_mapped_downloads_mark_read_and_a_report(home, control, tmp_path):
    ids = [control.receive_fax(id=f"in-{n}")["id"] for n in range(3)]
    _sent(control, "out-1", "failed_no_answer")
    conf = {"fax_ids": ids, "destination": f"{tmp_path}/", "report_fax_id": "out-1"}
    run = home.dags_test("faxplus_download", conf=conf)
    assert run.succeeded, run.output[-5000:]
    [line] = run.lines_with("FAXPLUS-RESULT:")
    result = json.loads(line)
    assert sorted(r["destination"] for r in result["files"]) == [str(tmp_path / f"{i}.pdf") for i in ids]
    assert result["report"]["destination"] == str(tmp_path / "out-1-report.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*(f"{i}.pdf" for i in ids), "out-1-report.pdf"]
    )
    assert all((tmp_path / f"{i}.pdf").read_bytes().startswith(b"%PDF") for i in ids)
    assert b"failed_no_answer" in (tmp_path / "out-1-report.pdf").read_bytes()
    read = {r["id"]: r["is_read"] for r in control.records()}
    assert [read[i] for i in ids] == [True, True, True]
    # Each file was fetched once (no retry was needed) and each record marked read once.
    log = control.requests()
    assert sorted(e["path"].rsplit("/", 1)[1] for e in log if "/files/" in e["path"]) == ids
    assert sorted(e["body"] for e in log if e["method"] == "PUT") == ['{"is_read": true}'] * 3


def test_a_fax_that_does_not_exist_fails_the_task_naming_it(home, control, tmp_path):
    _sent(control, "out-2", "success")
    conf = {"fax_ids": ["nope-42"], "destination": str(tmp_path), "report_fax_id": "out-2"}
    run = home.dags_test("faxplus_download", conf=conf)
    assert not run.succeeded
    assert "Cannot download the file (pdf) of fax 'nope-42'" in run.output
    assert "HTTP 404 fax_not_found" in run.output
    assert TOKEN not in run.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-2-report.pdf"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"format": "png"}, "format must be one of pdf, tiff"),
        ({"report": True, "format": "tiff"}, "report is a PDF"),
        ({"destination": " "}, "destination is empty"),
        ({"mark_read": "yes"}, "True or False"),
    ],
)
def test_bad_arguments_fail_when_the_dag_is_parsed(kwargs, match):
    args = {"task_id": "t", "fax_id": "f", "destination": "/data", **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        DownloadFaxOperator(**args)
