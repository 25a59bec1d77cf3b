"""`mailgate mx --probe` against a loopback DNS zone and a real mailgate offering STARTTLS with a
trustme certificate: hosts, addresses, banner, EHLO, TLS and the certificate's name match."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.cli import mx_cmd
from tests.conftest import free_port
from tests.support.dns_server import LoopbackDnsServer
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import config_text

pytestmark = pytest.mark.timeout(60)

ZONE = {
    "lab.test": {"MX": [(20, "other.test"), (10, "mx.test")]},
    "mx.test": {"A": ["127.0.0.1"]},  # the certificate names mx.test
    "other.test": {"A": ["127.0.0.1"]},  # ... but not other.test
    "null.test": {"MX": [(0, ".")]},
    "dead.test": {"MX": [(10, "mx.dead.test")]},
    "mx.dead.test": {"A": ["127.0.0.1"]},
}


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailgate")
    mx_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDnsServer]:
    with LoopbackDnsServer(ZONE) as server:
        yield server


@pytest.fixture
def mailgate(tmp_path: Path, tls_files: dict[str, str]) -> Iterator[InProcessMailgate]:
    with InProcessMailgate(config_text(tmp_path, tls_files)) as mg:
        yield mg


def dns_options(dns: LoopbackDnsServer) -> list[str]:
    return ["--nameserver", "127.0.0.1", "--dns-port", str(dns.port), "--timeout", "5"]


def test_probe_reports_banner_extensions_tls_and_certificate(
    dns: LoopbackDnsServer, mailgate: InProcessMailgate, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(["mx", "lab.test", "--probe", "--json", "--port", str(mailgate.port("mx")), *dns_options(dns)])
    data = json.loads(capsys.readouterr().out)

    assert code == 0
    assert [(h["preference"], h["name"], h["addresses"]) for h in data["lookup"]["hosts"]] == [
        (10, "mx.test", ["127.0.0.1"]), (20, "other.test", ["127.0.0.1"]),
    ]
    first, second = data["probes"]
    assert first["banner"] == "220 mx.test ESMTP mailgate"
    assert first["starttls_offered"] and first["tls"].startswith("TLSv1.")
    assert "STARTTLS" in first["extensions"] and "STARTTLS" not in first["extensions_after_tls"]
    assert "AUTH PLAIN LOGIN" not in first["extensions_after_tls"]  # the mx profile offers no AUTH
    cert = first["certificate"]
    assert cert["name_matches"] is True and cert["name_checked"] == "mx.test"
    assert "mx.test" in cert["dns_names"] and not cert["expired"] and cert["days_left"] > 0
    assert second["certificate"]["name_matches"] is False
    assert not first["error"] and not second["error"]
    assert "C: MAIL" not in "\n".join(first["transcript"])  # the probe never starts a transaction


def test_table_output(dns: LoopbackDnsServer, mailgate: InProcessMailgate, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["mx", "lab.test", "--probe", "--port", str(mailgate.port("mx")), *dns_options(dns)]) == 0
    captured = capsys.readouterr()
    assert "   10  mx.test" in captured.out
    assert "STARTTLS:  offered, TLSv1." in captured.out
    assert "host name: matches mx.test" in captured.out
    assert "host name: does NOT match other.test" in captured.out
    assert "[1/2] probing mx.test (127.0.0.1)" in captured.err  # progress on stderr


def test_null_mx_and_unreachable_host_exit_1(dns: LoopbackDnsServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["mx", "null.test", *dns_options(dns)]) == 1
    assert "Null MX" in capsys.readouterr().out
    assert cli(["mx", "dead.test", "--probe", "--port", str(free_port()), *dns_options(dns)]) == 1
    assert "error:" in capsys.readouterr().out


def test_dns_that_does_not_answer_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nobody answers: the look-up times out
    assert cli(["mx", "lab.test", "--nameserver", "127.0.0.1", "--dns-port", str(port), "--timeout", "1"]) == 3
    assert "failed temporarily" in capsys.readouterr().out


def test_bad_domain_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["mx", "bad..test"]) == 2
    assert "not a valid domain" in capsys.readouterr().err


def test_a_silent_name_server_gets_progress_and_a_plain_message(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20 item 10: ten silent seconds, then "answered The DNS operation timed out"."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # receives, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        code = cli(["mx", "lab.test", "--nameserver", "127.0.0.1", "--dns-port", str(port), "--timeout", "1.5"])
    captured = capsys.readouterr()
    assert code == 3
    assert f"looking up MX of lab.test at 127.0.0.1 port {port}" in captured.err
    assert f"no answer from 127.0.0.1 port {port} within 1.5 s" in captured.out
    assert "answered" not in captured.out


def test_without_nameserver_mx_asks_the_configured_dns_as_delivery_does(
    dns: LoopbackDnsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "none"\n'
                      f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\n')
    assert cli(["mx", "lab.test", "--config", str(config)]) == 0
    assert "mx.test" in capsys.readouterr().out
