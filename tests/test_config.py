from __future__ import annotations

import json
from pathlib import Path

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
        ("https://restapi.fax.plus:99999/v3", "port that is not a number from 0 to 65535"),
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


def test_same_extra_with_and_without_prefix_and_different_values_is_an_error_naming_both():
    with pytest.raises(FaxPlusConfigError, match="'client_id' and extra 'extra__faxplus__client_id'"):
        build(extra={"client_id": "a", "extra__faxplus__client_id": "b"})
    with pytest.raises(FaxPlusConfigError, match="different values"):
        build(extra={"extra__faxplus__timeout": "30", "timeout": "31"})


# What Airflow 2.11's connection form posts: every extra field twice, under both names, the checkbox
# as "y", numbers as strings, empty fields as "".
FORM_2_11_PAYLOAD = {
    "extra__faxplus__client_id": "",
    "extra__faxplus__timeout": "30",
    "extra__faxplus__verify": "y",
    "extra__faxplus__ca_bundle": "",
    "extra__faxplus__max_attempts": "5",
    "extra__faxplus__max_retry_seconds": "120",
    "extra__faxplus__initial_backoff": "0.5",
    "client_id": "",
    "timeout": "30",
    "verify": "y",
    "ca_bundle": "",
    "max_attempts": "5",
    "max_retry_seconds": "120",
    "initial_backoff": "0.5",
}


def test_the_2_11_form_payload_with_every_field_twice_is_accepted():
    config = build(extra=FORM_2_11_PAYLOAD)
    assert (config.timeout, config.verify, config.ca_bundle) == (30.0, True, None)
    assert (config.max_attempts, config.max_retry_seconds, config.initial_backoff) == (5, 120.0, 0.5)


def test_the_same_setting_in_two_spellings_is_one_value():
    # The form's checkbox and a JSON boolean for the same ticked box.
    assert build(extra={"extra__faxplus__verify": "y", "verify": True}).verify is True
    assert build(extra={"extra__faxplus__timeout": "30", "timeout": 30}).timeout == 30


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        ("y", True),
        ("on", True),
        ("true", True),
        ("Yes", True),
        ("1", True),
        (False, False),
        ("n", False),
        ("off", False),
        ("false", False),
        ("no", False),
        ("0", False),
    ],
)
def test_verify_is_a_yes_no_setting_in_every_form_spelling(value, expected):
    assert build(extra={"verify": value}).verify is expected


@pytest.mark.parametrize(
    ("extra", "field", "expected"),
    [
        ({"timeout": "30"}, "timeout", 30.0),
        ({"timeout": " 0.5 "}, "timeout", 0.5),
        ({"max_attempts": "3"}, "max_attempts", 3),
        ({"max_attempts": "3.0"}, "max_attempts", 3),
        ({"max_retry_seconds": "0"}, "max_retry_seconds", 0.0),
        ({"initial_backoff": "0.25"}, "initial_backoff", 0.25),
        ({"timeout": ""}, "timeout", 30.0),
        ({"max_attempts": ""}, "max_attempts", 5),
        ({"initial_backoff": "  "}, "initial_backoff", 1.0),
    ],
)
def test_numeric_fields_take_form_values_and_an_empty_string_means_unset(extra, field, expected):
    assert getattr(build(extra=extra), field) == expected


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"timeout": 10**400}, "timeout"),
        ({"timeout": 10**5000}, "timeout"),
        ({"timeout": "1e400"}, "timeout"),
        ({"timeout": 86400 * 365}, "timeout"),
        ({"max_attempts": 10**30}, "max_attempts"),
        ({"max_attempts": "1" + "0" * 30}, "max_attempts"),
        ({"max_retry_seconds": 10**400}, "max_retry_seconds"),
        ({"initial_backoff": 1e300}, "initial_backoff"),
    ],
)
def test_huge_numbers_are_a_config_error_naming_the_field(extra, field):
    with pytest.raises(FaxPlusConfigError, match=f"'{field}' must be") as info:
        build(extra=extra)
    assert len(str(info.value)) < 300


def test_ca_bundle_is_its_own_setting_and_an_old_verify_path_still_works(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    new = build(extra={"verify": True, "ca_bundle": str(bundle)})
    old = build(extra={"verify": str(bundle)})
    assert (new.verify, new.ca_bundle) == (True, str(bundle))
    assert (old.verify, old.ca_bundle) == (True, str(bundle))
    # The same path twice is one setting; a CA directory is accepted as requests accepts it.
    assert build(extra={"verify": str(bundle), "ca_bundle": str(bundle)}).ca_bundle == str(bundle)
    assert build(extra={"ca_bundle": str(tmp_path)}).ca_bundle == str(tmp_path)


def test_contradicting_tls_settings_are_an_error(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    other = tmp_path / "other.pem"
    other.write_text("x")
    with pytest.raises(FaxPlusConfigError, match="'verify' is false but extra 'ca_bundle' is set"):
        build(extra={"verify": "false", "ca_bundle": str(bundle)})
    with pytest.raises(FaxPlusConfigError, match="keep one of them"):
        build(extra={"verify": str(bundle), "ca_bundle": str(other)})
    with pytest.raises(FaxPlusConfigError, match=r"'ca_bundle'.*does not exist"):
        build(extra={"ca_bundle": str(tmp_path / "missing.pem")})
    with pytest.raises(FaxPlusConfigError, match="ca_bundle"):
        build(extra={"ca_bundle": 3})


def test_tls_settings_are_one_rule_read_from_the_connection_then_the_environment(tmp_path):
    from airflow_provider_faxplus.config import tls_settings

    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    env = {"REQUESTS_CA_BUNDLE": "/env/requests.pem", "CURL_CA_BUNDLE": "/env/curl.pem"}
    assert tls_settings(build(), env).ca_bundle == "/env/requests.pem"
    assert tls_settings(build(), {"CURL_CA_BUNDLE": "/env/curl.pem"}).source.endswith("CURL_CA_BUNDLE")
    assert tls_settings(build(), {}).ca_bundle is None
    assert tls_settings(build(extra={"ca_bundle": str(bundle)}), env).ca_bundle == str(bundle)
    off = tls_settings(build(extra={"verify": False}), env)
    assert (off.verify, off.ca_bundle, off.requests_verify()) == (False, None, False)


def test_a_bad_ca_bundle_is_a_config_error_naming_where_it_came_from(tmp_path):
    from airflow_provider_faxplus.config import tls_settings

    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate")
    with pytest.raises(FaxPlusConfigError, match=r"CA bundle .*ca\.pem.* extra 'ca_bundle'"):
        tls_settings(build(extra={"ca_bundle": str(bundle)})).ssl_context()
    with pytest.raises(FaxPlusConfigError, match="REQUESTS_CA_BUNDLE"):
        tls_settings(build(), {"REQUESTS_CA_BUNDLE": str(bundle)}).ssl_context()
    # A directory of CA certificates is a capath, as requests treats it.
    assert tls_settings(build(extra={"ca_bundle": str(tmp_path)})).ssl_context() is not None


def test_no_proxy_ever_for_a_loopback_or_plain_http_base_url(monkeypatch):
    from airflow_provider_faxplus.config import proxy_for

    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://proxy.internal:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    for url in (
        "http://127.0.0.1:8080/v3",
        "http://localhost/v3",
        "http://[::1]:9/v3",
        "https://127.0.0.2/v3",
    ):
        assert proxy_for(url) is None, url
    assert proxy_for("https://restapi.fax.plus/v3") == "http://proxy.internal:3128"
    monkeypatch.setenv("no_proxy", "fax.plus")
    assert proxy_for("https://restapi.fax.plus/v3") is None


def test_a_socks_proxy_is_refused_clearly(monkeypatch):
    from airflow_provider_faxplus.config import proxy_for

    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5://user:pw@proxy.internal:1080")
    monkeypatch.setenv("all_proxy", "socks5://user:pw@proxy.internal:1080")
    with pytest.raises(FaxPlusConfigError, match="'socks5'") as info:
        proxy_for("https://restapi.fax.plus/v3")
    assert "pw" not in str(info.value)


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
        ({"verify": "maybe"}, "does not exist"),
        ({"verify": 3}, "verify"),
        ({"client_id": 12}, "client_id"),
        ({"client_id": "APIK-1\r\nX-Evil: 1"}, "control characters"),
        ({"client_id": "APIK-fäx"}, "non-ASCII"),
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
    assert build(extra={"verify": str(bundle)}).ca_bundle == str(bundle)


@pytest.mark.parametrize(
    "password",
    [None, "", "   ", "tok en", "tok\nen", "alohi_pat_sécret", "alohi_pat_\u200bx", "alohi_pat_💥"],
)
def test_bad_tokens_are_refused_without_echoing_them(password):
    with pytest.raises(FaxPlusConfigError, match="API token") as info:
        build(password=password)
    if password and password.strip():
        assert password.strip() not in str(info.value)
        assert "sécret" not in str(info.value)


def test_a_non_ascii_token_is_refused_at_configuration_in_the_forms_words():
    with pytest.raises(FaxPlusConfigError, match="API token contains non-ASCII characters"):
        build(password="alohi_pat_sécret")
    with pytest.raises(FaxPlusConfigError, match=r"API token field \(password\)"):
        build(password="")


SECRET_URLS = [
    "https://restapi.fax.plus/v3?access_token=alohi_pat_SECRETQUERY",
    "https://restapi.fax.plus/v3#alohi_pat_SECRETFRAGMENT",
    "https://me:alohi_pat_SECRETPW@restapi.fax.plus/v3",
    "https://me:alohi_pat_SECRETPW@restapi.fax.plus:99999/v3?access_token=alohi_pat_SECRETQUERY",
    "ftp://me:alohi_pat_SECRETPW@restapi.fax.plus/v3?access_token=alohi_pat_SECRETQUERY",
    "http://me:alohi_pat_SECRETPW@example.com/v3?access_token=alohi_pat_SECRETQUERY",
]


@pytest.mark.parametrize("host", SECRET_URLS)
def test_config_errors_show_only_the_safe_form_of_the_base_url(host):
    with pytest.raises(FaxPlusConfigError) as info:
        build(host=host)
    message = str(info.value)
    assert "SECRET" not in message
    assert "restapi.fax.plus" in message or "example.com" in message


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
    with pytest.raises(
        FaxPlusConfigError, match=r"'extra__faxplus__timeout' and extra 'timeout'.*different values"
    ):
        build(extra={"extra__faxplus__timeout": "30", "timeout": "20"})


@pytest.mark.parametrize(("value", "expected"), [("y", True), ("on", True), ("n", False), ("off", False)])
def test_form_boolean_spellings_of_verify(value, expected):
    assert build(extra={"verify": value}).verify is expected


def test_ca_bundle_is_its_own_field(tmp_path, monkeypatch):
    """Judged by what requests is told (the hook's session), whatever the config keeps it in."""
    import certifi

    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes())  # a real bundle: unusable ones are refused
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
