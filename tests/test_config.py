from __future__ import annotations

import json

import pytest

from airflow_provider_faxplus.config import DEFAULT_BASE_URL, FaxPlusConfig, config_from_connection
from airflow_provider_faxplus.exceptions import FaxPlusConfigError

TOKEN = "alohi_pat_secret-value"


def build(host=None, extra=None, password=TOKEN, login=None, schema=None, port=None):
    return config_from_connection(
        conn_id="fx", host=host, password=password, login=login, schema=schema, port=port, extra=extra or {}
    )


def test_defaults_point_at_fax_plus_over_https():
    config = build()
    assert config.base_url == DEFAULT_BASE_URL
    assert config.client_id is None
    assert config.verify is True


def test_repr_never_shows_the_token():
    assert TOKEN not in repr(build())


@pytest.mark.parametrize(
    "host",
    [
        "http://127.0.0.1:8080/v3",
        "http://localhost:9/v3/",
        "http://[::1]:80/v3",
        "https://api.example.com/v3",
    ],
)
def test_accepted_base_urls(host):
    assert build(host=host).base_url == host.rstrip("/")


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("http://api.example.com/v3", "plain http"),
        ("http://10.0.0.5/v3", "plain http"),
        ("restapi.fax.plus/v3", "must start with https://"),
        ("ftp://restapi.fax.plus/v3", "must start with https://"),
        ("https://user:pw@restapi.fax.plus/v3", "credentials"),
        ("https://restapi.fax.plus/v3?x=1", "query"),
        ("https://restapi.fax.plus:99999/v3", "not a valid URL"),
    ],
)
def test_refused_base_urls_name_the_problem(host, message):
    with pytest.raises(FaxPlusConfigError, match=message) as info:
        build(host=host)
    assert "'fx'" in str(info.value)
    assert "pw" not in str(info.value)


def test_unknown_extra_is_an_error_not_a_header():
    with pytest.raises(FaxPlusConfigError, match=r"unknown extra field.*'X-Debug'"):
        build(extra={"X-Debug": "1"})


def test_ui_prefixed_extras_and_empty_form_values_are_understood():
    config = build(extra={"extra__faxplus__client_id": "APIK-1", "timeout": "", "verify": None})
    assert config.client_id == "APIK-1"
    assert config.timeout == 30


def test_same_extra_with_and_without_prefix_is_an_error():
    with pytest.raises(FaxPlusConfigError, match="given twice"):
        build(extra={"client_id": "a", "extra__faxplus__client_id": "b"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"timeout": 0}, "timeout.*> 0"),
        ({"timeout": "soon"}, "timeout.*number"),
        ({"timeout": True}, "timeout.*number"),
        ({"timeout": [1]}, "timeout.*number"),
        ({"max_attempts": 0}, "max_attempts.*>= 1"),
        ({"max_attempts": 2.5}, "whole number"),
        ({"max_retry_seconds": -1}, "max_retry_seconds"),
        ({"verify": "/no/such/bundle.pem"}, "does not exist"),
        ({"verify": 3}, "verify"),
        ({"client_id": 12}, "client_id"),
        ({"client_id": "APIK-1\r\nX-Evil: 1"}, "control characters"),
    ],
)
def test_bad_extras_name_the_field(extra, message):
    with pytest.raises(FaxPlusConfigError, match=message):
        build(extra=extra)


def test_numeric_strings_and_bool_strings_from_forms_are_accepted(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    config = build(extra={"timeout": "12.5", "max_attempts": "3", "verify": "false"})
    assert (config.timeout, config.max_attempts, config.verify) == (12.5, 3, False)
    assert build(extra={"verify": str(bundle)}).verify == str(bundle)


@pytest.mark.parametrize("password", [None, "", "   ", "tok en", "tok\nen"])
def test_bad_tokens_are_refused_without_echoing_them(password):
    with pytest.raises(FaxPlusConfigError, match="token") as info:
        build(password=password)
    if password and password.strip():
        assert password not in str(info.value)


@pytest.mark.parametrize(("field", "value"), [("login", "me"), ("schema", "v3"), ("port", 8080)])
def test_hidden_fields_that_are_set_are_an_error_not_ignored(field, value):
    with pytest.raises(FaxPlusConfigError, match=field):
        build(**{field: value})


def test_overrides_are_validated():
    config = build()
    assert config.with_overrides(timeout=3, max_attempts=None).timeout == 3
    with pytest.raises(FaxPlusConfigError):
        config.with_overrides(max_attempts=0)
    with pytest.raises(FaxPlusConfigError):
        FaxPlusConfig(token="")


# What Airflow 2.11's form script sent for the form's defaults, captured in tests/test_browser.py:
# each extra twice, a ticked checkbox as "y", empty fields left out.
FORM_2_11_DEFAULTS = {"extra__faxplus__verify": "y", "verify": "y"}
# Every field filled in.
FORM_2_11_FILLED = {
    "extra__faxplus__client_id": "",
    "extra__faxplus__timeout": "30",
    "extra__faxplus__verify": "y",
    "extra__faxplus__ca_bundle": "",
    "extra__faxplus__max_attempts": "5",
    "extra__faxplus__max_retry_seconds": "120",
    "extra__faxplus__initial_backoff": "1",
    "client_id": "",
    "timeout": "30",
    "verify": "y",
    "ca_bundle": "",
    "max_attempts": "5",
    "max_retry_seconds": "120",
    "initial_backoff": "1",
}


def test_the_2_11_form_defaults_are_accepted():
    assert build(extra=FORM_2_11_DEFAULTS).verify is True


def test_the_2_11_form_sending_each_extra_twice_with_the_same_value_is_accepted():
    config = build(extra=FORM_2_11_FILLED)
    assert (config.timeout, config.verify, config.max_attempts, config.initial_backoff) == (30, True, 5, 1)


def test_the_same_extra_twice_with_different_values_stays_an_error():
    with pytest.raises(FaxPlusConfigError, match=r"'timeout'.*twice"):
        build(extra={"extra__faxplus__timeout": "30", "timeout": "20"})


@pytest.mark.parametrize(("value", "expected"), [("y", True), ("on", True), ("n", False), ("off", False)])
def test_form_boolean_spellings_of_verify(value, expected):
    assert build(extra={"verify": value}).verify is expected


def test_ca_bundle_is_its_own_field(tmp_path, monkeypatch):
    """Judged by what requests is told (the hook's session), whatever the config keeps it in."""
    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    for extra in ({"verify": True, "ca_bundle": str(bundle)}, {"ca_bundle": str(bundle)}):
        conn = {
            "conn_type": "faxplus",
            "host": "https://api.example.com/v3",
            "password": TOKEN,
            "extra": extra,
        }
        monkeypatch.setenv("AIRFLOW_CONN_FX_BUNDLE", json.dumps(conn))
        hook = FaxPlusHook("fx_bundle")
        assert hook.session.verify == str(bundle)
        hook.close()
    with pytest.raises(FaxPlusConfigError, match="'ca_bundle'"):
        build(extra={"ca_bundle": str(tmp_path / "missing.pem")})
    with pytest.raises(FaxPlusConfigError, match=r"(?s)(?=.*'ca_bundle')(?=.*'verify')"):
        build(extra={"verify": False, "ca_bundle": str(bundle)})
