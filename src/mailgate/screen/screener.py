"""The screener facade: rules, antivirus and spam engines combined into one verdict per message.

Owns: `Screener` (built from rules and optional clamd and rspamd clients, or from configuration
tables), `needs_message` (False lets the session skip all parsing), `screen` (envelope rules
first, then the MIME walk in a worker thread alongside clamd and rspamd, then the most severe
outcome), the mapping of rule actions and engine answers to SMTP replies, and the log line of
every verdict with the name of the rule that decided (logger "mailgate.screen").
Fails closed past its bounds: the whole screening has one wall-clock `time_limit` (bounds.py's
`Deadline`: the walk and every regex search stop at it, a scanner still running is a tempfail),
and a rule that could have matched where the walk could not see (`WalkResult.unseen`, a regex
time-out) decides with `uninspected_action`: by default as that rule would, logged "not fully
inspected". The walk runs on the screener's own thread pool, so slow messages never hold up the
threads that check passwords (asyncio's default executor).
Must not: write the queue or talk SMTP: the session applies the verdict (reply, hold reason,
added headers, rewritten message).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, BinaryIO

from mailgate.core.reply import LOCAL_ERROR, SCANNER_UNAVAILABLE, Reply
from mailgate.screen import actions
from mailgate.screen.bounds import Deadline, ScreenTimeout, Unseen, regex_budget
from mailgate.screen.clamd import ClamdClient, ClamdError
from mailgate.screen.health import ScannerHealth
from mailgate.screen.mime import LeafPart, Needs, WalkResult, root_headers, walk
from mailgate.screen.rspamd import (
    ADD_HEADER, GREYLIST, REJECT, REWRITE_SUBJECT, SOFT_REJECT, RspamdClient, RspamdError, SpamResult,
)
from mailgate.screen.rules import (
    BODY_EXPOSURE, HEADER_EXPOSURE, Rule, ScreenConfigError, ScreenContext, body_matches,
    envelope_results, headers_match, parse_rules, part_matches,
)

log = logging.getLogger("mailgate.screen")

# Most severe first: the verdict is the most severe action any rule or engine asked for.
SEVERITY = ("reject", "tempfail", "quarantine", "strip", "tag")
ANTIVIRUS_RULE = "antivirus"
SPAM_RULE = "rspamd"
SCREENER_RULE = "screener"  # the screener itself failed
ANTIVIRUS_SCANNER, SPAM_SCANNER = "antivirus", "spam"  # names in readiness problems and warnings
VIRUS_HEADER = "X-Mailgate-Virus"
STRICTEST = "strictest"
# Envelope rules run on the event loop: a HELO expression gets this long before it counts as a
# rule that could have matched.
ENVELOPE_REGEX_TIMEOUT = 0.05
UNINSPECTED_TEXT = "Message could not be fully inspected"

Rewrite = Callable[[Callable[[bytes], None]], None]


# Replies owned by the screener (RFC 5321 §4.2.3 codes, RFC 3463 §3.8 X.7.1 "delivery not
# authorized, message refused"). `core.reply.SCANNER_UNAVAILABLE` (451 4.7.1) and LOCAL_ERROR
# (451 4.3.0) are reused.
def rule_rejection(text: str) -> Reply:
    return Reply(550, "5.7.1", text)


def rule_tempfail(text: str) -> Reply:
    return Reply(451, "4.7.1", text)


def virus_rejection(signature: str) -> Reply:
    return Reply(554, "5.7.1", f"Message refused: virus found: {signature}")


SPAM_REJECTED = Reply(554, "5.7.1", "Spam message rejected")
SPAM_DEFERRED = Reply(451, "4.7.1", "Message deferred by the spam filter, try again later")
GREYLISTED = Reply(451, "4.7.1", "Greylisted, please try again later")  # RFC 6647 §2.1: a 4yz


@dataclass
class Verdict:
    """What to do with the message. `rewrite(sink)`, when set, streams the message to enqueue
    instead of the original (it must run before `open_message` stops working); `add_headers`
    are prepended by the caller in every case that accepts the message."""

    action: str  # accept | reject | tempfail | quarantine | strip | tag
    reply: Reply | None = None
    rule: str | None = None
    reason: str = ""
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    rewrite: Rewrite | None = None
    matched: list[str] = field(default_factory=list)  # every rule or engine that matched


@dataclass
class _Hit:
    name: str
    action: str
    reason: str
    reply: Reply | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # strip: path -> names
    subject: str | None = None  # rspamd "rewrite subject"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def screener_options(antivirus: Any, spam: Any, screen: Any) -> dict[str, Any]:
    """The Screener's options from the validated `[antivirus]`, `[spam]` and `[screen]` sections
    (config/schema.py declares each, with its default; nothing here repeats one)."""
    return {
        "fail_open_av": antivirus.fail_open, "av_action": antivirus.action, "fail_open_spam": spam.fail_open,
        "time_limit": screen.time_limit, "uninspected_action": screen.uninspected_action, "workers": screen.workers,
    }


class Screener:
    def __init__(
        self, rules: list[Rule], clamd: ClamdClient | None, rspamd: RspamdClient | None,
        *, fail_open_av: bool, av_action: str, fail_open_spam: bool, time_limit: float, uninspected_action: str,
        workers: int,
    ) -> None:
        """The options as screener_options() gives them from the configuration."""
        self.rules = rules
        self.clamd = clamd
        self.rspamd = rspamd
        self.fail_open_av = fail_open_av
        self.av_action = av_action
        self.fail_open_spam = fail_open_spam
        self.time_limit = time_limit
        self.uninspected_action = uninspected_action
        # Idle threads end once the screener is dropped (a reload builds a new one).
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mailgate-screen")
        self.health = ScannerHealth()

    async def probe(self) -> None:
        """Ask clamd whether it answers (PING), for readiness while no mail arrives."""
        if self.clamd is None:
            return
        if await self.clamd.ping():
            self.health.succeeded(ANTIVIRUS_SCANNER)
        else:
            self.health.failed(ANTIVIRUS_SCANNER, f"clamd at {self.clamd.address} does not answer PING",
                               blocks_mail=not self.fail_open_av)

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, rules: Sequence[Any], antivirus: Any, spam: Any, screen: Any) -> "Screener":
        """From the `[[screen_rule]]`, `[antivirus]`, `[spam]` and `[screen]` settings the
        configuration loader validated (config/schema.py); ScreenConfigError lists what only
        the screener can check (rules.py, the clamd and rspamd addresses), by key path."""
        errors: list[str] = []
        try:
            parsed = parse_rules(rules)
        except ScreenConfigError as exc:
            errors.extend(exc.errors)
            parsed = []
        clamd = rspamd = None
        try:
            if antivirus.clamd:  # larger messages are not sent: clamd refuses past its StreamMaxLength
                clamd = ClamdClient(antivirus.clamd, timeout=antivirus.timeout, max_bytes=antivirus.max_size)
        except ValueError as exc:
            errors.append(f"antivirus.clamd: {exc}")
        try:
            if spam.rspamd_url:
                rspamd = RspamdClient(spam.rspamd_url, timeout=spam.timeout)
        except ValueError as exc:
            errors.append(f"spam.rspamd_url: {exc}")
        if errors:
            raise ScreenConfigError(errors)
        return cls(parsed, clamd, rspamd, **screener_options(antivirus, spam, screen))

    # --- the API the session calls ----------------------------------------------------------------
    def _envelope(self, rule: Rule, ctx: ScreenContext) -> bool | None:
        """Whether the rule's envelope keys match (all of them, or with `match = "any"` one);
        None when a HELO expression timed out."""
        try:
            results = envelope_results(rule.match, ctx, ENVELOPE_REGEX_TIMEOUT)
        except TimeoutError:
            return None
        return any(results) if rule.match_any else all(results)

    def _decided_by_envelope(self, rule: Rule, ctx: ScreenContext) -> bool | None:
        """For a rule the envelope decides (no content keys, or `any` and an envelope key
        matched): whether it matched (None: timed out); else False."""
        matched = self._envelope(rule, ctx)
        if not rule.match.needs_message or (rule.match_any and matched is not False):
            return matched
        return False

    def _content_rules(self, ctx: ScreenContext) -> list[Rule]:
        """The rules whose content keys must be looked at for this envelope."""
        rules = []
        for rule in self.rules:
            if not rule.applies_to(ctx.direction) or not rule.match.needs_message:
                continue
            matched = self._envelope(rule, ctx)
            if (matched is False) if rule.match_any else (matched is not False):
                rules.append(rule)
        return rules

    def needs_message(self, ctx: ScreenContext) -> bool:
        """False when neither a rule nor an engine needs the content: no parsing at all then.
        `screen` must still be called (envelope rules); it then never calls `open_message`."""
        return self.clamd is not None or self.rspamd is not None or bool(self._content_rules(ctx))

    async def screen(
        self, ctx: ScreenContext, open_message: Callable[[], BinaryIO], size: int,
        *, queue_id: str | None = None,
    ) -> Verdict:
        deadline = Deadline(self.time_limit)
        hits = []
        for rule in self.rules:
            if not rule.applies_to(ctx.direction):
                continue
            matched = self._decided_by_envelope(rule, ctx)
            if matched:
                hits.append(self._rule_hit(rule, {}))
            elif matched is None:
                hits.append(self._uninspected_hit(rule, "regular expression time-out on the envelope", ()))
        walked: WalkResult | None = None
        if not any(hit.action in ("reject", "tempfail") for hit in hits):
            content_rules = self._content_rules(ctx)
            jobs: list[tuple[str, Any]] = []
            if content_rules:
                loop = asyncio.get_running_loop()
                jobs.append(("rules", loop.run_in_executor(
                    self._executor, self._scan_content, content_rules, open_message, deadline)))
            if self.clamd is not None:
                jobs.append((ANTIVIRUS_RULE, self._antivirus(open_message, size)))
            if self.rspamd is not None:
                jobs.append((SPAM_RULE, self._spam(ctx, open_message, size, queue_id)))
            outcomes = await asyncio.gather(
                *(asyncio.wait_for(job, max(deadline.remaining(), 0)) for _, job in jobs), return_exceptions=True)
            for (job_name, _), outcome in zip(jobs, outcomes):
                if isinstance(outcome, (TimeoutError, ScreenTimeout)):
                    hits += self._timed_out(job_name, content_rules)
                    continue
                if isinstance(outcome, Exception):  # a bug or an unreadable spool: never a silent 250
                    log.error("screen failed: %r", outcome, exc_info=outcome)
                    hits.append(_Hit(SCREENER_RULE, "tempfail", f"screening failed: {outcome!r}", LOCAL_ERROR))
                    continue
                found, result = outcome
                hits += found
                walked = result or walked
        verdict = self._decide(hits, open_message, walked)
        log.info("screen verdict=%s rule=%s reason=%s matched=%s queue_id=%s direction=%s sender=<%s> "
                 "client=%s", verdict.action, verdict.rule or "-", verdict.reason or "-",
                 ",".join(verdict.matched) or "-", queue_id or "-", ctx.direction, ctx.sender,
                 ctx.client_address)
        return verdict

    # --- rules --------------------------------------------------------------------------------------
    def _rule_hit(self, rule: Rule, parts: dict[str, tuple[str, ...]]) -> _Hit:
        text = _one_line(rule.describe())
        hit = _Hit(rule.name, rule.action, f"rule {rule.name}: {text}", parts=parts)
        if rule.action == "reject":
            hit.reply = rule_rejection(text)
        elif rule.action == "tempfail":
            hit.reply = rule_tempfail(text)
        elif rule.action == "tag":
            hit.headers.append((rule.tag_header, _one_line(rule.text) or rule.name))
        return hit

    def _uninspected_hit(self, rule: Rule, why: str, unseen_paths: tuple[str, ...]) -> _Hit:
        """A rule that could have matched where the screener could not see: it decides with
        `uninspected_action` (strictest: the rule's own action; a strip with nothing to point
        at holds the message instead)."""
        action = rule.action if self.uninspected_action == STRICTEST else self.uninspected_action
        if action == "strip" and not unseen_paths:
            action = "quarantine"
        reason = f"not fully inspected ({why}): rule {rule.name} could have matched"
        log.warning("screen not fully inspected: rule=%s action=%s reason=%s", rule.name, action, why)
        hit = _Hit(rule.name, action, reason)
        if action == "reject":
            hit.reply = rule_rejection(UNINSPECTED_TEXT)
        elif action == "tempfail":
            hit.reply = rule_tempfail(UNINSPECTED_TEXT)
        elif action == "tag":
            hit.headers.append((rule.tag_header, f"{rule.name}: not fully inspected"))
        elif action == "strip":
            hit.parts = {path: () for path in unseen_paths}
        return hit

    def _timed_out(self, job_name: str, content_rules: list[Rule]) -> list[_Hit]:
        why = f"the screening time limit of {self.time_limit:g} s ran out"
        if job_name != "rules":  # a scanner that did not answer: the sender retries (451)
            log.warning("screen not fully inspected: %s did not answer: %s", job_name, why)
            return [_Hit(job_name, "tempfail", f"not fully inspected ({job_name}: {why})", SCANNER_UNAVAILABLE)]
        return [self._uninspected_hit(rule, why, ()) for rule in content_rules]

    def _scan_content(
        self, rules: list[Rule], open_message: Callable[[], BinaryIO], deadline: Deadline,
    ) -> tuple[list[_Hit], WalkResult | None]:
        """Runs in a screener thread: one MIME walk serves every content rule."""
        deadline.check()  # it may have waited for a thread past the limit
        part_rules = [rule for rule in rules if rule.match.has_part_keys or rule.match.body]
        if not part_rules:
            with open_message() as file:
                headers, unseen = root_headers(file, deadline)
            hits = (self._judge(rule, headers, set(), set(), {}, unseen, deadline) for rule in rules)
            return [hit for hit in hits if hit is not None], None
        needs = Needs(
            decode=any(r.match.sniffed_type for r in part_rules),
            size=any(r.match.min_size is not None for r in part_rules),
            text=any(r.match.body for r in part_rules),
            zips=any(r.match.in_zip for r in part_rules),
        )
        parts: dict[str, dict[str, tuple[str, ...]]] = {rule.name: {} for rule in rules}
        body_hits: set[str] = set()
        body_timeouts: set[str] = set()

        def on_part(part: LeafPart) -> None:
            for rule in part_rules:
                if rule.match.has_part_keys and (found := part_matches(rule.match, part)):
                    parts[rule.name][part.path] = tuple(part.names) or tuple(found)
                    log.debug("screen rule=%s part=%s names=%s matched=%s", rule.name, part.path,
                              part.names, found)
                if rule.match.body and rule.name not in body_hits:
                    try:
                        if body_matches(rule.match, part, regex_budget(deadline)):
                            body_hits.add(rule.name)
                    except TimeoutError:
                        body_timeouts.add(rule.name)

        with open_message() as file:
            walked = walk(file, needs, on_part, deadline)
        hits = (self._judge(rule, walked.root_headers, body_hits, body_timeouts, parts[rule.name],
                            walked.unseen, deadline) for rule in rules)
        return [hit for hit in hits if hit is not None], walked

    def _judge(
        self, rule: Rule, headers: Message, body_hits: set[str], body_timeouts: set[str],
        parts: dict[str, tuple[str, ...]], unseen: list[Unseen], deadline: Deadline,
    ) -> _Hit | None:
        """The rule's hit, an uninspected hit when only what was not seen could decide it, or None.

        Each kind of key the rule gives is matched, failed, or unknown (it failed but a blind spot
        it is exposed to, or a regex time-out, could hide a match); keys combine with AND."""
        match = rule.match
        states: list[bool | None] = []
        exposures = []
        if match.has_header_keys:
            try:
                matched = headers_match(match, headers, regex_budget(deadline))
            except TimeoutError:
                matched = None
            states.append(_state(matched, HEADER_EXPOSURE, unseen))
            exposures.append(HEADER_EXPOSURE)
        if match.body:
            matched = True if rule.name in body_hits else None if rule.name in body_timeouts else False
            states.append(_state(matched, BODY_EXPOSURE, unseen))
            exposures.append(BODY_EXPOSURE)
        if match.has_part_keys:
            states.append(_state(bool(parts), match.part_exposure, unseen))
            exposures.append(match.part_exposure)
        if any(states) if rule.match_any else all(states):
            return self._rule_hit(rule, parts)
        if None not in states if rule.match_any else False in states:
            return None
        blind = [u for u in unseen if any(u.what & exposure for exposure in exposures)]
        why = "; ".join(dict.fromkeys(u.reason for u in blind)) or "regular expression time-out"
        return self._uninspected_hit(rule, why, tuple(dict.fromkeys(u.path for u in blind)))

    # --- engines ------------------------------------------------------------------------------------
    async def _antivirus(self, open_message: Callable[[], BinaryIO], size: int) -> tuple[list[_Hit], None]:
        assert self.clamd is not None
        if size > self.clamd.max_bytes:
            log.warning("screen antivirus skipped: %d bytes is over clamd's limit of %d", size,
                        self.clamd.max_bytes)
            return [], None
        try:
            result = await self.clamd.scan(open_message)
        except ClamdError as exc:
            self.health.failed(ANTIVIRUS_SCANNER, str(exc), blocks_mail=not self.fail_open_av)
            if self.fail_open_av:
                log.warning("screen antivirus failed open: %s", exc)
                return [], None
            return [_Hit(ANTIVIRUS_RULE, "tempfail", f"antivirus unavailable: {exc}", SCANNER_UNAVAILABLE)], None
        self.health.succeeded(ANTIVIRUS_SCANNER)
        if not result.infected:
            return [], None
        signature = _one_line(result.signature or "unknown")
        hit = _Hit(ANTIVIRUS_RULE, self.av_action, f"virus found: {signature}")
        if self.av_action == "reject":
            hit.reply = virus_rejection(signature)
        elif self.av_action == "tag":
            hit.headers.append((VIRUS_HEADER, signature))
        return [hit], None

    async def _spam(
        self, ctx: ScreenContext, open_message: Callable[[], BinaryIO], size: int, queue_id: str | None,
    ) -> tuple[list[_Hit], None]:
        assert self.rspamd is not None
        try:
            result = await self.rspamd.check(
                open_message, size, sender=ctx.sender, recipients=ctx.recipients,
                client_address=ctx.client_address, helo=ctx.helo, user=ctx.auth_user, queue_id=queue_id)
        except RspamdError as exc:
            self.health.failed(SPAM_SCANNER, str(exc), blocks_mail=not self.fail_open_spam)
            if self.fail_open_spam:
                log.warning("screen spam check failed open: %s", exc)
                return [], None
            return [_Hit(SPAM_RULE, "tempfail", f"spam filter unavailable: {exc}", SCANNER_UNAVAILABLE)], None
        self.health.succeeded(SPAM_SCANNER)
        hit = _spam_hit(result)
        return ([hit] if hit is not None else []), None

    # --- decision -----------------------------------------------------------------------------------
    def _decide(
        self, hits: list[_Hit], open_message: Callable[[], BinaryIO], walked: WalkResult | None,
    ) -> Verdict:
        if not hits:
            return Verdict("accept")
        decisive = min(hits, key=lambda hit: SEVERITY.index(hit.action))  # first of the most severe
        verdict = Verdict(decisive.action, decisive.reply, decisive.name, decisive.reason,
                          matched=[hit.name for hit in hits])
        if decisive.action in ("reject", "tempfail"):
            return verdict
        for hit in hits:
            verdict.add_headers += [h for h in hit.headers if h not in verdict.add_headers]
        ending = walked.line_ending if walked is not None else b"\r\n"
        if decisive.action == "strip" and walked is not None:
            matched = {path: (names, hit.reason) for hit in hits if hit.action == "strip"
                       for path, names in hit.parts.items()}
            removals = actions.plan_removals(matched, walked.entities)
            verdict.rewrite = functools.partial(actions.write_stripped, open_message, removals, ending)
        elif decisive.action == "tag" and (subject := next((h.subject for h in hits if h.subject), None)):
            verdict.rewrite = functools.partial(actions.write_with_subject, open_message, subject, ending)
        return verdict


def _state(matched: bool | None, exposure: frozenset[str], unseen: list[Unseen]) -> bool | None:
    """True matched, False failed for sure, None failed where the walk could not see."""
    if matched is False and any(u.what & exposure for u in unseen):
        return None
    return matched


def _spam_hit(result: SpamResult) -> _Hit | None:
    """rspamd's action as ours: reject, tempfail (soft reject, greylist) or tag (headers, subject)."""
    reason = f"spam score {result.score:.2f}/{result.required_score:.2f} action {result.action}"
    if result.action == REJECT:
        reply = SPAM_REJECTED.with_text(_one_line(result.message)) if result.message else SPAM_REJECTED
        return _Hit(SPAM_RULE, "reject", reason, reply)
    if result.action == SOFT_REJECT:
        return _Hit(SPAM_RULE, "tempfail", reason, SPAM_DEFERRED)
    if result.action == GREYLIST:
        return _Hit(SPAM_RULE, "tempfail", reason, GREYLISTED)
    if result.action in (ADD_HEADER, REWRITE_SUBJECT):
        headers = [("X-Spam", "Yes"), ("X-Spam-Score", f"{result.score:.2f} / {result.required_score:.2f}")]
        headers += [h for h in result.milter_headers if h[0].lower() not in ("x-spam", "x-spam-score")]
        subject = result.subject if result.action == REWRITE_SUBJECT else None
        return _Hit(SPAM_RULE, "tag", reason, headers=headers, subject=subject)
    return None
