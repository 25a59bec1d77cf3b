"""Property-based runs of the outbound client state machine against random replies.

A careless or hostile driver tries any command, body or end of data at any moment, and the
server answers each command with any reply code. An independent model of what the server holds
(a transaction opened by a 2yz to MAIL, kept by a refused DATA as Postfix keeps it, ended only by
a 250 to RSET, EHLO or the final dot) checks after every step that the protocol never let the
driver harm mail:
  * never MAIL while a transaction may be open (or its ending is still unanswered);
  * never a body, not even an empty one, unless this transaction's MAIL and at least one RCPT
    were accepted and DATA got 354 (so never after a refused MAIL);
  * a connection is offered for reuse only when no transaction may be open.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.smtp.client import ClientProtocol, ClientUsageError, Ending, PeerProtocolError, Verb

pytestmark = pytest.mark.timeout(120)

CODES = (220, 221, 235, 250, 251, 334, 354, 421, 450, 451, 452, 500, 503, 550, 552, 554)
COMMANDS = (Verb.MAIL, Verb.RCPT, Verb.DATA, Verb.RSET, Verb.NOOP, Verb.EHLO, Verb.QUIT)
ACTIONS = ("send", "body", "end", "reply", "reply")


@dataclass
class ServerModel:
    """What the server may hold, from the commands sent and the replies it gave."""

    open: bool = False  # a transaction may be open at the server
    mail_ok: bool = False  # this transaction's MAIL got 2yz
    rcpt_ok: int = 0
    data_ok: bool = False  # DATA got 354

    def sent(self, verb: Verb) -> None:
        if verb is Verb.MAIL:
            self.mail_ok, self.rcpt_ok, self.data_ok = False, 0, False

    def answered(self, verb: Verb, code: int) -> None:
        positive = code < 400
        if verb is Verb.MAIL and positive:
            self.open, self.mail_ok = True, True
        elif verb is Verb.RCPT and positive:
            self.rcpt_ok += 1
        elif verb is Verb.DATA:
            self.data_ok = code == 354  # a refused DATA keeps the MAIL (Postfix)
        elif verb in (Verb.RSET, Verb.EHLO, Verb.END_OF_DATA) and code == 250:
            self.open, self.mail_ok, self.rcpt_ok, self.data_ok = False, False, 0, False


def ready() -> tuple[ClientProtocol, list[Verb]]:
    protocol = ClientProtocol()
    protocol.receive(b"220 mx.test\r\n")
    protocol.send(Verb.EHLO, "EHLO me")
    protocol.receive(b"250-mx.test\r\n250 PIPELINING\r\n")
    return protocol, []


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_random_replies_never_harm_mail(data):
    protocol, outstanding = ready()
    model = ServerModel()
    for _ in range(60):
        action = data.draw(st.sampled_from(ACTIONS))
        if action == "send":
            verb = data.draw(st.sampled_from(COMMANDS))
            try:
                protocol.send(verb, f"{verb.value} x")
            except ClientUsageError:
                continue
            if verb is Verb.MAIL:
                unanswered = [v for v in outstanding if v is not Verb.NOOP]
                assert not model.open and not unanswered, "MAIL while a transaction may be open"
            model.sent(verb)
            outstanding.append(verb)
        elif action in ("body", "end"):
            try:
                protocol.body(b"x") if action == "body" else protocol.end_of_data()
            except ClientUsageError:
                continue
            assert model.mail_ok and model.rcpt_ok > 0 and model.data_ok, "body without an accepted MAIL/RCPT/354"
            if action == "end":
                outstanding.append(Verb.END_OF_DATA)
        elif outstanding:
            code = data.draw(st.sampled_from(CODES))
            verb = outstanding.pop(0)
            model.answered(verb, code)
            try:
                protocol.receive(f"{code} reply\r\n".encode())
            except PeerProtocolError:
                assert protocol.ending is Ending.CLOSE
                return  # out of step: the driver must close; nothing more is sent
        if protocol.ending is Ending.REUSE:
            assert not model.open and not outstanding, "offered for reuse with a transaction open"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(CODES), min_size=3, max_size=8))
def test_pipelined_group_gets_a_body_only_after_accepted_mail_and_rcpt(codes):
    """MAIL, RCPTs and DATA sent in one write; any replies: a body only when the replies allow."""
    protocol, _ = ready()
    recipients = len(codes) - 2
    protocol.send(Verb.MAIL, "MAIL FROM:<a@b>")
    for number in range(recipients):
        protocol.send(Verb.RCPT, f"RCPT TO:<r{number}@b>")
    protocol.send(Verb.DATA, "DATA")
    try:
        protocol.receive(b"".join(f"{code} reply\r\n".encode() for code in codes))
    except PeerProtocolError:
        assert protocol.ending is Ending.CLOSE
        return
    # RFC 5321 §3.8: after a 421 the server closes; a 354 read behind it opens nothing.
    may_send_body = (
        codes[0] == 250 and any(code in (250, 251) for code in codes[1:-1]) and codes[-1] == 354
        and 421 not in codes[:-1]
    )
    if may_send_body:
        protocol.body(b"x")
    else:
        with pytest.raises(ClientUsageError):
            protocol.end_of_data()
        assert protocol.ending is not Ending.REUSE  # RSET first, or close
