"""One SMTP session: drives the sans-IO protocol over a connection and answers its events.

Owns: the read/write loop (large reads, replies batched until the next read, so a pipelined
client gets its replies in one write, RFC 2920), the command and data time-outs (RFC 5321
§4.5.3.2.7), STARTTLS on the stream, and the answer to each event: policy for the client, sender
and recipients, rate limits and disk back-pressure at MAIL, AUTH (through authentication.py), and
the message itself: spooled as it arrives, screened (screening.py), and answered 250 only after
the durable commit (ARCHITECTURE.md steps 1-7); every command and decision goes to the
transaction log. Must not: parse SMTP (smtp/server.py), decide relaying (policy/) or write the
queue other than through the store interface. Longer than the 400-line guide because each event's
answer is short and they read best side by side.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mailgate.auth.lockout import address_key
from mailgate.auth.message import QUARANTINE, Origin
from mailgate.core.envelope import Envelope, Ret
from mailgate.core.read_deadline import ReadDeadline
from mailgate.core.reply import (
    AUTH_FAILED, AUTH_REQUIRED, CANNOT_VRFY, CLOSING, HELP, INSUFFICIENT_STORAGE, LOCAL_ERROR,
    LOOP_DETECTED, MESSAGE_TOO_BIG, NOOP_OK, RATE_LIMITED, READY_TLS, RESET_OK, SCANNER_UNAVAILABLE,
    SENDER_OK, SHUTTING_DOWN, START_DATA, TIMEOUT, TOO_MANY_RECIPIENTS, Reply, bdat_chunk_ok, queued,
)
from mailgate.dns.dnsbl import dnsbl_listed
from mailgate.observe.translog import new_session_id
from mailgate.policy.limits import RateDecision, Reservation
from mailgate.policy.relay import Client
from mailgate.queue.store import MessageMeta, MessageWriter, QueuedMessage, out_of_space
from mailgate.screen import ScreenContext
from mailgate.server import command_log, message_auth
from mailgate.server.authentication import Authentication
from mailgate.server.context import ListenerProfile, Reception
from mailgate.server.drain import Drain
from mailgate.server.line_rules import KEEP, REJECT
from mailgate.server.message_head import HeadBuilder, received_header
from mailgate.server.screening import Screened, screen_message
from mailgate.server.tls import describe
from mailgate.smtp import events as ev
from mailgate.smtp.server import Mode, ServerProtocol, ServerSettings

log = logging.getLogger("mailgate.smtp")

READ_SIZE = 256 * 1024
# RFC 5321 §2.3.8 / SMTP smuggling: under server.bare_newline = "reject", a message holding a
# bare CR or LF is refused whole.
BARE_LINE_ENDING_IN_MESSAGE = Reply(550, "5.5.2", "Message refused: bare CR or LF in message data")
# RFC 5322 §2.1.1: lines are limited to 998 characters plus CRLF (server.long_lines = "refuse").
LONG_LINE_IN_MESSAGE = Reply(550, "5.6.0", "Message refused: a line exceeds 998 characters")
# While a message streams in, free space is measured again after this many bytes (DiskGuard.room_now).
DISK_CHECK_BYTES = 1024 * 1024
# Why a session ended, for the events that end it (the transaction log's close reason).
_CLOSE_REASONS = {ev.Quit: "quit", ev.TooManyErrors: "errors", ev.FramingLost: "framing"}


class _Transaction:
    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.writer: MessageWriter | None = None
        self.head: HeadBuilder | None = None
        self.rule = ""  # the relay rule that permitted the first recipient, for the logs
        self.rewritten = False  # the screener replaced the message (strip, tag, added headers)
        self.bare_kept = False  # bare CR or LF stored as received (server.bare_newline = "no")
        self.data_deadline = 0.0  # time.monotonic() by which the data must be complete
        self.reservation: Reservation | None = None  # counted against the message rates at MAIL
        # Storing failed (write error, or the spool went below the soft threshold while the data
        # streamed in): the rest of the data is read and dropped, then answered with this reply.
        self.storage_refusal: Reply | None = None
        self.unchecked_bytes = 0  # written since free space was last measured


class Session:
    def __init__(
        self, reception: Reception, profile: ListenerProfile, reader, writer, client_address: str | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.reception = reception
        self.drain = drain or Drain()  # the listener's: a stop cuts this session when it is quiet
        self._handshaking = False  # in the STARTTLS handshake: nothing can be said in clear text
        self.profile = profile
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        # A PROXY header (listener.py) names the real client; otherwise the socket's peer.
        address = ipaddress.ip_address((client_address or str(peer[0])).split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        self.client_address = address
        self.client_ip = str(address)  # formatted once: the logs, the header and the keys use it
        self.helo = ""
        self.auth_user: str | None = None
        self._client: Client | None = None
        self.tls = describe(writer.get_extra_info("ssl_object"))
        self.transaction: _Transaction | None = None
        self.authentication: Authentication | None = None
        self.out = bytearray()
        self.protocol = ServerProtocol(self._settings())
        self.log = reception.events
        self.session_id = new_session_id()
        self.close_reason = "dropped"

    def _settings(self) -> ServerSettings:
        profile = self.profile
        tls_active = bool(self.tls)
        return ServerSettings(
            hostname=self.reception.hostname,
            max_message_size=profile.max_message_size,
            starttls_offered=profile.tls_mode == "starttls" and profile.tls_context is not None,
            tls_active=tls_active,
            auth_mechanisms=("PLAIN", "LOGIN") if profile.auth != "none" else (),
            error_budget=profile.error_budget,
            postmaster_domain=self.reception.postmaster_domain,
            bare_line_endings=self.reception.lines.bare_newline_for(
                self.client_address, self.reception.policy.is_trusted(self.client)
            ),
        )

    @property
    def client(self) -> Client:
        """The client as policy sees it, made again only after HELO, AUTH or STARTTLS changed it
        (policy asks several times per message)."""
        client, tls = self._client, bool(self.tls)
        if client is None or client.helo != self.helo or client.auth_user != self.auth_user or client.tls != tls:
            client = self._client = Client(self.client_address, self.helo, self.auth_user, tls)
        return client

    async def run(self) -> None:
        peer = self.writer.get_extra_info("peername") or ("", 0)
        local = self.writer.get_extra_info("sockname") or ("", 0)
        opened = False
        try:
            if not await self._admit():
                return
            self.log.connection_opened(
                self.session_id, self.client_ip, peer[1], self.profile.name, str(local[0]), local[1]
            )
            opened = True
            await self._loop()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("session with %s ended: %s", self.client_ip, exc)
        except asyncio.CancelledError:
            # The listener stops (drain.py): say so where the connection can still carry it.
            self.close_reason = "shutdown"
            if opened and not self._handshaking:
                self.writer.write(bytes(self.out) + SHUTTING_DOWN.encode())
            raise
        finally:
            self._discard()
            self.writer.close()
            if opened:
                self.log.connection_closed(self.session_id, self.close_reason)

    async def _admit(self) -> bool:
        """Connection-time checks (client block list, DNSBL), then the greeting."""
        decision = self.reception.policy.check_client(self.client)
        refusal = None if decision.permitted else decision.reply
        if refusal is None and self.reception.dnsbl_zones:
            listed = await dnsbl_listed(
                self.reception.resolver, self.client_ip, list(self.reception.dnsbl_zones)
            )
            if listed:
                zone, reason = listed
                # RFC 5321 §3.1: 554 greeting, then the session ends.
                refusal = Reply(554, "5.7.1", f"Client {self.client_ip} listed by {zone}" + (f": {reason}" if reason else ""))
        if refusal is not None:
            log.info("refused connection from %s: %s", self.client_ip, refusal)
            peer = self.writer.get_extra_info("peername") or ("", 0)
            reason = "blocklist" if not decision.permitted else "dnsbl"
            self.log.connection_refused(self.client_ip, peer[1], self.profile.name, reason, refusal)
            self.writer.write(refusal.encode())
            await self.writer.drain()
            return False
        # RFC 5321 §4.2: the greeting has no enhanced status code.
        self.writer.write(f"220 {self.reception.hostname} ESMTP mailgate\r\n".encode())
        await self.writer.drain()
        return True

    async def _loop(self) -> None:
        deadline = ReadDeadline()
        try:
            await self._serve(deadline)
        finally:
            deadline.close()

    async def _serve(self, deadline: ReadDeadline) -> None:
        protocol = self.protocol
        task = asyncio.current_task()
        while True:
            event = protocol.next_event()
            if isinstance(event, ev.NeedData):
                quiet = self.transaction is None  # between transactions: a stop may cut it now
                if quiet and self.drain.stopping:
                    self.out += SHUTTING_DOWN.encode()  # RFC 5321 §3.8: 421, then close
                    await self._flush()
                    self.close_reason = "shutdown"
                    return
                await self._flush()
                if quiet:
                    self.drain.quiet(task)
                try:
                    data = await deadline.read(self.reader, READ_SIZE, self._read_timeout())
                except TimeoutError:
                    self.out += TIMEOUT.encode()
                    await self._flush()
                    self.close_reason = "timeout"
                    return
                finally:
                    self.drain.busy(task)
                protocol.receive_data(data)
                continue
            if isinstance(event, ev.Closed):
                await self._flush()
                self.close_reason = "dropped"
                return
            if isinstance(event, ev.BodyChunk):
                self._body(event.data)
                continue
            started = time.monotonic()
            queue_id = self.transaction.writer.queue_id if self.transaction and self.transaction.writer else ""
            reply = await self._answer(event)
            encoded = protocol.send(reply)
            self.out += encoded
            if isinstance(event, ev.MessageEnd):
                await self._flush()  # the client waits for this one: its records can wait instead
                self.reception.cpu_handover.after_end_of_data_reply()  # a local client reads it first
            self._log_command(event, reply, len(encoded), started, queue_id)
            if protocol.mode is Mode.CLOSED:  # Quit, TooManyErrors, FramingLost
                await self._flush()
                self.close_reason = _CLOSE_REASONS[type(event)]
                return
            if protocol.mode is Mode.TLS_PENDING:  # 220 to STARTTLS
                await self._flush()
                self._handshaking = True
                self.drain.quiet(task)  # no transaction yet: a stop closes it at once
                try:
                    await self.writer.start_tls(self.profile.tls_context, ssl_handshake_timeout=self.profile.handshake_timeout)
                finally:
                    self.drain.busy(task)
                self._handshaking = False
                self.tls = describe(self.writer.get_extra_info("ssl_object"))
                self.helo, self.auth_user = "", None
                protocol.start_tls_done()

    def _read_timeout(self) -> float:
        """command_timeout between commands; within a message's data, data_timeout per read and
        data_deadline for all of it (a sender trickling a byte per data_timeout is cut too)."""
        transaction = self.transaction
        if transaction is None or transaction.head is None:
            return self.profile.command_timeout
        return max(0.0, min(self.profile.data_timeout, transaction.data_deadline - time.monotonic()))

    def _log_command(self, event: ev.Event, reply: Reply, bytes_out: int, started: float, queue_id: str) -> None:
        described = command_log.describe(event, queue_id if reply.code == 250 else "")
        if described is not None:
            verb, argument, bytes_in = described
            elapsed_ms = int((time.monotonic() - started) * 1000)
            self.log.command(self.session_id, verb, argument, reply.code, bytes_in, bytes_out, elapsed_ms, helo=self.helo)

    async def _flush(self) -> None:
        if self.out:
            self.writer.write(bytes(self.out))
            self.out.clear()
            await self.writer.drain()

    async def _answer(self, event: ev.Event) -> Reply:
        """The reply to one event (`ANSWERS`); the protocol encodes it and moves its state."""
        answer = ANSWERS[type(event)]
        return answer if isinstance(answer, Reply) else await answer(self, event)

    async def _protocol_decided(self, event: ev.ProtocolError | ev.TooManyErrors | ev.FramingLost) -> Reply:
        return event.reply

    async def _hello(self, event: ev.Hello) -> Reply:
        self.helo = event.name
        self._discard()
        return Reply(250, "", "at your service")

    async def _data_start(self, event: ev.DataStart) -> Reply:
        if self.reception.disk is not None and not self.reception.disk.accepting_mail:
            return INSUFFICIENT_STORAGE  # 452 4.3.1: the spool filled up since MAIL
        self._open_message()
        return START_DATA

    async def _bdat_chunk(self, event: ev.BdatChunkEnd) -> Reply:
        if event.oversize:
            self._discard()
            return MESSAGE_TOO_BIG
        if self.transaction is not None and self.transaction.storage_refusal is not None:
            return self._refuse(self.transaction, self.transaction.storage_refusal, "disk")  # RFC 3030 §2
        self._open_message()
        return bdat_chunk_ok(event.size)

    async def _reset(self, event: ev.Reset) -> Reply:
        self._discard()
        return RESET_OK

    # --- transaction ---------------------------------------------------------------------------
    async def _mail(self, event: ev.MailFrom) -> Reply:
        if self.profile.auth == "required" and self.auth_user is None:
            return AUTH_REQUIRED  # RFC 4954 §6: 530 5.7.0
        refusal = self._limits_refusal(event.size or 0)
        if refusal is not None:
            return refusal
        reservation = self._reserve_message()
        if isinstance(reservation, Reply):
            return reservation
        decision = self.reception.policy.check_sender(self.client, event.sender)
        if not decision.permitted:
            if reservation is not None:
                reservation.release(self.reception.clock.now())
            log.info("refused sender <%s> from %s by %s: %s", _text(event.sender), self.client_ip, decision.rule, decision.reply)
            self.log.transaction_refused(self.session_id, "mail", decision.reply, decision.rule, sender=_text(event.sender))
            return decision.reply
        self._discard()
        self.transaction = _Transaction(
            Envelope(
                sender=event.sender, body=event.body, smtputf8=event.smtputf8,
                size_declared=event.size, ret=self._returned_content(event.ret), envid=event.envid,
            )
        )
        self.transaction.reservation = reservation
        return SENDER_OK

    def _returned_content(self, ret: Ret | None) -> Ret | None:
        """RET (RFC 3461 §4.3) as kept: an outsider's RET=FULL becomes HDRS, so no DSN of ours, or
        of a next hop it is passed on to, ever carries an outsider's content to the (possibly
        forged) sender: backscatter returns headers at most (RFC 3461 §4.3 lets the MTA do so)."""
        if ret is Ret.FULL and not self._internal():
            log.info("RET=FULL from untrusted client %s kept as RET=HDRS", self.client_ip)
            return Ret.HDRS
        return ret

    def _internal(self) -> bool:
        """A trusted network or an authenticated user (mail that is signed, keeps RET=FULL)."""
        return self.auth_user is not None or self.reception.policy.is_trusted(self.client)

    def _limits_refusal(self, declared_size: int) -> Reply | None:
        """Disk back-pressure (452 4.3.1) at MAIL."""
        reception = self.reception
        if reception.disk is not None and not reception.disk.room_for(declared_size):
            self.log.transaction_refused(self.session_id, "mail", INSUFFICIENT_STORAGE, "disk")
            return INSUFFICIENT_STORAGE  # RFC 3463 §3.4: 4.3.1 mail system full
        return None

    def _reserve_message(self) -> Reservation | Reply | None:
        """Message rates at MAIL: the message counts from now on (released by `_discard` unless
        it is accepted), or 450 4.7.1 when a limit is reached; None when no limit is on."""
        reception = self.reception
        if reception.rate_limits is None:
            return None
        reserved = reception.rate_limits.reserve(self._rate_key(), self.auth_user, reception.clock.now())
        if isinstance(reserved, RateDecision):
            self.log.transaction_refused(self.session_id, "mail", RATE_LIMITED, reserved.rule)
            return RATE_LIMITED  # 450 4.7.1
        return reserved

    def _rate_key(self) -> str | None:
        """The per-client rate key; trusted networks are not limited per address."""
        if self.reception.policy.is_trusted(self.client):
            return None
        return address_key(self.client_address)

    async def _rcpt(self, event: ev.RcptTo) -> Reply:
        transaction = self.transaction
        assert transaction is not None  # the protocol only sends RCPT inside a transaction
        if len(transaction.envelope.recipients) >= self.reception.max_recipients:
            return TOO_MANY_RECIPIENTS  # RFC 5321 §4.5.3.1.8: 452
        address = event.recipient.address
        decision = self.reception.policy.check_recipient(self.client, transaction.envelope.sender, address)
        reply, rule, permitted = decision.reply, decision.rule, decision.permitted
        if permitted and self.reception.recipients is not None:
            hosted = self.reception.policy.hosted_name(address)
            verdict = await self.reception.recipients.check(hosted, str(address)) if hosted else None
            for lookup in verdict.lookups if verdict else ():
                self.log.recipient_lookup(self.session_id, str(address), lookup.source, lookup.status.value, lookup.cached)
            if verdict is not None and verdict.reply is not None:
                reply, rule, permitted = verdict.reply, verdict.rule, False
        log.info(
            "%s <%s> -> <%s> client=%s rule=%s reply=%s",
            "accepted" if permitted else "refused", _text(transaction.envelope.sender),
            address, self.client_ip, rule, reply.code,
        )
        if permitted:
            transaction.envelope.recipients.append(event.recipient)
            transaction.rule = transaction.rule or rule
        else:
            self.log.transaction_refused(
                self.session_id, "rcpt", reply, rule,
                sender=_text(transaction.envelope.sender), recipient=str(address),
            )
        return reply

    def _open_message(self) -> None:
        transaction = self.transaction
        if transaction is None or transaction.writer is not None or transaction.storage_refusal:
            return
        transaction.writer = self.reception.store.begin()
        transaction.data_deadline = time.monotonic() + self.profile.data_deadline
        transaction.head = HeadBuilder(
            add_message_id_and_date=self.profile.profile != "mx",
            hostname=self.reception.hostname,
            queue_id=transaction.writer.queue_id,
        )

    def _body(self, data: bytes) -> None:
        self._open_message()
        transaction = self.transaction
        if transaction is None or transaction.head is None or transaction.writer is None:
            return
        if transaction.head.done:
            self._store(transaction, data)
            return
        rest = transaction.head.feed(data)
        if transaction.head.done:
            self._store(transaction, self._head_bytes(transaction), rest)  # not joined: no copy

    def _store(self, transaction: _Transaction, *pieces: bytes) -> None:
        """Spool bytes of the message; on a write error, or once the spool is below the soft
        threshold (measured about once per MiB), the message is dropped (its spill file removed)
        and the rest of its data read and thrown away, so the framing holds and the end of data
        gets 452 4.3.1 (RFC 3463 §3.4 "mail system full"; RFC 5321 §4.2.2), not a dead session."""
        assert transaction.writer is not None
        try:
            for piece in pieces:
                transaction.writer.write(piece)
        except OSError as exc:
            self._storage_failed(transaction, f"write error: {exc}")
            return
        transaction.unchecked_bytes += sum(map(len, pieces))
        disk = self.reception.disk
        if disk is not None and transaction.unchecked_bytes >= DISK_CHECK_BYTES:
            transaction.unchecked_bytes = 0
            if not disk.room_now():
                self._storage_failed(transaction, "spool below the soft free-space threshold")

    def _storage_failed(self, transaction: _Transaction, why: str) -> None:
        log.warning("dropping message from %s while it streams in: %s", self.client_ip, why)
        if transaction.writer is not None:
            transaction.writer.discard()
            transaction.writer = None
        transaction.storage_refusal = INSUFFICIENT_STORAGE

    def _head_bytes(self, transaction: _Transaction) -> bytes:
        assert transaction.head is not None and transaction.writer is not None
        recipients = transaction.envelope.recipients
        trace = received_header(
            helo=self.helo,
            client_address=self.client_ip,
            hostname=self.reception.hostname,
            protocol=self._protocol_name(transaction),
            queue_id=transaction.writer.queue_id,
            tls=self.tls,
            user=self.auth_user if self.reception.received_shows_user else None,
            recipient=str(recipients[0].address) if len(recipients) == 1 else None,
        )
        return trace + transaction.head.completed_head()

    def _protocol_name(self, transaction: _Transaction) -> str:
        # RFC 3848: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA (both); RFC 6531 §3.7.3: UTF8SMTP
        # in place of ESMTP when the transaction used SMTPUTF8 (UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA).
        base = "UTF8SMTP" if transaction.envelope.smtputf8 else "ESMTP"
        return base + ("S" if self.tls else "") + ("A" if self.auth_user else "")

    async def _end_of_message(self, event: ev.MessageEnd) -> Reply:
        transaction = self.transaction
        if transaction is None:
            return LOCAL_ERROR
        self._open_message()
        refusal, reason = None, ""
        if transaction.storage_refusal is not None:
            refusal, reason = transaction.storage_refusal, "disk"
        elif event.oversize:
            refusal, reason = MESSAGE_TOO_BIG, "size"  # RFC 1870 §6 / RFC 5321 §4.5.3.1.7
        elif event.bare_line_ending and self.protocol.settings.bare_line_endings == REJECT:
            refusal, reason = BARE_LINE_ENDING_IN_MESSAGE, "bare_lf"
        elif event.long_line and self.reception.lines.refuse_long_lines:
            refusal, reason = LONG_LINE_IN_MESSAGE, "long_line"
        else:
            if event.bare_line_ending:
                mode = self.protocol.settings.bare_line_endings
                transaction.bare_kept = mode == KEEP
                log.info("bare CR or LF in message data from %s (bare_newline %s)", self.client_ip, mode)
            assert transaction.head is not None and transaction.writer is not None
            if not transaction.head.done:
                transaction.head.finish()
                self._store(transaction, self._head_bytes(transaction))
            if transaction.storage_refusal is not None:
                refusal, reason = transaction.storage_refusal, "disk"
            elif transaction.head.received_count > self.reception.received_limit:
                refusal, reason = LOOP_DETECTED, "loop"  # RFC 5321 §6.3: 554 5.4.6
        if refusal is not None:
            log.info("refused message from %s: %s", self.client_ip, refusal)
            self.log.transaction_refused(self.session_id, "data", refusal, reason, sender=_text(transaction.envelope.sender))
            self._discard()
            return refusal
        authenticator = self.reception.authenticator
        origin = verdict = None
        if authenticator is not None:
            origin = self._origin(transaction)
            verdict = await message_auth.check_inbound(authenticator, origin, transaction.writer)
            if verdict.reply is not None:
                return self._refuse(transaction, verdict.reply, verdict.rule)
        hold_reason = ""
        if self.reception.screener is not None:
            refusal, hold_reason = await self._screen(transaction)
            if refusal is not None:
                return refusal
        if authenticator is not None and origin is not None and verdict is not None:
            try:  # DKIM signing and Authentication-Results come after the screener (docs/flow.md)
                transaction.writer = await message_auth.finish(
                    authenticator, self.reception.store, origin, verdict, transaction.writer
                )
            except Exception as exc:
                if out_of_space(exc):  # the signed copy did not fit: 452 4.3.1, as for the data
                    return self._refuse(transaction, INSUFFICIENT_STORAGE, "disk")
                log.exception("message authentication failed")
                return self._refuse(transaction, LOCAL_ERROR, "authentication")
            hold_reason = hold_reason or (verdict.reason if verdict.action == QUARANTINE else "")
        return await self._commit(transaction, hold_reason)

    def _origin(self, transaction: _Transaction) -> Origin:
        """Mail from a trusted network or an authenticated user is signed; the rest is checked."""
        return Origin(self.client_ip, self.helo, _text(transaction.envelope.sender), self._internal())

    def _refuse(self, transaction: _Transaction, reply: Reply, rule: str) -> Reply:
        log.info("refused message from %s by %s: %s", self.client_ip, rule, reply)
        self.log.transaction_refused(self.session_id, "data", reply, rule, sender=_text(transaction.envelope.sender))
        self._discard()
        return reply

    async def _screen(self, transaction: _Transaction) -> tuple[Reply | None, str]:
        """Run the screener (ARCHITECTURE.md step 6); a failing scanner is a tempfail, never a 250."""
        assert transaction.writer is not None
        envelope = transaction.envelope
        context = ScreenContext(
            direction=self._direction(transaction), sender=_text(envelope.sender),
            recipients=[str(r.address) for r in envelope.recipients], client_address=self.client_ip,
            helo=self.helo, auth_user=self.auth_user,
        )
        try:
            screened = await screen_message(self.reception.screener, self.reception.store, context, transaction.writer)
        except Exception as exc:
            if out_of_space(exc):  # the rewritten copy did not fit: 452 4.3.1, as for the data
                screened = Screened(INSUFFICIENT_STORAGE, transaction.writer, rule="disk")
            else:
                log.exception("screening failed")
                screened = Screened(SCANNER_UNAVAILABLE, transaction.writer, rule="screener")
        transaction.rewritten = screened.writer is not transaction.writer
        transaction.writer = screened.writer
        if screened.refusal is not None:
            self.log.transaction_refused(
                self.session_id, "data", screened.refusal, screened.rule or "screener", sender=context.sender
            )
            self._discard()
            return screened.refusal, ""
        if screened.rule:
            transaction.rule = f"{transaction.rule} screen:{screened.rule}"
        return None, screened.hold_reason

    async def _commit(self, transaction: _Transaction, hold_reason: str = "") -> Reply:
        assert transaction.writer is not None
        meta = MessageMeta(
            client_address=self.client_ip,
            client_helo=self.helo,
            auth_user=self.auth_user or "",
            protocol=self._protocol_name(transaction),
            listener=self.profile.name,
            direction=self._direction(transaction),
            received_count=transaction.head.received_count if transaction.head else 0,
            hold_reason=hold_reason,
            # Reception normalized or refused bare CR/LF, unless bare_newline = "no" kept them; a
            # copy the screener rewrote is checked on delivery too.
            crlf_clean=not (transaction.rewritten or transaction.bare_kept),
        )
        started = time.monotonic()
        delivery = self.reception.delivery
        # A message this worker can deliver at once is committed already leased to it and handed
        # to its runner in memory; otherwise it waits in the queue for a runner to claim it.
        message = None
        handed_off = not hold_reason and delivery.reserve()
        try:
            if handed_off:
                message = await self.reception.store.commit_claimed(transaction.writer, transaction.envelope, meta)
                queue_id = message.queue_id
            else:
                queue_id = await self.reception.store.commit(transaction.writer, transaction.envelope, meta)
        except BaseException as exc:
            if handed_off:
                delivery.cancel()
            if not isinstance(exc, Exception):
                raise
            self._discard()
            if out_of_space(exc):  # RFC 3463 §3.4 4.3.1 "mail system full": 452, not 451
                log.warning("commit failed, spool full: %s", exc)
                self.log.transaction_refused(self.session_id, "data", INSUFFICIENT_STORAGE, "disk", sender=_text(transaction.envelope.sender))
                return INSUFFICIENT_STORAGE
            log.exception("commit failed")
            self.log.transaction_refused(self.session_id, "data", LOCAL_ERROR, "commit", sender=_text(transaction.envelope.sender))
            return LOCAL_ERROR  # RFC 5321 §4.2.2: 451, the client keeps the message
        self.transaction = None  # accepted: its rate reservation stays counted
        # The 250 goes out first: the hand-off and the records run as soon as this task yields,
        # which it does only after writing the reply (acceptance latency, docs/performance.md).
        asyncio.get_running_loop().call_soon(
            self._accepted, transaction, meta, queue_id, message, time.monotonic() - started,
            self.tls, self.auth_user or "", self.helo,
        )
        return queued(queue_id)

    def _accepted(
        self, transaction: _Transaction, meta: MessageMeta, queue_id: str, message: QueuedMessage | None,
        elapsed: float, tls: str, auth_user: str, helo: str,
    ) -> None:
        """After a commit: delivery first (a leased message must reach its runner), then the logs."""
        if message is not None:
            self.reception.delivery.hand_off(message)
        else:
            self.reception.delivery.wake()
        assert transaction.writer is not None
        envelope = transaction.envelope
        self.log.transaction_accepted(
            self.session_id, queue_id, _text(envelope.sender), [str(r.address) for r in envelope.recipients],
            transaction.writer.size, transaction.rule, tls=tls, auth_user=auth_user, direction=meta.direction,
            helo=helo, elapsed=elapsed, message_id=transaction.head.message_id if transaction.head else "",
        )
        log.info(
            "queued %s from <%s> for %d recipient(s) size=%d client=%s",
            queue_id, _text(envelope.sender), len(envelope.recipients), transaction.writer.size, self.client_ip,
        )

    def _direction(self, transaction: _Transaction) -> str:
        directions = {self.reception.policy.direction(self.client, r.address) for r in transaction.envelope.recipients}
        return "outbound" if "outbound" in directions else "inbound"

    def _discard(self) -> None:
        """End the transaction without a 250: its spool data and its rate reservation go."""
        transaction = self.transaction
        if transaction is not None:
            if transaction.writer is not None:
                transaction.writer.discard()
            if transaction.reservation is not None:
                transaction.reservation.release(self.reception.clock.now())
        self.transaction = None

    # --- AUTH (RFC 4954) -----------------------------------------------------------------------
    async def _auth_start(self, event: ev.AuthStart) -> Reply:
        self.authentication = Authentication(self.reception.users, self.reception.lockout, self.client_ip)
        return await self._auth_result(await self.authentication.start(event.mechanism, event.initial_response))

    async def _auth_line(self, event: ev.AuthLine) -> Reply:
        if self.authentication is None:
            return AUTH_FAILED
        return await self._auth_result(await self.authentication.step(event.text))

    async def _auth_result(self, reply: Reply) -> Reply:
        if self.authentication is not None and self.authentication.user is not None:
            self.auth_user = self.authentication.user
        if reply.code != 334:
            self.authentication = None
        return reply


# The answer to every event that needs one: a fixed reply, or the method that decides it.
ANSWERS: dict[type, Reply | Callable[[Session, Any], Awaitable[Reply]]] = {
    ev.ProtocolError: Session._protocol_decided,
    ev.TooManyErrors: Session._protocol_decided,
    ev.FramingLost: Session._protocol_decided,
    ev.Hello: Session._hello,
    ev.MailFrom: Session._mail,
    ev.RcptTo: Session._rcpt,
    ev.DataStart: Session._data_start,
    ev.BdatChunkEnd: Session._bdat_chunk,
    ev.MessageEnd: Session._end_of_message,
    ev.Reset: Session._reset,
    ev.Noop: NOOP_OK,
    ev.Quit: CLOSING,
    ev.Verify: CANNOT_VRFY,  # RFC 5321 §3.5.3: never a user list
    ev.Help: HELP,
    ev.StartTls: READY_TLS,
    ev.AuthStart: Session._auth_start,
    ev.AuthLine: Session._auth_line,
}


def _text(address) -> str:
    return "" if address is None else str(address)
