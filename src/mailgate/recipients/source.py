"""The recipient-source interface, its answers, and the ordered chain a hosted domain consults.

Owns: `LookupStatus` (found, not found, unavailable), `Lookup` (which source answered and whether
its cache did), the `RecipientSource` protocol every source implements, `RecipientChain` (the
order rule) and `RecipientValidation` (hosted domain -> chain).
Must not: know any particular source, do I/O itself or decide relaying.

The order rule, as Postfix's relay_recipient_maps with several maps: the first source that knows
the address accepts it; a source that does not know it passes to the next; when none knows it,
the answer is 550 5.1.1 (RFC 5321 §4.2.2, RFC 3463 §3.2 "bad destination mailbox address"),
unless a source could not be asked: then 451 4.4.3 (RFC 3463 §3.5 "directory server failure"),
so the sender retries and nothing is accepted that might be unknown, nor refused that might exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mailgate.core.reply import Reply


class LookupStatus(str, Enum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Lookup:
    status: LookupStatus
    source: str
    cached: bool = False
    detail: str = ""  # why unavailable, or the next hop's reply for call-ahead


class RecipientSource(Protocol):
    """One place that knows the recipients of a hosted domain."""

    name: str
    kind: str  # static | file | ldap | callahead

    async def lookup(self, address: str) -> Lookup:
        """`address` is local@domain, domain in A-label lower case; never raises."""

    def reload(self) -> None:
        """Re-read what the source is built from (SIGHUP); a failure keeps the old data."""

    def close(self) -> None:
        """Release connections and threads."""


def user_unknown(address: str) -> Reply:
    """RFC 5321 §4.2.2 550, RFC 3463 §3.2 X.1.1, worded as Postfix's reject_unlisted_recipient."""
    return Reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")


def lookup_failed(address: str) -> Reply:
    """RFC 5321 §4.2.2 451 (try again later), RFC 3463 §3.5 X.4.3 directory server failure."""
    return Reply(451, "4.4.3", f"<{address}>: Recipient address lookup failed, try again later")


@dataclass(frozen=True)
class ChainVerdict:
    """The chain's answer: `reply` None accepts; `decided_by` is the deciding lookup, if any."""

    reply: Reply | None
    lookups: tuple[Lookup, ...]

    @property
    def decided_by(self) -> Lookup | None:
        return self.lookups[-1] if self.lookups else None

    @property
    def rule(self) -> str:
        last = self.decided_by
        return f"recipient_source:{last.source}" if last else "recipient_source"


class RecipientChain:
    """The sources of one hosted domain, consulted in order."""

    def __init__(self, sources: Sequence[RecipientSource]) -> None:
        self.sources = tuple(sources)

    async def check(self, address: str) -> ChainVerdict:
        lookups: list[Lookup] = []
        unavailable = False
        for source in self.sources:
            lookup = await source.lookup(address)
            lookups.append(lookup)
            if lookup.status is LookupStatus.FOUND:
                return ChainVerdict(None, tuple(lookups))
            unavailable = unavailable or lookup.status is LookupStatus.UNAVAILABLE
        if unavailable:
            failed = next(lookup for lookup in lookups if lookup.status is LookupStatus.UNAVAILABLE)
            lookups.remove(failed)
            lookups.append(failed)  # the failed source is the one that decided
            return ChainVerdict(lookup_failed(address), tuple(lookups))
        return ChainVerdict(user_unknown(address), tuple(lookups))


@dataclass
class RecipientValidation:
    """Hosted domain (as the relay policy names it) -> its chain."""

    chains: dict[str, RecipientChain]

    def chain_for(self, hosted_name: str) -> RecipientChain | None:
        return self.chains.get(hosted_name)

    async def check(self, hosted_name: str, address: str) -> ChainVerdict | None:
        """None when the domain has no sources (any local part is accepted)."""
        chain = self.chains.get(hosted_name)
        if chain is None:
            return None
        return await chain.check(address)

    def sources(self) -> list[RecipientSource]:
        seen: dict[int, RecipientSource] = {}
        for chain in self.chains.values():
            for source in chain.sources:
                seen.setdefault(id(source), source)
        return list(seen.values())

    def reload(self) -> None:
        for source in self.sources():
            source.reload()

    def close(self) -> None:
        for source in self.sources():
            source.close()
