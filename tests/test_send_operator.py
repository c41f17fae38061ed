"""SendFaxOperator's tries run for real (``execute`` over real HTTP against the sandbox) with the faults
of issue 20: answers lost with ``drop_after``, a record that is gone, a 303 after the fax was made.

Each try gets the context Airflow gives it: the task instance (its try number) and, as on Airflow 3.3,
a task state store, here a dict with the store's ``get``/``set`` (a real one needs a running task)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest
from airflow.exceptions import AirflowException
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_faxplus import send
from airflow_provider_faxplus.operators.send import STATE_KEY, SendFaxOperator

A, B = "+16699990001", "+16699990002"
PDF = b"%PDF-1.4\n% tiny\n%%EOF\n"
STAYS = [{"status": "submitted", "polls": 100}]


class Store:
    """The task state store's interface: ``get(key)``, ``set(key, value)``; values kept as JSON."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.writes: list[Any] = []

    def get(self, key: str) -> Any:
        return json.loads(self.values[key]) if key in self.values else None

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.dumps(value)
        self.writes.append(json.loads(self.values[key]))

    def clear(self) -> None:
        self.values.clear()


class Task:
    """One task instance whose tries are run one after another, like Airflow's retries or a clear."""

    def __init__(self, operator: SendFaxOperator, store: Store | None) -> None:
        self.operator = operator
        self.store = store
        self.tries = 0

    def run(self) -> dict[str, Any]:
        self.tries += 1
        ti = SimpleNamespace(
            dag_id="send_dag", task_id="send", run_id="manual__1", map_index=-1, try_number=self.tries
        )
        context: dict[str, Any] = {"ti": ti}
        if self.store is not None:
            context["task_state_store"] = self.store
        return self.operator.execute(context)


@pytest.fixture
def pdf(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(PDF)
    return str(path)


def _task(pdf: str, to: Any, on_ambiguous: str = "fail", store: Store | None = None) -> Task:
    operator = SendFaxOperator(task_id="send", to=to, files=[pdf], on_ambiguous=on_ambiguous)
    return Task(operator, Store() if store is None else store)


def _send_bodies(control) -> list[list[str]]:
    return [
        json.loads(e["body"])["to"]
        for e in control.requests()
        if e["method"] == "POST" and e["path"].endswith("/outbox")
    ]


def _leave(control, hook, *destinations: str) -> None:
    """The faxes to these destinations leave the outbox (sent), as Fax.Plus moves them on."""
    for fax in hook.list_outbox_faxes():
        if set(fax.to) & set(destinations):
            hook.cancel_outbox_fax(fax.id)


def _outbox_id(hook, destination: str) -> str:
    [fax_id] = [fax.id for fax in hook.list_outbox_faxes() if list(fax.to) == [destination]]
    return fax_id


def _lose_next_send_answer(control) -> None:
    control.add_fault(drop_after=True, method="POST", path_endswith="/outbox")


def test_a_fax_found_by_one_try_is_never_sent_again_by_a_later_one(faxplus_conn, hook, control, pdf):
    """Issue 20, finding 1: try 1's answer is lost; B leaves, A stays; try 2 adopts A and resends B, whose
    answer is lost too; A leaves; try 3 must not send A again, and A's first id reaches the XCom."""
    control.settings(send_lifecycle=STAYS)
    task = _task(pdf, [A, B], on_ambiguous="resend")
    _lose_next_send_answer(control)
    with pytest.raises(AirflowException, match="may have been sent"):
        task.run()
    first_a = _outbox_id(hook, A)
    _leave(control, hook, B)
    _lose_next_send_answer(control)
    with pytest.raises(AirflowException, match="may have been sent"):
        task.run()
    # The id try 2 found is on record before it sent anything.
    assert task.store.get(STATE_KEY)["ids"] == {A: first_a}
    _leave(control, hook, A, B)
    result = task.run()
    assert _send_bodies(control) == [[A, B], [B], [B]]  # A once; B resent as on_ambiguous says
    assert result["outbox_fax_ids"][A] == first_a
    assert result["adopted"] == [A]


def test_with_on_ambiguous_fail_the_message_names_what_is_sent_and_what_is_not_known(
    faxplus_conn, hook, control, pdf
):
    control.settings(send_lifecycle=STAYS)
    store = Store()
    task = _task(pdf, [A, B], store=store)
    _lose_next_send_answer(control)
    with pytest.raises(AirflowException):
        task.run()
    first_a = _outbox_id(hook, A)
    _leave(control, hook, B)
    with pytest.raises(AirflowFailException) as failed:
        task.run()  # finds A, not B
    assert f"to {B} " in str(failed.value)
    assert f"{A} (outbox id {first_a})" in str(failed.value)
    _leave(control, hook, A)
    # Its advice: resend and clear. A is on record: only B is sent.
    task.operator.on_ambiguous = "resend"
    result = task.run()
    assert _send_bodies(control) == [[A, B], [B]]
    assert result["outbox_fax_ids"][A] == first_a


def test_a_clear_that_finds_no_record_of_earlier_tries_counts_as_possibly_sent(
    faxplus_conn, hook, control, pdf
):
    """Finding 2: the record is gone ([state_store] clear_on_success, or retention) and the fax has
    left the outbox: a clear must not send again silently."""
    control.settings(send_lifecycle=STAYS)
    task = _task(pdf, A)
    first = task.run()
    _leave(control, hook, A)
    task.store.clear()  # clear_on_success
    with pytest.raises(AirflowFailException, match="record of earlier tries is gone"):
        task.run()
    assert _send_bodies(control) == [[A]]
    # With the record kept (the default), a clear adopts.
    task.store.set(STATE_KEY, {"mark": first["mark"], "ids": first["outbox_fax_ids"]})
    again = task.run()
    assert again["outbox_fax_ids"] == first["outbox_fax_ids"]
    assert again["adopted"] == [A]


def test_a_clear_with_the_record_gone_adopts_a_fax_still_in_the_outbox(faxplus_conn, hook, control, pdf):
    control.settings(send_lifecycle=STAYS)
    task = _task(pdf, A)
    first = task.run()
    task.store.clear()
    again = task.run()
    assert again["outbox_fax_ids"] == first["outbox_fax_ids"]
    assert _send_bodies(control) == [[A]]


def test_a_303_to_the_send_after_the_fax_was_made_is_uncertain_and_never_sent_again(
    faxplus_conn, hook, control, pdf
):
    """Finding 6: a proxy passed the POST on (the fax exists) and answered 303."""
    control.settings(send_lifecycle=STAYS)
    control.add_fault(
        processed=True,
        status=303,
        headers={"location": "http://127.0.0.1/elsewhere"},
        method="POST",
        path_endswith="/outbox",
    )
    task = _task(pdf, A)
    with pytest.raises(AirflowException) as first:
        task.run()
    assert not isinstance(first.value, AirflowFailException)  # retryable: the next try looks
    assert "may have been sent" in str(first.value)
    [fax] = control.faxes()
    _leave(control, hook, A)  # and even once it has left, no second fax
    with pytest.raises(AirflowFailException, match="Check the account's sent faxes"):
        task.run()
    assert _send_bodies(control) == [[A]]
    assert fax["id"]


def test_adoption_from_the_record_returns_adopted_and_files(faxplus_conn, hook, control, pdf):
    """Finding 7: a try that adopts from the record says so in its XCom, with the files sent."""
    control.settings(send_lifecycle=STAYS)
    task = _task(pdf, A)
    first = task.run()
    assert first["files"]
    assert first["adopted"] == []
    again = task.run()
    assert again == {**first, "adopted": [A]}
    assert _send_bodies(control) == [[A]]


def test_every_id_learned_is_recorded_and_a_sending_record_keeps_them(faxplus_conn, hook, control, pdf):
    control.settings(send_lifecycle=STAYS)
    task = _task(pdf, [A, B], on_ambiguous="resend")
    _lose_next_send_answer(control)
    with pytest.raises(AirflowException):
        task.run()
    _leave(control, hook, B)
    _lose_next_send_answer(control)
    with pytest.raises(AirflowException):
        task.run()
    # Every write after A was found carries A's id: none overwrote it.
    writes = task.store.writes
    found_at = next(i for i, w in enumerate(writes) if A in w["ids"])
    assert all(A in w["ids"] for w in writes[found_at:])
    assert any(w["uncertain"] == [B] for w in writes[found_at:])  # the "sending" record of try 2


def test_a_failed_upload_then_a_retry_sends_once(faxplus_conn, hook, control, pdf):
    """Finding 12's rule on either line: the first try records that it began; a failure before the POST
    leaves nothing possibly sent, so the retry sends."""
    control.settings(send_lifecycle=STAYS)
    control.add_fault(status=503, retry_after="0", times=5, method="POST", path_contains="/files")
    task = _task(pdf, A)
    with pytest.raises(AirflowException):
        task.run()
    assert _send_bodies(control) == []
    assert task.run()["adopted"] == []
    assert _send_bodies(control) == [[A]]


class Beside(Store):
    """A store shared by two executions of one task instance (a zombie try 1 still running while try 2
    runs): ``beside`` runs whole at try 1's first write (after it began, before it uploads and sends)."""

    def __init__(self) -> None:
        super().__init__()
        self.beside: Any = None

    def set(self, key: str, value: Any) -> None:
        super().set(key, value)
        beside, self.beside = self.beside, None
        if beside is not None:
            beside()


def _run_try(
    operator: SendFaxOperator, store: Store, try_number: int, dag_run_id: int | None = None
) -> dict[str, Any]:
    """One try; ``dag_run_id``: as on Airflow 2.11, no task state store and a DAG run with a database id
    (the record is then a Variable, the store standing in for it)."""
    ti = SimpleNamespace(
        dag_id="send_dag", task_id="send", run_id="manual__1", map_index=-1, try_number=try_number
    )
    if dag_run_id is None:
        return operator.execute({"ti": ti, "task_state_store": store})
    return operator.execute({"ti": ti, "dag_run": SimpleNamespace(id=dag_run_id)})


@pytest.fixture
def variables(monkeypatch):
    """The Airflow 2.11 record (a Variable per mark) kept in a store: unit tests have no metadata DB."""
    from airflow_provider_faxplus.operators import send as operator_module

    store = Beside()
    monkeypatch.setattr(operator_module, "_VariableStore", lambda: store)
    return store


def test_a_try_running_beside_another_adopts_what_it_sent_meanwhile(faxplus_conn, hook, control, pdf):
    """Issue 20 review, break 1: try 2 sends while try 1 uploads; try 1 reads the record again before
    its POST, adopts try 2's ids and sends nothing; try 2's ids stay on record (none overwritten)."""
    control.settings(send_lifecycle=STAYS)
    store = Beside()
    second: dict[str, Any] = {}
    store.beside = lambda: second.update(_run_try(_task(pdf, [A, B]).operator, store, 2))
    first = _run_try(_task(pdf, [A, B]).operator, store, 1)
    assert _send_bodies(control) == [[A, B]]
    assert first["outbox_fax_ids"] == second["outbox_fax_ids"]
    assert first["adopted"] == [A, B]
    assert first["files"] == second["files"]  # the paths sent (try 2's), not try 1's unused upload
    assert store.get(STATE_KEY)["ids"] == second["outbox_fax_ids"]


def test_a_try_running_beside_another_does_not_send_what_it_marked_possibly_sent(
    faxplus_conn, hook, control, pdf
):
    """Break 1, the other way: try 2's answer is lost (possibly sent); try 1, still running, must not
    POST those destinations; the next try looks in the outbox and adopts."""
    control.settings(send_lifecycle=STAYS)
    store = Beside()

    def second_try() -> None:
        _lose_next_send_answer(control)
        with pytest.raises(AirflowException, match="may have been sent"):
            _run_try(_task(pdf, [A, B]).operator, store, 2)

    store.beside = second_try
    with pytest.raises(AirflowException, match="running at the same time") as raced:
        _run_try(_task(pdf, [A, B]).operator, store, 1)
    assert not isinstance(raced.value, AirflowFailException)
    assert _send_bodies(control) == [[A, B]]
    third = _run_try(_task(pdf, [A, B]).operator, store, 3)
    assert sorted(third["adopted"]) == [A, B]
    assert _send_bodies(control) == [[A, B]]


def test_on_2_11_a_try_running_beside_another_adopts_what_it_sent_meanwhile(
    faxplus_conn, hook, control, pdf, variables
):
    """Break 1 on the Variable record: try 1 (which began the record) still sees try 2's writes."""
    control.settings(send_lifecycle=STAYS)
    second: dict[str, Any] = {}
    variables.beside = lambda: second.update(_run_try(_task(pdf, [A, B]).operator, variables, 2, 7))
    first = _run_try(_task(pdf, [A, B]).operator, variables, 1, 7)
    assert _send_bodies(control) == [[A, B]]
    assert first["outbox_fax_ids"] == second["outbox_fax_ids"]


def test_on_2_11_a_new_run_with_the_same_id_starts_anew_and_its_retries_keep_its_record(
    faxplus_conn, hook, control, pdf, variables
):
    """Break 3: the Variable of a deleted run (same run_id, even the same database id) is not adopted by
    the new run's first try; the new run's own retry adopts what its first try sent."""
    control.settings(send_lifecycle=STAYS)
    old = _run_try(_task(pdf, A).operator, variables, 1, 7)
    new = _run_try(_task(pdf, A).operator, variables, 1, 7)
    assert new["adopted"] == []
    assert new["outbox_fax_ids"] != old["outbox_fax_ids"]
    retry = _run_try(_task(pdf, A).operator, variables, 2, 7)
    assert retry["adopted"] == [A]
    assert retry["outbox_fax_ids"] == new["outbox_fax_ids"]
    assert _send_bodies(control) == [[A], [A]]


def test_a_fax_of_another_deployment_with_the_same_mark_is_not_adopted(faxplus_conn, hook, control, pdf):
    """Issue 20 review, break 4: staging and prod run one DAG (same mark) on one account. Prod's send is
    cut off before it is handled (no fax); its retry must not adopt staging's fax, whose comment differs."""
    control.settings(send_lifecycle=STAYS)
    staging = SendFaxOperator(task_id="send", to=A, files=[pdf], comment="STAGING test fax")
    staging_ids = Task(staging, Store()).run()["outbox_fax_ids"]
    prod = Task(SendFaxOperator(task_id="send", to=A, files=[pdf], comment="PROD invoice"), Store())
    control.add_fault(drop=True, method="POST", path_endswith="/outbox", times=1)
    with pytest.raises(AirflowException, match="may have been sent"):
        prod.run()
    with pytest.raises(AirflowFailException, match="Check the account's sent faxes"):
        prod.run()  # not staging's fax: ambiguous, and on_ambiguous="fail"
    prod.operator.on_ambiguous = "resend"
    result = prod.run()
    assert result["outbox_fax_ids"] != staging_ids
    assert result["adopted"] == []
    assert [f["comment"]["text"] for f in control.faxes()] == ["STAGING test fax", "PROD invoice"]


def test_a_save_merges_what_another_execution_wrote_and_keeps_both_ids_of_a_conflict():
    from airflow_provider_faxplus.operators.send import SendRecord

    store = Store()
    mark = "airflow-000000000001"
    mine = SendRecord(store, STATE_KEY, mark, None)
    store.set(STATE_KEY, {"mark": mark, "ids": {A: "theirs", B: "b"}, "uncertain": [], "files": ["/t"]})
    mine.learn({A: "mine"})
    saved = store.get(STATE_KEY)
    assert saved["ids"] == {A: "mine", B: "b"}
    assert saved["also_sent"] == [[A, "theirs"]]
    assert saved["files"] == ["/t"]


def test_the_outcome_rule_covers_every_request():
    from airflow_provider_faxplus.exceptions import FaxPlusAPIError

    def api(status: int) -> FaxPlusAPIError:
        return FaxPlusAPIError("x", operation="Send a fax", method="POST", path="/p", status=status)

    for request in ("token", "list", "upload"):
        assert send.send_outcome(request, api(500)) == send.NOT_SENT
    assert send.send_outcome("send", None) == send.SENT
    assert send.send_outcome("send", api(400)) == send.NOT_SENT
    assert send.send_outcome("send", api(303)) == send.UNKNOWN
    assert send.send_outcome("send", api(503)) == send.UNKNOWN
    assert send.send_outcome("send", api(418)) == send.UNKNOWN
    assert set(send.NEXT_TRY) == {send.NOT_SENT, send.SENT, send.UNKNOWN}


def test_the_xcom_gives_each_fax_the_fields_a_delivery_sensor_matches_by(faxplus_conn, hook, control, pdf):
    """Issue 23: ``faxes`` maps each outbox id to destination, sender, comment and submit time; a fax
    adopted from the outbox has the outbox's submit time, a fresh one the time of its send."""
    control.settings(send_lifecycle=STAYS)
    operator = SendFaxOperator(
        task_id="send", to=[A, B], files=[pdf], comment="letter", on_ambiguous="resend"
    )
    task = Task(operator, Store())
    _lose_next_send_answer(control)
    before = pendulum.now("UTC")
    with pytest.raises(AirflowException, match="may have been sent"):
        task.run()
    _leave(control, hook, B)
    result = task.run()  # A adopted from the outbox, B sent again
    after = pendulum.now("UTC")
    faxes = result["faxes"]
    assert set(faxes) == set(result["outbox_fax_ids"].values())
    a, b = result["outbox_fax_ids"][A], result["outbox_fax_ids"][B]
    outbox_a = next(f for f in hook.list_outbox_faxes() if f.id == a)
    assert faxes[a] == {
        "to": A,
        "from_number": "no_number",
        "comment": "letter",
        "submitted_at": outbox_a.submit_time.isoformat(),
    }
    assert faxes[b]["to"] == B
    assert before <= pendulum.parse(faxes[b]["submitted_at"]) <= after
    assert json.loads(json.dumps(result)) == result
