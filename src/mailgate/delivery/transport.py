"""The SMTP `Transport`: candidates in order, TLS policy, one transaction per hop, over asyncio.

Owns: connecting to a next hop's candidates in order, the session set-up (greeting, EHLO with
HELO fallback, STARTTLS per policy, smart-host AUTH), one transaction carrying all recipients
(pipelined when offered, RFC 2920), the RFC 5321 §4.5.3.2 time-outs, concurrency limits and
connection reuse through `delivery.pool`. Returns one `core.status.Outcome` per recipient.
Must not: resolve MX records or choose the next hop (routing), schedule retries or write DSNs,
parse SMTP bytes (smtp/client.py does that). Written instead of using aiosmtplib because
ARCHITECTURE.md wants one sans-IO protocol shared in style with the server, and because TLS
policy, pooling and per-recipient outcomes are the point here, not an afterthought.

Failure rules: anything before MAIL (refused connection, 4xx or 5xx greeting, EHLO and HELO
refused, STARTTLS required but missing, TLS handshake or certificate failure, AUTH refused)
moves on to the next candidate; once MAIL is sent, a lost connection, a time-out or a reply that
does not fit its command (`smtp.client.OutOfStepError`, e.g. a 503) defers every recipient
without a final reply and closes the connection (the message may be half-sent; no other
candidate is tried in the same attempt). A pooled connection that fails that way before its
first reply is replaced once by a fresh one. Whether a connection goes back to the pool is the
protocol's `ending`: RSET first when a transaction may be open, close on any doubt. A failed TLS handshake under policy "may" is not retried in clear text on the
same host: the next candidate is tried, and the message is deferred if none is left.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass, field

from mailgate.core.reply import MESSAGE_TOO_BIG, NEEDS_SMTPUTF8, Reply
from mailgate.core.status import Outcome, classify
from mailgate.delivery.pool import ConnectionPool, SmtpConnection
from mailgate.delivery.request import AttemptResult, Candidate, DeliveryRequest, HopPolicy
from mailgate.smtp.client import Ending, PeerProtocolError, State, Verb, mail_command, parse_ehlo, rcpt_command
from mailgate.smtp.line_wrap import LineWrapper

# Replies made up here for failures that have no server reply. Enhanced codes: RFC 3463 §3.5
# (X.4.1 no answer from host, X.4.2 bad connection incl. time-outs), §3.6 (X.5.0 protocol error),
# §3.8 (X.7.0 security, X.7.5 cryptographic failure); RFC 4954 §6 (X.7.8 credentials invalid).
NO_CANDIDATES = Reply(451, "4.4.4", "No next-hop address to try")  # RFC 3463 X.4.4 unable to route


@dataclass(frozen=True)
class CommandTimeouts:
    """Seconds; defaults are RFC 5321 §4.5.3.2 (EHLO, STARTTLS, AUTH, RSET use the MAIL value)."""

    greeting: float = 300.0  # §4.5.3.2.1 initial 220
    mail: float = 300.0  # §4.5.3.2.2
    rcpt: float = 300.0  # §4.5.3.2.3
    data_initiation: float = 120.0  # §4.5.3.2.4
    data_block: float = 180.0  # §4.5.3.2.5
    data_termination: float = 600.0  # §4.5.3.2.6


class _NextCandidate(Exception):
    """This candidate cannot take the message now; `reply` says why (always 4yz)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


# Body chunks this large are sent at once; smaller ones wait for the end-of-data dot.
BODY_FLUSH_SIZE = 32 * 1024


class _StaleConnection(Exception):
    """A pooled connection died before answering anything in this transaction."""


@dataclass
class _Message:
    """A request on its way, and the outcomes this attempt has given so far."""

    request: DeliveryRequest
    outcomes: dict[int, Outcome] = field(default_factory=dict)


class SmtpTransport:
    """Delivers one message to one next hop per call; keeps connections for the next call."""

    def __init__(
        self,
        *,
        connect_timeout: float = 30.0,
        command_timeouts: CommandTimeouts = CommandTimeouts(),
        idle_timeout: float = 30.0,
        max_connections: int = 100,
        max_per_destination: int = 10,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._timeouts = command_timeouts
        self._pool = ConnectionPool(idle_timeout, max_per_destination)
        self._max_per_destination = max_per_destination
        self._global_limit = asyncio.Semaphore(max_connections)
        self._destination_limits: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._tls_contexts: dict[tuple[str, str | None], ssl.SSLContext] = {}

    async def deliver(self, request: DeliveryRequest) -> AttemptResult:
        """Try the route's candidates in order until one takes the transaction; see the module
        docstring."""
        message = _Message(request)
        last_error = NO_CANDIDATES
        async with self._global_limit:
            for candidate in request.route.candidates:
                async with self._destination_limit(candidate):
                    try:
                        return await self._deliver_to(candidate, request.route.policy, message)
                    except _NextCandidate as failure:
                        last_error = failure.reply
        deferred = classify(last_error)
        return AttemptResult({index: deferred for index, _ in request.recipients}, None, None)

    async def close(self) -> None:
        await self._pool.close()

    def _destination_limit(self, candidate: Candidate) -> asyncio.Semaphore:
        """The semaphore bounding connections to one address and port (`async with` it)."""
        key = (candidate.address, candidate.port)
        limit = self._destination_limits.get(key)
        if limit is None:
            limit = self._destination_limits[key] = asyncio.Semaphore(self._max_per_destination)
        return limit

    async def _deliver_to(self, candidate: Candidate, policy: HopPolicy, message: _Message) -> AttemptResult:
        key = (candidate.address, candidate.port, policy)
        connection = self._pool.take(key)
        if connection is not None:
            try:
                return await self._run(key, candidate, connection, message, reused=True)
            except _StaleConnection:
                connection.abort()  # replaced once, transparently, by a fresh connection
        connection = await self._open(candidate, policy)
        return await self._run(key, candidate, connection, message, reused=False)

    async def _run(
        self,
        key: tuple[str, int, HopPolicy],
        candidate: Candidate,
        connection: SmtpConnection,
        message: _Message,
        *,
        reused: bool,
    ) -> AttemptResult:
        message.outcomes.clear()
        replies_before = connection.replies_received
        remote = f"dns; {candidate.host}"
        try:
            await self._transaction(connection, message, remote, reused=reused)
            await self._end_transaction(connection)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, PeerProtocolError) as error:
            connection.abort()
            if reused and connection.replies_received == replies_before:
                # Dead, or out of step (e.g. a 503 to MAIL): the connection's fault, not the
                # message's; retried once, transparently, on a fresh connection.
                raise _StaleConnection from error
            reply = _failure_reply(error, candidate, "during the transaction")
            for index, _ in message.request.recipients:
                message.outcomes.setdefault(index, classify(reply, remote))
        except BaseException:
            connection.abort()  # e.g. the body iterator failed: the connection is mid-DATA
            raise
        else:
            self._pool.put(key, connection)  # the pool takes it only if the protocol says REUSE
        return AttemptResult(dict(message.outcomes), candidate.host, connection.tls)

    async def _end_transaction(self, connection: SmtpConnection) -> None:
        """RSET when the protocol says a transaction may still be open (RFC 5321 §4.1.1.5). Every
        outcome is already known, so a failure here only closes the connection."""
        if connection.protocol.ending is not Ending.RESET:
            return
        try:
            await connection.command(Verb.RSET, "RSET", self._timeouts.mail)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, PeerProtocolError):
            connection.abort()

    async def _open(self, candidate: Candidate, policy: HopPolicy) -> SmtpConnection:
        source = policy.source_address6 if ":" in candidate.address else policy.source_address
        local = (source, 0) if source else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(candidate.address, candidate.port, local_addr=local),
                self._connect_timeout,
            )
        except ConnectionRefusedError:
            raise _NextCandidate(
                Reply(451, "4.4.1", f"connection refused by {candidate.address}:{candidate.port}")
            ) from None
        except (OSError, TimeoutError) as error:
            raise _NextCandidate(_failure_reply(error, candidate, "while connecting")) from None
        connection = SmtpConnection(candidate.host, reader, writer)
        try:
            await self._set_up(connection, candidate, policy)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, PeerProtocolError) as error:
            connection.abort()
            raise _NextCandidate(_failure_reply(error, candidate, "during session set-up")) from None
        except BaseException:
            connection.abort()
            raise
        return connection

    async def _set_up(self, connection: SmtpConnection, candidate: Candidate, policy: HopPolicy) -> None:
        """Greeting, EHLO (or HELO), STARTTLS as the policy says, EHLO again, AUTH."""
        greeting = await connection.next_reply(self._timeouts.greeting)
        if greeting.reply.code != 220:
            # RFC 5321 §3.1 and §5.1: a server refusing service is treated like an unreachable one.
            raise _NextCandidate(_refused(candidate, "greeted with", greeting.reply))
        await self._hello(connection, candidate, policy)
        offered = connection.extensions.has("STARTTLS")
        if policy.tls in ("encrypt", "verify") and not offered:
            text = f"{_name(candidate)} does not offer STARTTLS, required by policy {policy.tls}"
            raise _NextCandidate(Reply(451, "4.7.0", text))
        if policy.tls != "none" and offered:
            await self._start_tls(connection, candidate, policy)
        if policy.auth is not None:
            await self._authenticate(connection, candidate, policy.auth)

    async def _hello(self, connection: SmtpConnection, candidate: Candidate, policy: HopPolicy) -> None:
        ehlo = await connection.command(Verb.EHLO, f"EHLO {policy.helo_name}", self._timeouts.mail)
        if ehlo.reply.is_positive:
            connection.extensions = parse_ehlo(ehlo.reply)
            return
        if ehlo.reply.is_permanent and ehlo.reply.code != 421:
            # RFC 5321 §3.2: an old server that does not know EHLO; HELO gives no extensions.
            helo = await connection.command(Verb.HELO, f"HELO {policy.helo_name}", self._timeouts.mail)
            if helo.reply.is_positive:
                return
            raise _NextCandidate(_refused(candidate, "refused HELO with", helo.reply))
        raise _NextCandidate(_refused(candidate, "refused EHLO with", ehlo.reply))

    async def _start_tls(self, connection: SmtpConnection, candidate: Candidate, policy: HopPolicy) -> None:
        event = await connection.command(Verb.STARTTLS, "STARTTLS", self._timeouts.mail)
        if event.reply.code != 220:
            if policy.tls == "may" and connection.protocol.state is State.READY:
                return  # opportunistic: the session is still usable in clear text (not after 421)
            raise _NextCandidate(_refused(candidate, "refused STARTTLS with", event.reply, "4.7.0"))
        verify = policy.tls == "verify"
        context = self._tls_context(verify, policy.ca_file)
        # SNI and the name check use the candidate's host name (RFC 6125); for "may"/"encrypt"
        # SNI is still sent, but nothing is checked.
        try:
            await connection.start_tls(context, candidate.host, self._timeouts.mail)
        except ssl.SSLError as error:
            raise _NextCandidate(Reply(451, "4.7.5", f"TLS with {_name(candidate)} failed: {error}")) from None
        await self._hello(connection, candidate, policy)  # RFC 3207 §4.2: EHLO again after TLS

    def _tls_context(self, verify: bool, ca_file: str | None) -> ssl.SSLContext:
        key = ("verify" if verify else "encrypt", ca_file if verify else None)
        context = self._tls_contexts.get(key)
        if context is None:
            context = self._tls_contexts[key] = outbound_tls_context(verify, ca_file)
        return context

    async def _authenticate(self, connection: SmtpConnection, candidate: Candidate, auth: tuple[str, str]) -> None:
        """AUTH PLAIN (RFC 4616) or LOGIN, never without TLS (SPEC R4, RFC 4954 §4)."""
        if connection.tls is None:
            # RFC 5248 / RFC 4954 §6: X.7.11 encryption required for the mechanism.
            raise _NextCandidate(Reply(451, "4.7.11", f"refusing AUTH to {_name(candidate)} without TLS"))
        user, password = auth
        mechanisms = connection.extensions.auth_mechanisms
        timeout = self._timeouts.mail
        if "PLAIN" in mechanisms:
            token = _b64(f"\0{user}\0{password}")
            event = await connection.command(Verb.AUTH, f"AUTH PLAIN {token}", timeout)
        elif "LOGIN" in mechanisms:
            event = await connection.command(Verb.AUTH, "AUTH LOGIN", timeout)
            for secret in (user, password):
                if event.reply.code != 334:
                    break
                event = await connection.command(Verb.AUTH_RESPONSE, _b64(secret), timeout)
        else:
            raise _NextCandidate(Reply(451, "4.7.0", f"{_name(candidate)} offers neither AUTH PLAIN nor LOGIN"))
        if event.reply.code != 235:
            raise _NextCandidate(_refused(candidate, "refused AUTH with", event.reply, "4.7.8"))

    async def _transaction(self, connection: SmtpConnection, message: _Message, remote: str, *, reused: bool) -> None:
        """MAIL, RCPT for every recipient, DATA and the body; fills `message.outcomes`. What is
        sent next, and whether anything may be, is the protocol's call: it refuses a body after a
        refused MAIL or with no recipient accepted, and raises `OutOfStepError` for a reply that
        does not fit (both end up as a deferral and a closed connection in `_run`)."""
        extensions = connection.extensions
        if message.request.smtputf8 and not extensions.has("SMTPUTF8"):
            return self._fail_all(message, NEEDS_SMTPUTF8, remote)  # RFC 6531 §3.7.5
        limit = extensions.size_limit
        if limit is not None and message.request.size > limit:
            # RFC 1870 §6.1: 552 5.3.4, decided here without sending the message.
            text = f"Message of {message.request.size} octets exceeds the {limit} octet limit of {connection.host}"
            return self._fail_all(message, MESSAGE_TOO_BIG.with_text(text), remote)
        utf8 = message.request.smtputf8
        mail_line = mail_command(
            message.request.sender,
            extensions,
            size=message.request.size,
            eight_bit=message.request.eight_bit,
            smtputf8=utf8,
            ret=message.request.ret,
            envid=message.request.envid,
        )
        connection.queue_command(Verb.MAIL, mail_line, utf8=utf8)
        lines = [rcpt_command(recipient, extensions) for _, recipient in message.request.recipients]
        pipelined = extensions.has("PIPELINING")
        if pipelined:
            for line in lines:  # RFC 2920 §3.1: MAIL, RCPTs and DATA in one write
                connection.queue_command(Verb.RCPT, line, utf8=utf8)
            connection.queue_command(Verb.DATA, "DATA")
        await connection.flush(self._timeouts.mail)
        mail = (await connection.next_reply(self._timeouts.mail)).reply
        if reused and mail.code == 421:
            raise _StaleConnection  # the server timed the idle connection out (RFC 5321 §3.8)
        accepted = await self._recipients(connection, message, lines, mail, remote)
        if connection.protocol.state is State.CLOSED and not accepted:
            return None  # a 421 ended the session; every recipient already has its outcome
        if pipelined:
            data = (await connection.next_reply(self._timeouts.data_initiation)).reply
        elif accepted:
            data = (await connection.command(Verb.DATA, "DATA", self._timeouts.data_initiation)).reply
        else:
            return None  # nothing to send: `_end_transaction` resets (RFC 5321 §4.1.1.5)
        if data.code != 354:
            for index in accepted:
                message.outcomes[index] = classify(data, remote)
            return None
        final = await self._send_body(connection, message)
        for index in accepted:
            message.outcomes[index] = classify(final, remote)
        return None

    async def _recipients(
        self, connection: SmtpConnection, message: _Message, lines: list[str], mail: Reply, remote: str
    ) -> list[int]:
        """Per-recipient RCPT results; the indexes accepted. A refused MAIL refuses them all."""
        pipelined = connection.extensions.has("PIPELINING")
        # A refused MAIL answers for every recipient (the 503s behind it are not theirs to carry);
        # so does a 421, after which the server reads nothing more (RFC 5321 §3.8).
        verdict = None if mail.is_positive else mail
        accepted = []
        for (index, _), line in zip(message.request.recipients, lines):
            reply = verdict
            if pipelined and (verdict is None or verdict.code != 421):
                answer = (await connection.next_reply(self._timeouts.rcpt)).reply  # read even if moot
                reply = verdict or answer
            elif verdict is None:
                reply = (await connection.command(Verb.RCPT, line, self._timeouts.rcpt, utf8=message.request.smtputf8)).reply
            if reply.code == 421:
                verdict = reply
            if reply.is_positive:
                accepted.append(index)
            else:
                message.outcomes[index] = classify(reply if reply is verdict else _as_rcpt_refusal(reply), remote)
        if verdict is not None and verdict.code == 421:
            for index in accepted:
                message.outcomes[index] = classify(verdict, remote)
            return []
        return accepted

    async def _send_body(self, connection: SmtpConnection, message: _Message) -> Reply:
        # RFC 5322 §2.1.1 / RFC 5321 §4.5.3.1.6: lines over 998 octets, accepted at reception
        # (server.long_lines = "wrap"), are broken here, before the line endings are made CRLF.
        wrapper = LineWrapper()
        crlf_clean = message.request.crlf_clean
        async for chunk in message.request.body():
            connection.queue_bytes(connection.protocol.body(wrapper.feed(chunk), crlf_clean=crlf_clean))
            if len(chunk) >= BODY_FLUSH_SIZE:  # small messages go out with the final dot
                await connection.flush(self._timeouts.data_block)
        connection.queue_bytes(connection.protocol.body(wrapper.finish(), crlf_clean=crlf_clean))
        connection.queue_bytes(connection.protocol.end_of_data())
        await connection.flush(self._timeouts.data_block)
        return (await connection.next_reply(self._timeouts.data_termination)).reply

    @staticmethod
    def _fail_all(message: _Message, reply: Reply, remote: str) -> None:
        for index, _ in message.request.recipients:
            message.outcomes[index] = classify(reply, remote)


# TLS 1.2 suites offered to next hops, in this order: forward-secret AEAD first; then forward-secret
# CBC with SHA-2 for old receivers. Outbound TLS is mostly opportunistic (RFC 7435, tls = "may"): a
# handshake that fails for want of a common suite leaves the mail in clear text or deferred, both
# worse than CBC with ECDHE. Static RSA, SHA-1 MACs, 3DES and RC4 are never offered (RFC 9325 §4.1).
OUTBOUND_TLS12_SUITES = (
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
)


def outbound_tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """The client context for STARTTLS to a next hop; `verify` checks the certificate and name."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # SPEC §5: TLS 1.2 and newer
    context.set_ciphers(OUTBOUND_TLS12_SUITES)
    if verify and ca_file:
        context.load_verify_locations(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _as_rcpt_refusal(reply: Reply) -> Reply:
    """RFC 5321 §4.5.3.1.10: clients treat a 552 to RCPT (the old "too many recipients") as the
    temporary 452 it stands for."""
    if reply.code != 552:
        return reply
    return Reply(452, "4" + reply.enhanced[1:] if reply.enhanced else "", reply.text)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _name(candidate: Candidate) -> str:
    return f"{candidate.host} [{candidate.address}]:{candidate.port}"


def _refused(candidate: Candidate, what: str, reply: Reply, enhanced: str = "4.4.0") -> Reply:
    """A 4yz reply naming the host and what it said (RFC 3463 X.4.0: other network problem)."""
    return Reply(451, enhanced, f"{_name(candidate)} {what}: {reply}")


def _failure_reply(error: BaseException, candidate: Candidate, stage: str) -> Reply:
    if isinstance(error, TimeoutError):
        return Reply(451, "4.4.2", f"timeout with {_name(candidate)} {stage}")
    if isinstance(error, PeerProtocolError):
        return Reply(451, "4.5.0", f"protocol error from {_name(candidate)} {stage}: {error}")
    if isinstance(error, asyncio.IncompleteReadError):
        return Reply(451, "4.4.2", f"connection closed by {_name(candidate)} {stage}")
    return Reply(451, "4.4.1", f"connection to {_name(candidate)} failed {stage}: {error}")
