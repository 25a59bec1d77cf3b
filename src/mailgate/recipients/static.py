"""The static source: a hosted domain's `local_parts` list from the configuration.

Owns: the case-insensitive comparison of the unquoted local part (as the relay policy did before
sources existed). Must not: read files or the network.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailgate.recipients.source import Lookup, LookupStatus


class StaticSource:
    kind = "static"

    def __init__(self, name: str, local_parts: Iterable[str]) -> None:
        self.name = name
        self.local_parts = frozenset(part.lower() for part in local_parts)

    async def lookup(self, address: str) -> Lookup:
        local = address.rpartition("@")[0].lower()
        found = local in self.local_parts
        return Lookup(LookupStatus.FOUND if found else LookupStatus.NOT_FOUND, self.name)

    def reload(self) -> None:
        """The list lives in the configuration: a reload builds a new source."""

    def close(self) -> None:
        """Nothing to release."""
