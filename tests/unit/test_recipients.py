"""Recipient sources without sockets: the order rule, the cache, the map file, filter escaping
and the configuration checks."""

from __future__ import annotations

import asyncio
import os

import pytest

from mailgate.config.loader import ConfigError, load_text
from mailgate.recipients.cache import LookupCache
from mailgate.recipients.ldap_source import AD_DEFAULT_FILTER, search_filter
from mailgate.recipients.mapfile import MapFileError, MapFileSource, RecipientMap, parse_map
from mailgate.recipients.source import Lookup, LookupStatus, RecipientChain, RecipientValidation
from mailgate.recipients.static import StaticSource

FOUND, NOT_FOUND, UNAVAILABLE = LookupStatus.FOUND, LookupStatus.NOT_FOUND, LookupStatus.UNAVAILABLE


class FakeSource:
    """Answers from a table; counts the questions it was asked."""

    kind = "fake"

    def __init__(self, name: str, answers: dict[str, LookupStatus], default: LookupStatus = NOT_FOUND) -> None:
        self.name, self.answers, self.default, self.asked = name, answers, default, []

    async def lookup(self, address: str) -> Lookup:
        self.asked.append(address)
        return Lookup(self.answers.get(address, self.default), self.name)

    def reload(self) -> None:
        pass

    def close(self) -> None:
        pass


def check(chain: RecipientChain, address: str):
    return asyncio.run(chain.check(address))


def test_first_source_that_knows_accepts_and_later_ones_are_not_asked() -> None:
    first = FakeSource("first", {"a@x.test": FOUND})
    second = FakeSource("second", {})
    verdict = check(RecipientChain([first, second]), "a@x.test")
    assert verdict.reply is None and verdict.rule == "recipient_source:first"
    assert second.asked == []


def test_unknown_everywhere_is_550_5_1_1_with_postfix_wording() -> None:
    verdict = check(RecipientChain([FakeSource("a", {}), FakeSource("b", {})]), "nobody@x.test")
    assert verdict.reply.code == 550 and verdict.reply.enhanced == "5.1.1"
    assert verdict.reply.text == "<nobody@x.test>: Recipient address rejected: User unknown"
    assert [lookup.source for lookup in verdict.lookups] == ["a", "b"]


@pytest.mark.parametrize("order", [("down", "empty"), ("empty", "down")])
def test_a_source_that_cannot_answer_makes_451_never_550(order) -> None:
    sources = {"down": FakeSource("down", {}, UNAVAILABLE), "empty": FakeSource("empty", {})}
    verdict = check(RecipientChain([sources[name] for name in order]), "who@x.test")
    assert (verdict.reply.code, verdict.reply.enhanced) == (451, "4.4.3")
    assert verdict.rule == "recipient_source:down"


def test_a_later_source_that_knows_the_address_wins_over_an_unavailable_one() -> None:
    verdict = check(RecipientChain([FakeSource("down", {}, UNAVAILABLE), FakeSource("map", {"u@x.test": FOUND})]), "u@x.test")
    assert verdict.reply is None


def test_validation_ignores_domains_without_sources() -> None:
    validation = RecipientValidation({"x.test": RecipientChain([FakeSource("s", {})])})
    assert asyncio.run(validation.check("other.test", "a@other.test")) is None
    assert asyncio.run(validation.check("x.test", "a@x.test")).reply.code == 550


def test_static_source_compares_local_parts_case_insensitively() -> None:
    source = StaticSource("static:x.test", ["Sales", "info"])
    assert asyncio.run(source.lookup("sales@x.test")).status is FOUND
    assert asyncio.run(source.lookup("INFO@x.test")).status is FOUND
    assert asyncio.run(source.lookup("ceo@x.test")).status is NOT_FOUND


# --- cache -------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ask_counting(status: LookupStatus, counter: list[int], delay: float = 0.0):
    async def ask() -> Lookup:
        counter.append(1)
        await asyncio.sleep(delay)
        return Lookup(status, "src")
    return ask


def test_cache_keeps_positive_answers_longer_than_negative_ones() -> None:
    clock, asked = Clock(), []
    cache = LookupCache(positive_ttl=100, negative_ttl=10, clock=clock)

    async def scenario() -> list[bool]:
        hits = []
        for status, key in ((FOUND, "yes"), (NOT_FOUND, "no")):
            await cache.get(key, ask_counting(status, asked))
        clock.now += 11  # the negative answer expired, the positive one did not
        hits.append((await cache.get("yes", ask_counting(FOUND, asked))).cached)
        hits.append((await cache.get("no", ask_counting(NOT_FOUND, asked))).cached)
        clock.now += 100
        hits.append((await cache.get("yes", ask_counting(FOUND, asked))).cached)
        return hits

    assert asyncio.run(scenario()) == [True, False, False]
    assert len(asked) == 4


def test_cache_never_keeps_an_unavailable_answer() -> None:
    asked = []
    cache = LookupCache(positive_ttl=100, negative_ttl=100, clock=Clock())

    async def twice() -> None:
        for _ in range(2):
            await cache.get("k", ask_counting(UNAVAILABLE, asked))

    asyncio.run(twice())
    assert len(asked) == 2


def test_concurrent_lookups_of_one_address_are_merged_into_one() -> None:
    asked = []
    cache = LookupCache(positive_ttl=100, negative_ttl=100, clock=Clock())

    async def crowd() -> list[Lookup]:
        return await asyncio.gather(*(cache.get("k", ask_counting(FOUND, asked, 0.01)) for _ in range(20)))

    answers = asyncio.run(crowd())
    assert len(asked) == 1
    assert all(answer.status is FOUND for answer in answers)
    assert sum(not answer.cached for answer in answers) == 1


def test_cache_is_bounded_and_drops_the_oldest_entries() -> None:
    asked = []
    cache = LookupCache(positive_ttl=100, negative_ttl=100, max_entries=3, clock=Clock())

    async def fill() -> bool:
        for index in range(10):
            await cache.get(f"k{index}", ask_counting(NOT_FOUND, asked))
        return (await cache.get("k0", ask_counting(NOT_FOUND, asked))).cached

    assert asyncio.run(fill()) is False
    assert len(cache) == 3


# --- map file ----------------------------------------------------------------------------------
def test_map_file_entries_catch_alls_comments_and_a_second_column(tmp_path) -> None:
    path = tmp_path / "recipients"
    path.write_text("# valid recipients\nalice@x.test OK\n\nBob@X.test   # sales\n@catchall.test\n")
    recipients = parse_map(path)
    assert recipients.knows("alice@x.test") and recipients.knows("bob@x.test")
    assert recipients.knows("anyone@catchall.test")
    assert not recipients.knows("carol@x.test")
    assert not recipients.knows("alice@catchall.test.evil")


@pytest.mark.parametrize("line", ["no-at-sign", "a@", "a@b@c.test"])
def test_a_bad_map_line_names_file_and_line(tmp_path, line) -> None:
    path = tmp_path / "recipients"
    path.write_text(f"ok@x.test\n{line}\n")
    with pytest.raises(MapFileError, match=r"recipients:2: expected"):
        parse_map(path)


def test_map_file_is_reloaded_when_it_changes_and_a_bad_file_keeps_the_old_map(tmp_path) -> None:
    path = tmp_path / "recipients"
    path.write_text("old@x.test\n")
    clock = Clock()
    source = MapFileSource("map", path, check_interval=1, clock=clock)

    async def look(address: str) -> LookupStatus:
        status = (await source.lookup(address)).status
        if source._reloading is not None:
            await source._reloading
        return status

    async def scenario() -> list[LookupStatus]:
        seen = [await look("new@x.test")]
        path.write_text("new@x.test\n")
        os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
        clock.now += 2
        await look("new@x.test")  # notices the change, re-reads in a thread
        seen.append(await look("new@x.test"))
        path.write_text("broken line\n")
        os.utime(path, ns=(2, 2))
        clock.now += 2
        await look("new@x.test")
        seen.append(await look("new@x.test"))
        return seen

    assert asyncio.run(scenario()) == [NOT_FOUND, FOUND, FOUND]


def test_recipient_map_holds_eight_bytes_per_entry() -> None:
    recipients = RecipientMap(f"user{index}@x.test" for index in range(10000))
    assert len(recipients) == 10000 and recipients.nbytes == 80000
    assert "user9999@x.test" in recipients and "user10000@x.test" not in recipients


# --- LDAP filter -------------------------------------------------------------------------------
@pytest.mark.parametrize("address, escaped", [
    ("*@x.test", r"\2a@x.test"),
    ("a)(mail=*@x.test", r"a\29\28mail=\2a@x.test"),
    ("a\x00b@x.test", r"a\00b@x.test"),
    ("a\\b@x.test", r"a\5cb@x.test"),
])
def test_ldap_filter_escapes_every_special_character(address, escaped) -> None:
    assert search_filter(AD_DEFAULT_FILTER, address) == f"(|(proxyAddresses=smtp:{escaped})(mail={escaped}))"
    assert search_filter("(&(uid={local})(dc={domain}))", address).count("(") == 3


# --- configuration -----------------------------------------------------------------------------
BASE = """
[[listener]]
name = "mx"
address = "127.0.0.1:2525"
tls = "none"
"""


def config_errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(BASE + text)
    return caught.value.errors


def test_a_domain_naming_an_unknown_source_is_refused() -> None:
    errors = config_errors('[[domain]]\nname = "x.test"\nnext_hop = ["10.0.0.1"]\nrecipient_sources = ["ad"]\n')
    assert errors == ["domain[0].recipient_sources: no [[recipient_source]] named 'ad'"]


def test_local_parts_not_named_static_would_be_ignored_so_it_is_an_error() -> None:
    errors = config_errors(
        '[[recipient_source]]\nname = "map"\ntype = "file"\npath = "/x"\n'
        '[[domain]]\nname = "x.test"\nnext_hop = ["10.0.0.1"]\nlocal_parts = ["a"]\nrecipient_sources = ["map"]\n'
    )
    assert errors == ['domain[0].local_parts: not consulted; add "static" to recipient_sources']


def test_incomplete_sources_name_the_key() -> None:
    errors = config_errors(
        '[[recipient_source]]\nname = "ad"\ntype = "ldap"\nservers = ["http://dc1"]\n'
        '[[recipient_source]]\nname = "map"\ntype = "file"\n'
        '[[recipient_source]]\nname = "probe"\ntype = "callahead"\n'
        '[[domain]]\nname = "x.test"\nnext_hop = ["maildir:/tmp/m"]\nrecipient_sources = ["probe"]\n'
    )
    assert errors == [
        "recipient_source[0].servers[0]: 'http://dc1' is not an ldap:// or ldaps:// URI",
        "recipient_source[0].search_base: an ldap source needs the base DN to search",
        "recipient_source[1].path: a file source needs the map file's path",
        "domain[0].recipient_sources: call-ahead source 'probe' needs a host:port next_hop to ask",
    ]
