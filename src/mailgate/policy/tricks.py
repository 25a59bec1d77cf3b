"""THE table of relay-trick forms (SPEC R5), as data, and its rendering for one relay and target.

Owns: every MAIL FROM / RCPT TO pair an open-relay tester tries: all sixteen that nmap's
smtp-open-relay NSE script sends, plus percent hack, bang paths, source routes, quoted local parts
holding @ or %, double @, trailing dots, IP literals (own address, mapped, loopback, malformed),
case and IDN forms. Used by the policy tests, `mailgate relay-test` and the start-up self-audit.
Must not: send anything, parse addresses, or know what a server should answer (the expected
replies for mailgate live in tests/unit/test_relay_tricks.py).

Template placeholders (str.format fields):
  {target}             the external domain the relay must not relay to (ASCII, as given)
  {relay_host}         the relay's own host name (what nmap reads from the EHLO reply)
  {relay_ip}           the relay's own IP as an address literal: [192.0.2.1] or [IPv6:2001:db8::1]
  {relay_ip_alt}       the same IP written differently: IPv4 as [IPv6:::ffff:a.b.c.d], IPv6 in
                       its exploded form; a parser must see it is the same address
  {hosted}             a domain the relay hosts
  {TARGET} {HOSTED}    upper-case forms; {target_mixed} alternating case
  {target_fullwidth} {hosted_fullwidth}  full-width Unicode forms that IDNA (UTS #46) maps back
                       to the ASCII domain (needs SMTPUTF8)
A form with `smtputf8` set is meant to be sent with the SMTPUTF8 parameter on MAIL FROM (RFC 6531
§3.4); `mail_from` and `rcpt_to` are the path arguments only, parameters are the caller's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

NMAP = "nmap smtp-open-relay"
MAILGATE = "mailgate"
TEST_NET_LITERAL = "[192.0.2.55]"  # RFC 5737 documentation address: a literal that is not ours


@dataclass(frozen=True)
class RelayTrick:
    name: str
    mail_from: str  # template of the MAIL FROM path
    rcpt_to: str  # template of the RCPT TO path
    note: str
    smtputf8: bool = False
    origin: str = MAILGATE


@dataclass(frozen=True)
class RenderedTrick:
    name: str
    mail_from: str
    rcpt_to: str
    smtputf8: bool
    note: str


_FROM_LITERAL = "<antispam@{relay_ip}>"  # nmap's sender for most of its forms
_FROM_TARGET = "<relaytest@{target}>"


def _nmap(name: str, mail_from: str, rcpt_to: str, note: str) -> RelayTrick:
    return RelayTrick(name, mail_from, rcpt_to, note, origin=NMAP)


TRICKS: tuple[RelayTrick, ...] = (
    # --- The sixteen forms of nmap's smtp-open-relay, in its order --------------------------
    _nmap("nmap_null_sender", "<>", "<relaytest@{target}>",
          "null sender to an outside domain"),
    _nmap("nmap_sender_target", "<antispam@{target}>", "<relaytest@{target}>",
          "sender in the target domain"),
    _nmap("nmap_sender_relay_host", "<antispam@{relay_host}>", "<relaytest@{target}>",
          "sender at the relay's name"),
    _nmap("nmap_sender_relay_literal", _FROM_LITERAL, "<relaytest@{target}>",
          "sender at the relay's IP literal"),
    _nmap("nmap_percent_relay_literal", _FROM_LITERAL, "<relaytest%{target}@{relay_ip}>",
          "percent hack via own literal"),
    _nmap("nmap_percent_relay_host", _FROM_LITERAL, "<relaytest%{target}@{relay_host}>",
          "percent hack via own name"),
    _nmap("nmap_quoted_at", _FROM_LITERAL, '<"relaytest@{target}">',
          "quoted address, no domain"),
    _nmap("nmap_quoted_percent", _FROM_LITERAL, '<"relaytest%{target}">',
          "quoted percent hack, no domain"),
    _nmap("nmap_double_at_relay_literal", _FROM_LITERAL, "<relaytest@{target}@{relay_ip}>",
          "two @, own literal"),
    _nmap("nmap_quoted_at_relay_literal", _FROM_LITERAL, '<"relaytest@{target}"@{relay_ip}>',
          "quoted @ at own literal"),
    _nmap("nmap_double_at_relay_host", _FROM_LITERAL, "<relaytest@{target}@{relay_host}>",
          "two @, own name"),
    _nmap("nmap_source_route_literal", _FROM_LITERAL, "<@{relay_ip}:relaytest@{target}>",
          "source route via own literal"),
    _nmap("nmap_source_route_host", _FROM_LITERAL, "<@{relay_host}:relaytest@{target}>",
          "source route via own name"),
    _nmap("nmap_bang", _FROM_LITERAL, "<{target}!relaytest>",
          "bang path, no domain"),
    _nmap("nmap_bang_relay_literal", _FROM_LITERAL, "<{target}!relaytest@{relay_ip}>",
          "bang path at own literal"),
    _nmap("nmap_bang_relay_host", _FROM_LITERAL, "<{target}!relaytest@{relay_host}>",
          "bang path at own name"),
    # --- Routing characters in the local part of a hosted domain ------------------------------
    RelayTrick("percent_hosted", _FROM_TARGET, "<relaytest%{target}@{hosted}>",
               "percent hack via hosted domain"),
    RelayTrick("percent_twice_hosted", _FROM_TARGET, "<relaytest%{target}%{hosted}@{hosted}>",
               "chained percent"),
    RelayTrick("quoted_at_hosted", _FROM_TARGET, '<"relaytest@{target}"@{hosted}>',
               "quoted @ at hosted domain"),
    RelayTrick("quoted_percent_hosted", _FROM_TARGET, '<"relaytest%{target}"@{hosted}>',
               "quoted percent"),
    RelayTrick("quoted_escaped_at_hosted", _FROM_TARGET, '<"relaytest\\@{target}"@{hosted}>',
               "quoted-pair @"),
    RelayTrick("quoted_bang_hosted", _FROM_TARGET, '<"{target}!relaytest"@{hosted}>',
               "quoted bang path"),
    RelayTrick("bang_hosted", _FROM_TARGET, "<{target}!relaytest@{hosted}>",
               "bang path at hosted domain"),
    RelayTrick("bang_chain_hosted", _FROM_TARGET, "<{hosted}!{target}!relaytest@{hosted}>",
               "two-hop bang path"),
    RelayTrick("percent_upper_case", _FROM_TARGET, "<RELAYTEST%{TARGET}@{HOSTED}>",
               "percent hack, upper case"),
    RelayTrick("percent_utf8_local", _FROM_TARGET, "<rélaytest%{target}@{hosted}>",
               "UTF-8 local part", True),
    RelayTrick("percent_fullwidth_hosted", _FROM_TARGET, "<relaytest%{target}@{hosted_fullwidth}>",
               "full-width form of the hosted domain", True),
    # --- Two @ signs and source routes --------------------------------------------------------
    RelayTrick("double_at_hosted", _FROM_TARGET, "<relaytest@{target}@{hosted}>",
               "two @, hosted last"),
    RelayTrick("double_at_hosted_first", _FROM_TARGET, "<relaytest@{hosted}@{target}>",
               "two @, hosted first"),
    RelayTrick("source_route_hosted", _FROM_TARGET, "<@{hosted}:relaytest@{target}>",
               "route via hosted domain"),
    RelayTrick("source_route_chain", _FROM_TARGET, "<@{hosted},@{relay_host}:relaytest@{target}>",
               "two-hop route"),
    RelayTrick("source_route_then_percent", _FROM_TARGET, "<@{hosted}:relaytest%{target}@{hosted}>",
               "route, then percent hack"),
    RelayTrick("source_route_no_colon", _FROM_TARGET, "<@{hosted},relaytest@{target}>",
               "malformed route"),
    # --- IP literals --------------------------------------------------------------------------
    RelayTrick("own_literal", _FROM_TARGET, "<relaytest@{relay_ip}>",
               "own IP literal is not a hosted domain"),
    RelayTrick("own_literal_alternate_form", _FROM_TARGET, "<relaytest@{relay_ip_alt}>",
               "own IP, other spelling"),
    RelayTrick("loopback_literal", _FROM_TARGET, "<relaytest@[127.0.0.1]>",
               "IPv4 loopback literal"),
    RelayTrick("loopback_v6_literal", _FROM_TARGET, "<relaytest@[IPv6:::1]>",
               "IPv6 loopback literal"),
    RelayTrick("unspecified_literal", _FROM_TARGET, "<relaytest@[0.0.0.0]>",
               "unspecified address literal"),
    RelayTrick("foreign_literal", _FROM_TARGET, f"<relaytest@{TEST_NET_LITERAL}>",
               "someone else's IP literal"),
    RelayTrick("percent_foreign_literal", _FROM_TARGET,
               f"<relaytest%{{target}}@{TEST_NET_LITERAL}>",
               "percent hack at a foreign literal"),
    RelayTrick("integer_literal", _FROM_TARGET, "<relaytest@[3221225985]>",
               "IPv4 as one integer"),
    RelayTrick("zero_padded_literal", _FROM_TARGET, "<relaytest@[192.000.002.055]>",
               "octal-looking octets"),
    RelayTrick("unbracketed_ip", _FROM_TARGET, "<relaytest@192.0.2.55>",
               "IP without brackets is a name"),
    # --- Trailing dots and malformed paths ----------------------------------------------------
    RelayTrick("trailing_dot_target", _FROM_TARGET, "<relaytest@{target}.>",
               "absolute domain form"),
    RelayTrick("trailing_dot_hosted_percent", _FROM_TARGET, "<relaytest%{target}@{hosted}.>",
               "dot and percent"),
    RelayTrick("trailing_dot_local", _FROM_TARGET, "<relaytest%{target}.@{hosted}>",
               "dot ending local part"),
    RelayTrick("leading_dot_target", _FROM_TARGET, "<relaytest@.{target}>",
               "empty first label"),
    RelayTrick("unbracketed_path", _FROM_TARGET, "relaytest@{target}",
               "path without angle brackets"),
    RelayTrick("unclosed_bracket", _FROM_TARGET, "<relaytest@{target}",
               "missing '>'"),
    RelayTrick("nested_brackets", _FROM_TARGET, "<<relaytest@{target}>>",
               "brackets twice"),
    RelayTrick("space_in_path", _FROM_TARGET, "<relaytest @{target}>",
               "space before @"),
    RelayTrick("comment_in_domain", _FROM_TARGET, "<relaytest@{target}(relay)>",
               "RFC 5322 comment"),
    RelayTrick("quoted_plain_local", _FROM_TARGET, '<"relaytest"@{target}>',
               "quoted local part, outside"),
    # --- Case, IDN and look-alike domains -------------------------------------------------------
    RelayTrick("upper_case_target", _FROM_TARGET, "<RELAYTEST@{TARGET}>",
               "upper case"),
    RelayTrick("mixed_case_target", _FROM_TARGET, "<RelayTest@{target_mixed}>",
               "mixed case"),
    RelayTrick("fullwidth_target", _FROM_TARGET, "<relaytest@{target_fullwidth}>",
               "full-width target", True),
    RelayTrick("fullwidth_target_without_smtputf8", _FROM_TARGET, "<relaytest@{target_fullwidth}>",
               "non-ASCII domain without SMTPUTF8"),
    RelayTrick("idn_u_label_target", _FROM_TARGET, "<relaytest@bücher.{target}>",
               "U-label subdomain", True),
    RelayTrick("idn_a_label_target", _FROM_TARGET, "<relaytest@xn--bcher-kva.{target}>",
               "A-label subdomain"),
    RelayTrick("hosted_subdomain", _FROM_TARGET, "<relaytest@relay.{hosted}>",
               "subdomain is not hosted"),
    RelayTrick("hosted_as_prefix", _FROM_TARGET, "<relaytest@{hosted}.{target}>",
               "hosted name inside target"),
    RelayTrick("hosted_as_suffix", _FROM_TARGET, "<relaytest@not{hosted}>",
               "look-alike ending in hosted"),
    RelayTrick("spoofed_hosted_sender", "<postmaster@{hosted}>", "<relaytest@{target}>",
               "local sender forged"),
)


def _fullwidth(domain: str) -> str:
    """Full-width letters, digits, hyphen and dot (U+FF01..FF5E, U+FF0E): UTS #46 maps them back."""
    return "".join(
        chr(ord(char) + 0xFEE0) if char.isalnum() or char in "-." else char for char in domain
    )


def _alternating_case(text: str) -> str:
    return "".join(
        char.upper() if index % 2 == 0 else char.lower() for index, char in enumerate(text)
    )


def _literal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, alternate: bool) -> str:
    if isinstance(address, ipaddress.IPv4Address):
        return f"[IPv6:::ffff:{address}]" if alternate else f"[{address}]"
    return f"[IPv6:{address.exploded if alternate else address.compressed}]"


def placeholders(*, target: str, relay_host: str, relay_ip: str, hosted: str) -> dict[str, str]:
    """The values every template may use (documented in the module docstring)."""
    address = ipaddress.ip_address(relay_ip.strip("[]"))
    return {
        "target": target,
        "relay_host": relay_host,
        "relay_ip": _literal(address, alternate=False),
        "relay_ip_alt": _literal(address, alternate=True),
        "hosted": hosted,
        "TARGET": target.upper(),
        "HOSTED": hosted.upper(),
        "target_mixed": _alternating_case(target),
        "target_fullwidth": _fullwidth(target),
        "hosted_fullwidth": _fullwidth(hosted),
    }


def render(
    trick: RelayTrick, *, target: str, relay_host: str, relay_ip: str, hosted: str
) -> RenderedTrick:
    """One form with its placeholders filled in."""
    values = placeholders(target=target, relay_host=relay_host, relay_ip=relay_ip, hosted=hosted)
    return RenderedTrick(
        trick.name,
        trick.mail_from.format_map(values),
        trick.rcpt_to.format_map(values),
        trick.smtputf8,
        trick.note,
    )


def render_all(*, target: str, relay_host: str, relay_ip: str, hosted: str) -> list[RenderedTrick]:
    """Every form of TRICKS, in table order."""
    return [
        render(trick, target=target, relay_host=relay_host, relay_ip=relay_ip, hosted=hosted)
        for trick in TRICKS
    ]
