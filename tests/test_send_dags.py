"""SendFaxOperator in real DAG runs (``airflow dags test``) with Airflow's own retries: never twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_faxplus.sandbox.dagtest import AirflowHome

ROOT = Path(__file__).resolve().parent.parent
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
# Sent faxes stay "submitted" until a GET of them: nothing leaves the outbox while the DAG runs.
STAYS = [{"status": "submitted", "polls": 100}]
# Sent faxes leave the outbox at once: a lost answer cannot be resolved from the outbox.
LEAVES = [{"status": "submitted", "seconds": 0}]


@pytest.fixture(scope="module")
def send_home(sandbox_server, tmp_path_factory):
    return AirflowHome.create(
        dags_folder=ROOT / "tests" / "dags_send",
        connections={"faxplus_default": sandbox_server},
        path=tmp_path_factory.mktemp("airflow-send"),
    )


@pytest.fixture
def report_pdf(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(PDF)
    return str(path)


def _sends(control):
    return [e for e in control.requests() if e["method"] == "POST" and e["path"].endswith("/outbox")]


def _states(home, dag_id):
    return {task: state for task, _, state in home.task_states(dag_id)["tasks"]}


def test_a_send_whose_answer_is_dropped_is_retried_by_airflow_and_sent_once(send_home, control, report_pdf):
    control.settings(send_lifecycle=STAYS)
    control.add_fault(drop_after=True, method="POST", path_contains="/outbox")
    run = send_home.dags_test("faxplus_send_fail", conf={"to": "+16699990001", "file": report_pdf})
    assert run.succeeded, run.output[-5000:]
    sends = _sends(control)
    assert len(sends) == 1  # the one send, whose answer was dropped
    assert sends[0]["fault"]
    [fax] = control.faxes()  # exactly one fax reached the outbox
    assert "may have been sent" in run.output  # the first try failed on the lost answer ...
    [line] = run.lines_with("FAXPLUS-SENT:")
    result = json.loads(line)
    assert result["outbox_fax_ids"] == {"+16699990001": fax["id"]}  # ... the retry adopted the fax
    assert result["adopted"] == ["+16699990001"]
    assert result["mark"] in fax["comment"]["tags"]
    lists = [e for e in control.requests() if e["method"] == "GET" and e["path"].endswith("/outbox")]
    assert len(lists) == 1  # the retry looked before sending
    assert "no record of its earlier tries" not in run.output  # it read the first try's record
    assert _states(send_home, "faxplus_send_fail") == {"send": "success", "report": "success"}


def test_a_plain_send_uploads_and_sends_once_without_looking(send_home, control, report_pdf):
    control.settings(send_lifecycle=STAYS)
    run = send_home.dags_test(
        "faxplus_send_two", conf={"to": "+16699990001", "to2": "+16699990002", "file": report_pdf}
    )
    assert run.succeeded, run.output[-5000:]
    assert len(_sends(control)) == 1
    assert [e["method"] for e in control.requests()] == ["POST", "POST"]  # upload, send: no list
    [line] = run.lines_with("FAXPLUS-SENT:")
    result = json.loads(line)
    assert sorted(result["outbox_fax_ids"]) == ["+16699990001", "+16699990002"]
    assert result["adopted"] == []
    assert len(control.faxes()) == 2


def test_a_lost_answer_for_a_fax_that_left_the_outbox_fails_rather_than_resend(
    send_home, control, report_pdf
):
    control.settings(send_lifecycle=LEAVES)
    control.add_fault(drop_after=True, method="POST", path_contains="/outbox")
    run = send_home.dags_test("faxplus_send_fail", conf={"to": "+16699990001", "file": report_pdf})
    assert not run.succeeded
    assert "Check the account's sent faxes" in run.output
    assert len(_sends(control)) == 1
    assert len(control.faxes()) == 1
    assert _states(send_home, "faxplus_send_fail")["send"] == "failed"


def test_a_fax_found_by_one_try_is_never_sent_again_by_a_later_try(send_home, control, report_pdf):
    """Issue 20, finding 1, with Airflow's own retries: try 1's answer is lost; B's fax leaves at once,
    A's stays for one look. Try 2 finds A (and records it) and resends B, whose answer is lost too; A's fax
    then leaves. Try 3 must resend B alone (on_ambiguous="resend"), never A, and report A's first id."""
    a, b = "+16699990001", "+16699990002"
    control.settings(
        send_lifecycle=LEAVES, send_lifecycles={a: [{"status": "submitted", "polls": 1}], b: LEAVES}
    )
    control.add_fault(drop_after=True, times=2, method="POST", path_endswith="/outbox")
    run = send_home.dags_test("faxplus_send_two_resend", conf={"to": a, "to2": b, "file": report_pdf})
    assert run.succeeded, run.output[-5000:]
    assert [json.loads(e["body"])["to"] for e in _sends(control)] == [[a, b], [b], [b]]
    [first_a] = [fax["id"] for fax in control.faxes() if fax["to"] == [a]]  # A was faxed once
    [line] = run.lines_with("FAXPLUS-SENT:")
    result = json.loads(line)
    assert result["outbox_fax_ids"][a] == first_a
    assert result["adopted"] == [a]
    assert "no record of its earlier tries" not in run.output


def test_a_303_after_the_fax_was_made_is_retried_by_looking_and_adopts(send_home, control, report_pdf):
    """Finding 6 with Airflow's retries: a proxy passed the POST on (the fax exists) and answered 303.
    Unknown, not "not sent": the try fails retryably and the retry adopts the fax."""
    control.settings(send_lifecycle=STAYS)
    control.add_fault(
        processed=True,
        status=303,
        headers={"location": "http://127.0.0.1/elsewhere"},
        method="POST",
        path_endswith="/outbox",
    )
    run = send_home.dags_test("faxplus_send_fail", conf={"to": "+16699990001", "file": report_pdf})
    assert run.succeeded, run.output[-5000:]
    assert len(_sends(control)) == 1
    [fax] = control.faxes()
    [line] = run.lines_with("FAXPLUS-SENT:")
    result = json.loads(line)
    assert result["outbox_fax_ids"] == {"+16699990001": fax["id"]}
    assert result["adopted"] == ["+16699990001"]


def test_on_ambiguous_resend_sends_again(send_home, control, report_pdf):
    control.settings(send_lifecycle=LEAVES)
    control.add_fault(drop_after=True, method="POST", path_contains="/outbox")
    run = send_home.dags_test("faxplus_send_resend", conf={"to": "+16699990001", "file": report_pdf})
    assert run.succeeded, run.output[-5000:]
    assert len(_sends(control)) == 2
    assert len(control.faxes()) == 2  # the user chose to pay twice rather than maybe never send


def test_bad_input_fails_before_any_request_and_without_retries(send_home, control, report_pdf):
    run = send_home.dags_test("faxplus_send_fail", conf={"to": "+1 669 999", "file": report_pdf})
    assert not run.succeeded
    assert "'+1 669 999' is not a fax number in E.164 form" in run.output
    assert control.requests() == []
    assert _states(send_home, "faxplus_send_fail")["send"] == "failed"


# The example DAG ------------------------------------------------------------------------------------


def test_one_page_pdf_is_a_well_formed_pdf():
    from airflow_provider_faxplus.files import one_page_pdf

    pdf = one_page_pdf("Daily report (x)")
    assert pdf.startswith(b"%PDF-1.4\n")
    assert pdf.endswith(b"%%EOF\n")
    xref = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    assert pdf[xref:].startswith(b"xref\n0 6\n")
    offsets = [int(line[:10]) for line in pdf[xref:].split(b"\n")[3:8]]
    for number, offset in enumerate(offsets, start=1):
        assert pdf[offset:].startswith(b"%d 0 obj\n" % number)  # every xref offset points at its object


@pytest.fixture(scope="module")
def examples_home(sandbox_server, tmp_path_factory):
    return AirflowHome.create(
        dags_folder=ROOT / "example_dags",
        connections={"faxplus_default": sandbox_server},
        extra_env={"FAXPLUS_EXAMPLE_POKE_INTERVAL": "1"},
        path=tmp_path_factory.mktemp("airflow-send-example"),
    )


def test_example_send_and_wait(examples_home, control):
    control.settings(send_lifecycle=[{"status": "submitted", "polls": 2}, {"status": "sending", "polls": 2}])
    run = examples_home.dags_test("example_faxplus_send_and_wait", conf={"to": "+16699990001"})
    assert run.succeeded, run.output[-5000:]
    assert _states(examples_home, "example_faxplus_send_and_wait") == {
        "upload_report": "success",
        "send_fax": "success",
        "tag_comment": "success",
        "wait_until_sent": "success",
        "report": "success",
    }
    [fax] = control.faxes()
    assert fax["status"] is None  # it left the outbox: the sensor saw it go
    assert fax["comment"]["text"].startswith("daily report 20")
    assert "report" in fax["comment"]["tags"]
    [upload] = [e for e in control.requests() if e["path"].endswith("/files")]
    assert 'filename="report.pdf"' in upload["body"]
    assert "%PDF-1.4" in upload["body"]
    [line] = run.lines_with("FAXPLUS-REPORT:")
    assert fax["id"] in line
    assert "+16699990001" in line


def test_mapped_sends_one_fax_per_mapped_instance_each_with_its_own_mark(send_home, control, report_pdf):
    control.settings(send_lifecycle=STAYS)
    run = send_home.dags_test("faxplus_send_mapped", conf={"file": report_pdf})
    assert run.succeeded, run.output[-5000:]
    assert len(_sends(control)) == 2
    faxes = control.faxes()
    marks = {tag for fax in faxes for tag in fax["comment"]["tags"] if tag.startswith("airflow-")}
    assert len(faxes) == 2
    assert len(marks) == 2  # map_index is part of the mark


def test_a_number_twice_in_a_literal_expand_list_is_refused(send_home, control, report_pdf):
    """Finding 8: mapped instances have a mark each; a number listed twice would be faxed twice."""
    run = send_home.dags_test("faxplus_send_mapped_twice", conf={"file": report_pdf})
    assert not run.succeeded
    assert "given twice in this task's expand(to=...): +16699990001" in run.output
    sent = [json.loads(e["body"])["to"] for e in _sends(control)]
    assert sent == [["+16699990002"]]  # the number listed once is sent; the doubled one never
    states = sorted(state for _, _, state in send_home.task_states("faxplus_send_mapped_twice")["tasks"])
    assert states == ["failed", "failed", "success"]


def test_a_number_twice_in_a_literal_expand_kwargs_list_is_refused(send_home, control, report_pdf):
    """Issue 20 review, break 2: entries alike but for nothing are the same fax twice; an entry that
    differs (its comment) is another fax, and is sent."""
    run = send_home.dags_test("faxplus_send_kwargs_twice", conf={"file": report_pdf})
    assert not run.succeeded
    assert "given twice in this task's expand_kwargs([...]): +16699990001" in run.output
    sent = sorted(json.loads(e["body"])["to"][0] for e in _sends(control))
    assert sent == ["+16699990002", "+16699990003", "+16699990003"]
    states = [state for _, _, state in sorted(send_home.task_states("faxplus_send_kwargs_twice")["tasks"])]
    assert states == ["failed", "success", "failed", "success", "success"]


def test_a_number_twice_in_a_mapped_task_groups_literal_expand_is_refused(send_home, control, report_pdf):
    run = send_home.dags_test("faxplus_send_group_twice", conf={"file": report_pdf})
    assert not run.succeeded
    assert "given twice in its task group's expand(number=...): +16699990001" in run.output
    sent = [json.loads(e["body"])["to"] for e in _sends(control)]
    assert sent == [["+16699990002"]]


def test_a_retry_after_a_failed_upload_sends_on_both_lines(send_home, control, report_pdf):
    """The first try fails before any send (the upload gives up after 5 x 503). Its record (3.3: the task
    state store; 2.11: an Airflow Variable) says no send began, so the retry sends, once."""
    control.settings(send_lifecycle=LEAVES)
    control.add_fault(status=503, retry_after="0", times=5, method="POST", path_contains="/files")
    run = send_home.dags_test("faxplus_send_fail", conf={"to": "+16699990001", "file": report_pdf})
    assert [e["status"] for e in control.requests() if e["path"].endswith("/files")][:5] == [503] * 5
    assert run.succeeded, run.output[-5000:]
    assert len(_sends(control)) == 1
    assert "no record of its earlier tries" not in run.output
    assert not [e for e in control.requests() if e["method"] == "GET"]  # nothing to look for


def test_a_new_run_with_a_reused_run_id_sends_its_own_fax(send_home, control, report_pdf):
    """Issue 20 review, break 3: ``dags test`` twice with one logical date deletes the first run and makes
    a new one with the same run_id. On 2.11 the record (a Variable) outlives the run; the new run must not
    adopt the first run's fax from it, nor be taken for a retry whose record is lost."""
    control.settings(send_lifecycle=STAYS)
    conf = json.dumps({"to": "+16699990001", "file": report_pdf})
    results = []
    for _ in range(2):
        run = send_home.airflow(
            "dags", "test", "faxplus_send_fail", "2026-03-01T00:00:00+00:00", "--conf", conf
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-5000:]
        [line] = [line for line in output.splitlines() if "FAXPLUS-SENT:" in line]
        results.append(json.loads(line.partition("FAXPLUS-SENT:")[2]))
    assert [r["adopted"] for r in results] == [[], []]
    assert len(_sends(control)) == 2  # each run sent its fax
    assert results[0]["outbox_fax_ids"] != results[1]["outbox_fax_ids"]
