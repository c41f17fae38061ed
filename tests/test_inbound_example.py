"""example_faxplus_inbound's destination: a fax id that is not a safe file name never names a path."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_faxplus.record_watch import PAYLOAD_KEYS

EXAMPLE = Path(__file__).resolve().parent.parent / "example_dags" / "example_faxplus_inbound.py"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("example_inbound_ids", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(fax_id: str, user_id: str = "self") -> SimpleNamespace:
    payload = dict.fromkeys(PAYLOAD_KEYS) | {"fax_id": fax_id, "user_id": user_id, "category": "inbox"}
    return SimpleNamespace(extra={"payload": payload})


@pytest.mark.parametrize(
    ("fax_id", "user_id"),
    [
        ("../../esc/x", "self"),
        ("..", "self"),
        (".", "self"),
        ("a b", "self"),
        ("a/b", "self"),
        ("a\\b", "self"),
        (".hidden", "self"),
        ("x" * 201, "self"),
        ("ok", ".."),
        ("ok", "../esc"),
    ],
)
def test_a_fax_whose_id_is_not_a_safe_file_name_is_skipped_with_a_warning(caplog, fax_id, user_id):
    context = {"triggering_asset_events": {"faxplus_inbox_received": [_event(fax_id, user_id), _event("r1")]}}
    with caplog.at_level(logging.WARNING):
        assert _example().received(context) == [{"fax_id": "r1", "user_id": "self"}]
    assert f"Skipping fax {fax_id!r} of faxplus_inbox_received" in caplog.text
    assert "is not a safe file name" in caplog.text


def test_ids_the_api_uses_are_safe_file_names():
    ids = ["in-0001", "7f3c9a0e2b6d4f1a8c5e9b0d3a6f2c1e", "arrived-1-0000", "a.b_c"]
    context = {"triggering_asset_events": {"faxplus_inbox_received": [_event(i) for i in ids]}}
    assert [fax["fax_id"] for fax in _example().received(context)] == ids
