"""The verdict rules of tools/relay_test.py and the self-audit's choice of source address."""

from __future__ import annotations

import pytest

from mailgate.core.reply import Reply
from mailgate.policy.tricks import NMAP, TRICKS
from mailgate.tools.audit import connection_plan
from mailgate.tools.relay_test import (
    CUSTOM_FORM, Outcome, RelayTestReport, RelayTestSettings, Verdict, classify_reply, forms_for,
    inside_hosted_tree, verdict_of,
)

pytestmark = pytest.mark.timeout(10)

A, R, T, U = Outcome.ACCEPTED, Outcome.REFUSED, Outcome.TEMPFAIL, Outcome.UNTESTED


@pytest.mark.parametrize(
    ("outcomes", "verdict", "exit_code"),
    [
        ([R, R, R], Verdict.CLOSED, 0),
        ([R, A, R], Verdict.OPEN, 1),
        ([T, A, U], Verdict.OPEN, 1),  # one accepted form proves it, whatever else happened
        ([R, T, R], Verdict.INCONCLUSIVE, 3),  # a 4xx proves nothing
        ([R, U], Verdict.INCONCLUSIVE, 3),
        ([], Verdict.INCONCLUSIVE, 3),  # nothing could be tried
    ],
)
def test_verdict(outcomes: list[Outcome], verdict: Verdict, exit_code: int) -> None:
    assert verdict_of(outcomes) is verdict
    assert verdict.exit_code == exit_code


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (Reply(250, "2.1.5", "OK"), A),
        (Reply(251, "2.1.5", "User not local; will forward"), A),  # RFC 5321 §3.4: still relaying
        (Reply(550, "5.7.1", "Unable to relay"), R),
        (Reply(554, "5.7.1", "Relay access denied"), R),
        (Reply(454, "4.7.1", "Relay access denied"), T),
        (Reply(451, "4.7.1", "Greylisted"), T),
    ],
)
def test_classify_reply(reply: Reply, outcome: Outcome) -> None:
    assert classify_reply(reply) is outcome


def _report(**overrides: str) -> RelayTestReport:
    values = {"server_address": "192.0.2.25", "server_name": "mx.example.com",
              "target": "example.net", "hosted": "example.com", **overrides}
    return RelayTestReport("mx.example.com", 25, **values)


def test_every_table_form_is_rendered_for_the_server() -> None:
    forms = forms_for(RelayTestSettings("mx.example.com"), _report())
    assert len(forms) == len(TRICKS) >= 40
    assert sum(trick.origin == NMAP for trick in TRICKS) == 16
    by_name = {form.name: form for form in forms}
    assert by_name["nmap_sender_relay_literal"].mail_from == "<antispam@[192.0.2.25]>"
    assert by_name["nmap_percent_relay_host"].rcpt_to == "<relaytest%example.net@mx.example.com>"
    assert by_name["percent_hosted"].rcpt_to == "<relaytest%example.net@example.com>"


def test_given_from_and_to_make_an_extra_first_form_and_set_the_target() -> None:
    settings = RelayTestSettings("mx.example.com", mail_from="me@example.org", rcpt_to="you@example.net")
    forms = forms_for(settings, _report())
    assert forms[0].name == CUSTOM_FORM
    assert (forms[0].mail_from, forms[0].rcpt_to) == ("<me@example.org>", "<you@example.net>")
    assert len(forms) == len(TRICKS) + 1


@pytest.mark.parametrize(
    ("listener", "plan"),
    [
        ("0.0.0.0", ("127.0.0.1", "127.0.0.2")),
        ("127.0.0.1", ("127.0.0.1", "127.0.0.2")),
        ("127.0.0.2", ("127.0.0.2", "127.0.0.3")),  # never connect from the listener's own address
        ("192.0.2.25", ("192.0.2.25", "127.0.0.2")),
        ("::", ("127.0.0.1", "127.0.0.2")),  # a dual-stack socket takes IPv4 too
        ("::1", None),  # IPv6 has one loopback address: no untrusted source
        ("[2001:db8::25]", None),
    ],
)
def test_self_audit_connection_plan(listener: str, plan: tuple[str, str] | None) -> None:
    assert connection_plan(listener) == plan


@pytest.mark.parametrize(
    ("path", "local"),
    [
        ("<relaytest@relay.example.com>", True),  # a subdomain of the hosted domain
        ("<postmaster@EXAMPLE.com>", True),
        ("<relaytest%example.net@example.com>", False),  # routing characters: a relay trick
        ('<"relaytest@example.net"@example.com>', False),
        ("<@example.com:relaytest@example.net>", False),
        ("<relaytest@notexample.com>", False),
        ("<relaytest@example.com.example.net>", False),
        ("<relaytest@[192.0.2.25]>", False),
        ("<relaytest@example.net", False),  # unparsable: never excused
    ],
)
def test_inside_hosted_tree(path: str, local: bool) -> None:
    assert inside_hosted_tree(path, "example.com") is local
    assert inside_hosted_tree(path, None) is False


def test_local_acceptances_do_not_make_an_open_verdict() -> None:
    assert verdict_of([R, Outcome.LOCAL, R]) is Verdict.CLOSED
    assert verdict_of([Outcome.LOCAL, A]) is Verdict.OPEN


def test_parent_domains_of_the_servers_name() -> None:
    from mailgate.tools.relay_test import parent_domains

    assert parent_domains("mx1.mail.example.com") == ["mail.example.com", "example.com"]
    assert parent_domains("mx1.example.com.") == ["example.com"]
    assert parent_domains("example.com") == [] and parent_domains("[192.0.2.1]") == []
