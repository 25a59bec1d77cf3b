"""Configuration: schema validation, every error with its key path, the generated reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.cli.main import main
from mailgate.config.loader import ConfigError, load_embedded, load_file, load_text
from mailgate.config.reference import render_reference
from mailgate.config.schema import REQUIRED, SECTIONS

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[[listener]]
name = "mx"
address = "127.0.0.1:2525"
tls = "none"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text)
    return info.value.errors


def test_minimal_config_fills_defaults() -> None:
    config = load_text(MINIMAL)
    assert config.listener[0].address == ("127.0.0.1", 2525)
    assert config.server.max_message_size == 35 * 1024 * 1024
    assert config.delivery.max_lifetime == 5 * 86400
    assert config.delivery.retry_schedule == (60, 300, 600, 1800, 3600)
    assert config.relay.trusted_networks == ()


def test_every_error_is_reported_with_its_key_path() -> None:
    errors = errors_of(
        """
[server]
hostname = 3
colour = "blue"
max_recipients = 0
[[listener]]
name = "a"
address = "nope"
[[listener]]
name = "b"
address = "[::1]:25"
tls = "starttls"
[relay]
trusted_networks = ["10.0.0.0/8", "not-a-net"]
[[domain]]
name = "bad..example"
next_hop = ["mx.example:99999"]
[delivery]
max_lifetime = "forever"
[bogus]
"""
    )
    expected = [
        "bogus: unknown section",
        "server.colour: unknown key",
        "server.hostname: must be a string",
        "server.max_recipients: must be at least 1",
        "listener[0].address: not host:port",
        "listener[1].cert_file: TLS mode 'starttls' needs cert_file and key_file",
        "relay.trusted_networks: item 1: 'not-a-net' is not a CIDR network",
        "domain[0].name: bad domain label",
        "delivery.max_lifetime: must be a duration",
    ]
    for fragment in expected:
        assert any(fragment in error for error in errors), (fragment, errors)


def test_required_keys_and_at_least_one_listener() -> None:
    errors = errors_of("[[listener]]\naddress = \"127.0.0.1:25\"\n")
    assert "listener[0].name: required" in errors
    assert "listener: at least one [[listener]] is required" in errors_of("[server]\n")


def test_auth_outside_tls_is_refused() -> None:
    errors = errors_of(MINIMAL + 'auth = "offered"\n')
    assert any("listener[0].auth: AUTH is only offered inside TLS" in e for e in errors)


def test_durations_and_sizes_accept_units() -> None:
    config = load_text(MINIMAL + '[delivery]\nmax_lifetime = "2d"\ndelay_warning = "90m"\n[server]\nmax_message_size = "10M"\n')
    assert config.delivery.max_lifetime == 2 * 86400
    assert config.delivery.delay_warning == 5400
    assert config.server.max_message_size == 10 * 1024 * 1024


def test_invalid_toml_names_the_problem() -> None:
    errors = errors_of("[server\n")
    assert "not valid TOML" in errors[0]


def test_embedded_default_is_valid_and_loopback_only() -> None:
    config = load_embedded()
    for listener in config.listener:
        assert listener.address[0] in ("127.0.0.1", "::1")
        assert listener.address[1] > 1024
    assert config.server.spool_dir.startswith("./var")
    assert any(hop.startswith("maildir:") for d in config.domain for hop in d.next_hop)


def test_example_configuration_in_docs_is_valid() -> None:
    load_file(ROOT / "docs" / "example.toml")


def test_reference_document_is_current() -> None:
    current = (ROOT / "docs" / "configuration.md").read_text()
    assert current == render_reference(), "run: mailgate config reference > docs/configuration.md"


def test_every_key_is_documented_with_a_default_or_required() -> None:
    for section in SECTIONS:
        for key in section.keys:
            assert key.doc, f"{section.name}.{key.name} has no doc"
            if key.default is not REQUIRED:
                key.kind.convert(list(key.default) if isinstance(key.default, tuple) else key.default)


def test_cli_config_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    assert main(["config", "check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "[server]\nnope = 1\nhostname = 5\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "server.nope: unknown key" in err and "server.hostname: must be a string" in err


def test_a_mistyped_key_or_section_gets_a_suggestion() -> None:
    """Issue 20 item 11: "did you mean" for a mistyped key."""
    errors = errors_of(MINIMAL + '[server]\nhostnme = "mx.test"\nmax_recipient = 5\n[delivary]\n[relay]\nzzz = 1\n')
    assert 'server.hostnme: unknown key; did you mean "hostname"?' in errors
    assert 'server.max_recipient: unknown key; did you mean "max_recipients"?' in errors
    assert any(e.startswith('delivary: unknown section; did you mean "delivery"?') for e in errors)
    assert "relay.zzz: unknown key" in errors  # nothing close: no guess
