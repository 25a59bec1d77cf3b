"""The configuration schema: every key declared once, with type, default, bounds and doc.

Owns: the list of sections and their keys. The loader validates against it, the reference in
docs/configuration.md is generated from it, and nothing else declares a key or a default.
Must not: read files or build runtime objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailgate.config.types import (
    Boolean,
    Choice,
    Duration,
    HostPort,
    Integer,
    IpAddress,
    ListOf,
    Network,
    Size,
    Text,
    ValueKind,
)

REQUIRED = object()  # marker: the key has no default and must be given


@dataclass(frozen=True)
class Key:
    name: str
    kind: ValueKind
    default: Any
    doc: str
    restart: bool = False  # a SIGHUP reload keeps the running value; only a restart applies it


@dataclass(frozen=True)
class Section:
    name: str
    doc: str
    keys: tuple[Key, ...]
    array: bool = False  # [[name]]: a list of tables
    example: str = field(default="")

    def key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)


SERVER = Section(
    "server",
    "Identity, spool and message-wide limits.",
    (
        Key("hostname", Text(allow_empty=False), "localhost",
            "Name announced in the greeting, EHLO and Received headers (RFC 5321 §4.1.1.1).", restart=True),
        Key("spool_dir", Text(allow_empty=False), "./var/spool",
            "Directory of the durable queue (SQLite in WAL mode) and its spill files.", restart=True),
        Key("users_file", Text(), "./var/users",
            "File of users allowed to AUTH, with argon2id hashes (`mailgate user ...` edits it).", restart=True),
        Key("control_socket", Text(), "",
            "Unix socket for `mailgate queue` on a live server; empty means <spool_dir>/control.sock.", restart=True),
        Key("max_message_size", Size(minimum=1024), 36700160,
            "Largest message accepted, announced with SIZE (RFC 1870). Default 35 MiB."),
        Key("max_recipients", Integer(minimum=1, maximum=100000), 1000,
            "Recipients per message; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8 requires at least 100)."),
        Key("received_limit", Integer(minimum=5, maximum=1000), 50,
            "More Received headers than this is a mail loop: 554 5.4.6 (RFC 5321 §6.3)."),
        Key("bare_newline", Choice(choices=("normalize", "reject", "no")), "normalize",
            "A bare LF or bare CR in message data (RFC 5321 §2.3.8; Postfix 3.9's "
            "`smtpd_forbid_bare_newline`). In every mode the data ends only at CRLF.CRLF "
            "(RFC 5321 §4.1.1.4), so `LF.LF`, `CR.CR`, `LF.CRLF`, `CRLF.LF` and the other SMTP "
            "smuggling forms stay message text and never start a second message. `normalize` "
            "(default): accept and store every bare CR or LF as CRLF. `reject`: refuse the message "
            "with 550 5.5.2. `no`: accept and store the bytes unchanged (delivery still sends them "
            "as CRLF, as RFC 5321 requires). Why `normalize`: scripts that write LF-only mail are "
            "common and harmless once the end of data is exact, Postfix 3.9 and Exchange accept "
            "them, and normalizing at reception means the screener, DKIM and every next hop see "
            "the same standard bytes; `reject` loses that mail, `no` stores bytes that each next "
            "hop may read differently. Command lines must always end in CRLF."),
        Key("bare_newline_exclusions", ListOf(item=Network()), (),
            "Clients never refused for bare CR or LF: under `bare_newline = \"reject\"` their mail "
            "is normalized instead (like Postfix's `smtpd_forbid_bare_newline_exclusions`)."),
        Key("bare_newline_exclude_trusted", Boolean(), True,
            "Count `relay.trusted_networks` among `bare_newline_exclusions` (Postfix's default "
            "`$mynetworks`): internal applications that write LF-only are not refused."),
        Key("long_lines", Choice(choices=("wrap", "refuse")), "wrap",
            "A message line longer than 998 characters (RFC 5322 §2.1.1). `wrap` (default): "
            "accept it and break it on delivery as RFC 5322 allows and Postfix's "
            "`smtp_line_length_limit` does: a header field is folded at whitespace, a body line "
            "is broken with CRLF SP. Internal mail that is DKIM-signed is broken before signing, "
            "so the signature holds on the delivered bytes. `refuse`: 550 5.6.0 at end of data."),
        Key("received_shows_user", Boolean(), False,
            "Put the authenticated user name into the Received header."),
        Key("user", Text(), "",
            "After binding the listening ports, run as this user (when started as root).", restart=True),
        Key("group", Text(), "", "... and this group; empty uses the user's primary group.", restart=True),
        Key("disk_soft_free", Size(minimum=0), "512M",
            "Below this much free space in the spool's file system, new mail gets 452 4.3.1.", restart=True),
        Key("disk_hard_free", Size(minimum=0), "128M",
            "Below this, the listeners stop accepting connections until space returns.", restart=True),
        Key("disk_soft_free_inodes", Integer(minimum=0), 10000, "Free inodes for the soft threshold.", restart=True),
        Key("disk_hard_free_inodes", Integer(minimum=0), 1000, "Free inodes for the hard threshold.", restart=True),
        Key("disk_reserve", Size(minimum=0), "16M",
            "Space kept allocated in spool_dir/reserve and released when the queue database finds the "
            "disk full, so that delivery outcomes are still recorded and delivered messages removed; "
            "0 keeps none.", restart=True),
        Key("disk_check_interval", Duration(minimum=0.1, maximum=3600), 5, "How often free space is measured.", restart=True),
        Key("workers", Integer(minimum=0, maximum=64), 0,
            "Worker processes sharing the listening ports and the queue; 0 starts one per CPU core.", restart=True),
        Key("self_audit", Boolean(), True,
            "At start-up, run the relay-trick table against our own listeners and refuse to run "
            "if any form would relay.", restart=True),
    ),
)

LISTENER = Section(
    "listener",
    "One per listening socket. Profiles mirror the usual roles: `mx` (port 25, STARTTLS "
    "offered, no AUTH), `submission` (587, STARTTLS, AUTH required), `smtps` (465, implicit TLS, "
    "AUTH required).",
    (
        Key("name", Text(allow_empty=False), REQUIRED, "Name used in logs and metrics.", restart=True),
        Key("address", HostPort(), REQUIRED, "Address to bind: `127.0.0.1:25`, `[::]:25`.", restart=True),
        Key("profile", Choice(choices=("mx", "submission", "smtps")), "mx",
            "Role of the listener; sets the defaults of `tls` and `auth`."),
        Key("tls", Choice(choices=("profile", "none", "starttls", "implicit")), "profile",
            "TLS mode (RFC 3207 STARTTLS, RFC 8314 implicit). `profile`: starttls for mx and "
            "submission, implicit for smtps."),
        Key("auth", Choice(choices=("profile", "none", "offered", "required")), "profile",
            "AUTH PLAIN/LOGIN (RFC 4954), only ever inside TLS. `profile`: none for mx, "
            "required for submission and smtps."),
        Key("cert_file", Text(), "", "PEM certificate chain; needed for any TLS mode."),
        Key("key_file", Text(), "", "PEM private key matching `cert_file`."),
        Key("max_message_size", Size(minimum=0), 0,
            "Per-listener SIZE limit; 0 uses server.max_message_size."),
        Key("max_connections", Integer(minimum=1, maximum=100000), 1000,
            "Simultaneous connections on this listener; more get 421 4.7.0.", restart=True),
        Key("max_connections_per_client", Integer(minimum=1, maximum=100000), 50,
            "Simultaneous connections from one client address (an IPv6 /64); more get 421 4.7.0.", restart=True),
        Key("command_timeout", Duration(minimum=1, maximum=3600), 300,
            "Idle time allowed between commands (RFC 5321 §4.5.3.2.7: at least 5 minutes)."),
        Key("data_timeout", Duration(minimum=1, maximum=3600), 300,
            "Time allowed between two reads of message data (RFC 5321 §4.5.3.2.7)."),
        Key("data_deadline", Duration(minimum=1, maximum=86400), 1800,
            "Time allowed for the whole data of one message, however steadily it trickles in "
            "(a slowloris sender gets 421 4.4.2); RFC 5321 §4.5.3.2.6 has the client wait 10 minutes "
            "for our answer after the data, this bounds the data itself."),
        Key("tls_handshake_timeout", Duration(minimum=1, maximum=300), 20,
            "Time allowed for the TLS handshake of an implicit-TLS (smtps) or STARTTLS connection.",
            restart=True),
        Key("error_budget", Integer(minimum=1, maximum=1000), 10,
            "Bad commands allowed before 421 and disconnect."),
        Key("proxy_protocol", Boolean(), False,
            "Expect a PROXY protocol v1 or v2 header (a load balancer in front); policy and logs "
            "then use the client address it carries.", restart=True),
        Key("proxy_from", ListOf(item=Network()), (),
            "Load balancer networks allowed to send the PROXY header; others are disconnected.", restart=True),
        Key("proxy_timeout", Duration(minimum=1, maximum=300), 10, "Time allowed for the PROXY header.", restart=True),
    ),
    array=True,
)

RELAY = Section(
    "relay",
    "Who may relay where (SPEC R1-R6). Mail to a hosted domain is accepted from anyone; mail to "
    "any other domain only from a trusted network or an authenticated user.",
    (
        Key("trusted_networks", ListOf(item=Network()), (),
            "CIDR networks (IPv4 and IPv6) allowed to relay to any domain: your internal servers."),
        Key("authenticated_relay", Boolean(), True,
            "Allow every client that authenticated successfully to relay."),
        Key("restrict_auth_senders", Boolean(), False,
            "Authenticated users may use as MAIL FROM only the senders they own, else 553 5.7.1: "
            "their login name when it is a mail address, and the entries of their allowed-senders "
            "list (`mailgate user add --allow-sender`: `user@domain`, `@domain`, `<>` for the null "
            "sender). Nothing else, `<>` included; an empty list owns the login name only. "
            "Off: any sender."),
        Key("allow_routing_local_parts", Boolean(), False,
            "Accept %, ! or @ in the local part of a hosted address from untrusted clients."),
        Key("sender_blocklist", ListOf(item=Text(allow_empty=False)), (),
            "Senders refused inbound: `user@domain`, `@domain` or `domain`."),
        Key("recipient_blocklist", ListOf(item=Text(allow_empty=False)), (),
            "Destinations internal users may not send to: `user@domain`, `@domain` or `domain`."),
        Key("client_blocklist", ListOf(item=Network()), (),
            "Client networks refused at connection (554 5.7.1)."),
        Key("acknowledge_open_relay", Boolean(), False,
            "Run even though the configuration makes an open relay. Never set this on the internet."),
    ),
)

DOMAIN = Section(
    "domain",
    "One per hosted domain: mail to it is accepted from anyone and forwarded to its next hops.",
    (
        Key("name", Text(allow_empty=False), REQUIRED, "The domain (IDN allowed, compared in A-label form)."),
        Key("local_parts", ListOf(item=Text(allow_empty=False)), (),
            "Accepted local parts; empty accepts any (550 5.1.1 for others). With "
            "`recipient_sources`, consulted where that list names `static`."),
        Key("recipient_sources", ListOf(item=Text(allow_empty=False)), (),
            "Names of `[[recipient_source]]` entries (and `static` for `local_parts`) asked in order "
            "whether a recipient exists: the first that knows it accepts; when none does, 550 5.1.1; "
            "when one could not be asked, 451 4.4.3. Empty: `local_parts` alone, or any local part."),
        Key("next_hop", ListOf(item=Text(allow_empty=False)), (),
            "Next hops in order of preference: `host[:port]`, or `maildir:PATH` for the built-in "
            "local mailbox. Empty: deliver by the domain's MX."),
        Key("tls", Choice(choices=("none", "may", "encrypt", "verify")), "may",
            "Outbound TLS policy to the next hops."),
        Key("ca_file", Text(), "", "CA bundle for `verify`; empty uses the system store."),
        Key("bind_address", IpAddress(version=4), "",
            "Local IPv4 address connections to this domain's next hops come from; empty: "
            "`delivery.bind_address`."),
        Key("bind_address6", IpAddress(version=6), "",
            "Local IPv6 address connections to this domain's next hops come from; empty: "
            "`delivery.bind_address6`."),
    ),
    array=True,
)

RECIPIENT_SOURCE = Section(
    "recipient_source",
    "Where the recipients of hosted domains are known, so unknown ones are refused at RCPT "
    "(no backscatter). A domain names the sources it uses in `recipient_sources`.",
    (
        Key("name", Text(allow_empty=False), REQUIRED, "Name used in `recipient_sources`, logs and metrics."),
        Key("type", Choice(choices=("file", "ldap", "callahead")), REQUIRED,
            "file: a map file; ldap: Active Directory or OpenLDAP; callahead: ask the domain's next hop "
            "(`MAIL FROM:<>`, `RCPT TO`, never DATA)."),
        Key("path", Text(), "",
            "file: one `local@domain` or `@domain` (catch-all) per line, `#` comments; re-read on "
            "SIGHUP and when it changes."),
        Key("servers", ListOf(item=Text(allow_empty=False)), (),
            "ldap: `ldap://host[:port]` or `ldaps://host[:port]`, in fail-over order."),
        Key("start_tls", Boolean(), False, "ldap: StartTLS on `ldap://` servers (certificates verified)."),
        Key("ca_file", Text(), "", "ldap: CA bundle verifying the servers; empty uses the system store."),
        Key("bind_dn", Text(), "", "ldap: DN to bind as; empty binds anonymously."),
        Key("bind_password_file", Text(), "", "ldap: file holding the bind password."),
        Key("search_base", Text(), "", "ldap: base DN of the subtree search."),
        Key("filter", Text(allow_empty=False), "(|(proxyAddresses=smtp:{address})(mail={address}))",
            "ldap: search filter; {address}, {local} and {domain} are replaced, escaped per RFC 4515. "
            "The default suits Active Directory; OpenLDAP: `(|(mail={address})(mailAlternateAddress={address}))`."),
        Key("timeout", Duration(minimum=0.1, maximum=120), 10,
            "ldap and callahead: time-out of one connection or query."),
        Key("pool_size", Integer(minimum=1, maximum=64), 4, "ldap: connections (and threads) per worker."),
        Key("positive_ttl", Duration(minimum=0), "1d", "ldap and callahead: how long a found recipient is cached."),
        Key("negative_ttl", Duration(minimum=0), "10m",
            "ldap and callahead: how long an unknown recipient is cached (keep it short: a new "
            "mailbox is refused until it expires)."),
        Key("cache_size", Integer(minimum=0, maximum=10000000), 100000,
            "ldap and callahead: cached answers per worker; the oldest go first."),
    ),
    array=True,
)

DELIVERY = Section(
    "delivery",
    "Outbound delivery: smart host or MX, retries, time-outs and concurrency.",
    (
        Key("helo_name", Text(), "", "Name sent in EHLO; empty uses server.hostname."),
        Key("smart_host", Text(), "",
            "Relay all non-hosted mail through this `host[:port]`; empty delivers to each domain's MX."),
        Key("smart_host_tls", Choice(choices=("none", "may", "encrypt", "verify")), "may",
            "TLS policy to the smart host."),
        Key("smart_host_user", Text(), "", "AUTH user for the smart host (only over TLS)."),
        Key("smart_host_password_file", Text(), "", "File holding the smart host password."),
        Key("tls", Choice(choices=("none", "may", "encrypt", "verify")), "may",
            "TLS policy for direct MX delivery."),
        Key("ca_file", Text(), "", "CA bundle for `verify`; empty uses the system store."),
        Key("mx_port", Integer(minimum=1, maximum=65535), 25, "TCP port for direct MX delivery."),
        Key("bind_address", IpAddress(version=4), "",
            "Local IPv4 address outbound connections come from (Postfix `smtp_bind_address`), e.g. "
            "the address your SPF record and PTR name; empty lets the kernel choose. "
            "`[[domain]] bind_address` overrides it for a hosted domain's next hops."),
        Key("bind_address6", IpAddress(version=6), "",
            "Local IPv6 address outbound connections come from (Postfix `smtp_bind_address6`); "
            "empty lets the kernel choose."),
        Key("max_connections", Integer(minimum=1, maximum=10000), 100, "Outbound connections in all.", restart=True),
        Key("max_per_destination", Integer(minimum=1, maximum=1000), 20,
            "Outbound connections to one next hop.", restart=True),
        Key("connection_idle", Duration(minimum=0, maximum=3600), 30,
            "How long an idle outbound connection is kept for reuse (closed with QUIT up to an eighth "
            "later: one timer serves them all).", restart=True),
        Key("connect_timeout", Duration(minimum=1, maximum=600), 30, "TCP connect time-out.", restart=True),
        Key("retry_schedule", ListOf(item=Duration(minimum=1)), ("1m", "5m", "10m", "30m", "1h"),
            "Waits between attempts; after the last, `max_retry_interval` (jittered by 20%).", restart=True),
        Key("max_retry_interval", Duration(minimum=60), "4h", "Longest wait between two attempts.", restart=True),
        Key("max_lifetime", Duration(minimum=60), "5d",
            "A message still undelivered after this bounces (RFC 5321 §4.5.4.1: 4-5 days).", restart=True),
        Key("delay_warning", Duration(minimum=0), "4h",
            "Send one \"delayed\" DSN after this long (0 turns it off).", restart=True),
        Key("workers", Integer(minimum=1, maximum=10000), 200,
            "Messages delivered concurrently.", restart=True),
    ),
)

DNS = Section(
    "dns",
    "The resolver used for MX, A/AAAA and DNSBL look-ups.",
    (
        Key("nameservers", ListOf(item=Text(allow_empty=False)), (),
            "Nameserver addresses; empty uses /etc/resolv.conf."),
        Key("port", Integer(minimum=1, maximum=65535), 53, "Nameserver port (split DNS, test labs)."),
        Key("timeout", Duration(minimum=0.1, maximum=60), 5, "Time-out of one look-up."),
        Key("dnsbl_zones", ListOf(item=Text(allow_empty=False)), (),
            "DNSBL zones checked for each client address; listed clients get 554 5.7.1."),
    ),
)

LOG = Section(
    "log",
    "Diagnostics and transaction logs.",
    (
        Key("level", Choice(choices=("debug", "info", "warning", "error")), "info", "Diagnostic log level.", restart=True),
        Key("json_file", Text(), "",
            "JSON-lines transaction log, written as daily NAME-YYYYMMDD.EXT files beside this "
            "path (UTC days); empty disables it.", restart=True),
        Key("w3c_dir", Text(), "",
            "Directory of the W3C extended log as the IIS SMTP service writes it, daily "
            "exYYMMDD.log (UTC); empty disables it.", restart=True),
        Key("retention_days", Integer(minimum=0, maximum=3650), 30, "Days of log files kept; 0 keeps all.", restart=True),
        Key("queue_limit", Integer(minimum=100, maximum=1000000), 20000,
            "Records waiting for the log writer thread; more are dropped and counted.", restart=True),
    ),
)

SCREEN_RULE = Section(
    "screen_rule",
    "Message screening rules, checked in order at the end of data. Keys of different kinds "
    "combine with AND: a rule with `subject` and `body` matches only when both match (within one "
    "list: any entry will do); `match = \"any\"` makes one matching key enough. The part keys "
    "(filename, extension, mime_type, sniffed_type, min_size) must hold for the same part. The "
    "strongest action of all matching rules wins: reject > tempfail > quarantine > strip > tag. "
    "Try rules on a sample with `mailgate screen test RULES MESSAGE.eml`.",
    (
        Key("name", Text(allow_empty=False), REQUIRED, "Name shown in replies, logs and quarantine reasons."),
        Key("direction", Choice(choices=("inbound", "outbound", "both")), "both",
            "inbound: to a hosted domain from outside; outbound: from a trusted network or an "
            "authenticated user."),
        Key("action", Choice(choices=("reject", "strip", "quarantine", "tag", "tempfail")), REQUIRED,
            "reject: 550 5.7.1 with `text`; strip: remove matching parts, add a notice; "
            "quarantine: accept and hold; tag: add `tag_header`; tempfail: 451 4.7.1."),
        Key("text", Text(), "", "Reply or notice text; empty uses a standard one naming the rule."),
        Key("tag_header", Text(), "X-Mailgate-Tag", "Header added by the tag action."),
        Key("match", Choice(choices=("all", "any")), "all",
            "all: every match key given must match (AND); any: one is enough (OR). strip needs all."),
        Key("filename", ListOf(item=Text(allow_empty=False)), (),
            "Attachment file name globs (Content-Disposition filename or Content-Type name, RFC 2231 "
            "decoded, case-insensitive): `*.exe`, `invoice*.pdf.*`."),
        Key("extension", ListOf(item=Text(allow_empty=False)), (),
            "File name extensions, any of the name's extensions (double extensions caught): `exe`."),
        Key("mime_type", ListOf(item=Text(allow_empty=False)), (), "Declared MIME type globs: `application/x-msdownload`."),
        Key("sniffed_type", ListOf(item=Text(allow_empty=False)), (),
            "Type recognised from the content: executable, archive, script, office-macro, pdf, ..."),
        Key("min_size", Size(minimum=0), 0, "Parts at least this large (decoded); 0: any size."),
        Key("in_zip", Boolean(), False, "Also match names inside zip archives (bounded depth)."),
        Key("subject", ListOf(item=Text(allow_empty=False)), (), "Regular expressions on the decoded Subject."),
        Key("header", ListOf(item=Text(allow_empty=False)), (), "`Name: regex` on any header."),
        Key("body", ListOf(item=Text(allow_empty=False)), (),
            "Regular expressions on the decoded text of the body (quoted-printable, base64, charsets)."),
        Key("sender", ListOf(item=Text(allow_empty=False)), (), "Envelope senders; `<>` is the null sender."),
        Key("sender_domain", ListOf(item=Text(allow_empty=False)), (), "Sender domains; `.example.com` adds subdomains."),
        Key("recipient", ListOf(item=Text(allow_empty=False)), (), "Envelope recipients."),
        Key("client", ListOf(item=Network()), (), "Client networks (CIDR)."),
        Key("helo", ListOf(item=Text(allow_empty=False)), (), "Regular expressions on the HELO name."),
    ),
    array=True,
)

SCREEN = Section(
    "screen",
    "Bounds of the screening of one message (rules, clamd and rspamd together).",
    (
        Key("time_limit", Duration(minimum=1, maximum=3600), 60,
            "Wall-clock time for the whole screening of one message, the MIME walk, every regular "
            "expression search, clamd and rspamd included; past it the message was not fully inspected."),
        Key("uninspected_action", Choice(choices=("strictest", "reject", "tempfail", "quarantine", "tag")),
            "strictest",
            "A message the screener could not fully inspect (MIME nesting or entity limits, zips "
            "nested too deep, too big or encrypted, text past the body limit, a regular expression or "
            "the time limit running out) where a rule could have matched: `strictest` acts as the "
            "strictest such rule would (strip removes the part not inspected, or holds the message "
            "when the time ran out); a scanner that did not answer in time is a tempfail. Logged as "
            "\"not fully inspected\"."),
        Key("workers", Integer(minimum=1, maximum=256), 4,
            "Threads that screen messages, per worker process; separate from those that check passwords."),
    ),
)

ANTIVIRUS = Section(
    "antivirus",
    "ClamAV's clamd, asked over its INSTREAM protocol for every message.",
    (
        Key("clamd", Text(), "", "`unix:/run/clamav/clamd.ctl` or `tcp:127.0.0.1:3310`; empty: no virus scan."),
        Key("timeout", Duration(minimum=1, maximum=600), 30, "Time allowed for one scan."),
        Key("fail_open", Boolean(), False,
            "Accept mail unscanned when clamd fails (default: 451 4.7.1, the sender retries)."),
        Key("action", Choice(choices=("reject", "quarantine", "tag")), "reject",
            "Infected mail: reject (554 5.7.1 naming the signature), quarantine or tag."),
        Key("max_size", Size(minimum=1024), "25M", "Larger messages are not scanned (clamd's StreamMaxLength)."),
    ),
)

SPAM = Section(
    "spam",
    "rspamd, asked over its HTTP protocol (/checkv2); its actions map to replies and headers.",
    (
        Key("rspamd_url", Text(), "", "`http://127.0.0.1:11333`; empty: no spam scoring."),
        Key("timeout", Duration(minimum=1, maximum=600), 15, "Time allowed for one check."),
        Key("fail_open", Boolean(), False, "Accept mail unchecked when rspamd fails (default: 451 4.7.1)."),
    ),
)

LIMITS = Section(
    "limits",
    "Message rates over a sliding window (refused with 450 4.7.1); trusted networks are exempt "
    "from the per-client limit.",
    (
        Key("messages_per_client", Integer(minimum=0, maximum=1000000), 0,
            "Messages one client address (an IPv6 /64) may send per window; 0 turns it off."),
        Key("messages_per_user", Integer(minimum=0, maximum=1000000), 1000,
            "Messages one authenticated user may send per window; 0 turns it off."),
        Key("window", Duration(minimum=1, maximum=86400), "1h", "The window of both limits."),
    ),
)

DKIM = Section(
    "dkim",
    "DKIM signing of mail from trusted networks and authenticated users (RFC 6376; Ed25519, RFC "
    "8463), after screening, relaxed/relaxed. Keys are listed in [[dkim_key]]; mail from outside "
    "is never signed. `mailgate dkim keygen` makes a key and prints its DNS record.",
    (
        Key("sign_headers", ListOf(item=Text(allow_empty=False)),
            ("from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc", "mime-version",
             "content-type", "content-transfer-encoding", "content-id", "content-description",
             "in-reply-to", "references", "list-id", "list-help", "list-unsubscribe",
             "list-unsubscribe-post", "list-subscribe", "list-post", "list-owner", "list-archive"),
            "Header fields signed when present (From always is, RFC 6376 §5.4)."),
        Key("oversign_headers", ListOf(item=Text(allow_empty=False)),
            ("from", "subject", "to", "cc", "date", "message-id", "reply-to", "mime-version", "content-type"),
            "Header fields signed once more than they occur, so that a copy added in transit "
            "breaks the signature (RFC 6376 §8.15)."),
    ),
)

DKIM_KEY = Section(
    "dkim_key",
    "One per signing key. A domain may list several selectors (key rotation): the active ones "
    "sign (one RSA and one Ed25519 key sign side by side), the others stay listed for "
    "`mailgate dkim check` while their DNS records are still published.",
    (
        Key("domain", Text(allow_empty=False), REQUIRED, "The d= domain: mail whose From: is in it is signed."),
        Key("selector", Text(allow_empty=False), REQUIRED, "The s= selector (RFC 6376 §3.1)."),
        Key("key_file", Text(allow_empty=False), REQUIRED,
            "PEM private key, mode 0600 (a file group or others may read is refused)."),
        Key("active", Boolean(), True, "Sign with this key; at most one active key per domain and type."),
        Key("subdomains", Boolean(), True,
            "Also sign mail from subdomains of `domain` that have no key of their own."),
    ),
    array=True,
)

AUTHENTICATION = Section(
    "authentication",
    "Inbound checks of mail from outside (not from a trusted network or an authenticated user): "
    "SPF (RFC 7208) of MAIL FROM and HELO, every DKIM signature (RFC 6376, RFC 8463), DMARC "
    "(RFC 7489), recorded in an Authentication-Results header (RFC 8601), and the policy below.",
    (
        Key("inbound_checks", Boolean(), True, "Check mail from outside; false records and enforces nothing."),
        Key("authserv_id", Text(), "",
            "The authserv-id of our Authentication-Results header; empty uses server.hostname. "
            "Fields arriving with this id are removed (RFC 8601 §5)."),
        Key("dmarc_reject_action", Choice(choices=("reject", "quarantine", "tag")), "reject",
            "A failing message whose From: domain publishes p=reject: 550 5.7.1, held, or tagged."),
        Key("dmarc_quarantine_action", Choice(choices=("quarantine", "tag", "reject")), "quarantine",
            "A failing message whose From: domain publishes p=quarantine: held in the queue, tagged or refused."),
        Key("dmarc_temperror_action", Choice(choices=("tempfail", "accept")), "tempfail",
            "DMARC cannot be decided now (DNS) where a policy would apply (p=reject or quarantine, or a "
            "hosted domain): 451 4.4.3 so the sender retries, or accept."),
        Key("protect_hosted_domains", Boolean(), True,
            "Refuse (550 5.7.1) mail from outside whose From: is in a hosted domain without an aligned "
            "SPF or DKIM pass, even when the domain publishes no DMARC policy (CEO fraud)."),
        Key("spf_fail_action", Choice(choices=("accept", "tag", "quarantine", "reject")), "tag",
            "SPF fail (-all) of MAIL FROM when DMARC did not pass: accept, tag, hold or 550 5.7.23."),
        Key("tag_header", Text(allow_empty=False), "X-Mailgate-Tag", "Header added by the tag action."),
        Key("max_signatures", Integer(minimum=1, maximum=50), 5,
            "DKIM signatures verified per message; more are reported neutral, unchecked."),
        Key("spf_time_limit", Duration(minimum=1, maximum=300), 20,
            "Time allowed for one SPF evaluation (RFC 7208 §4.6.4: at least 20 seconds)."),
        Key("dns_cache_ttl", Duration(minimum=0, maximum=86400), "5m",
            "How long the answers of these checks are kept (temporary failures never are); 0 keeps none."),
        Key("public_suffix_list", Text(), "",
            "Public Suffix List file for organisational domains (DMARC); empty uses the copy of the "
            "publicsuffixlist package (`pip install -U publicsuffixlist` refreshes it)."),
        Key("arc_trusted_sealers", ListOf(item=Text(allow_empty=False)), (),
            "Domains (d= of the latest ARC-Seal) of mailing lists and forwarders whose valid ARC "
            "chain (RFC 8617) lifts the DMARC and hosted-domain actions for a message they changed."),
        Key("arc_seal_key_file", Text(), "",
            "RSA private key (mode 0600) to ARC-seal mail from outside after screening (RFC 8617), "
            "so a stripped message carries the results seen before; empty: no sealing."),
        Key("arc_seal_domain", Text(), "", "The d= domain of our ARC-Seal (its key record is under it)."),
        Key("arc_seal_selector", Text(), "", "The s= selector of our ARC-Seal."),
    ),
)

METRICS = Section(
    "metrics",
    "Prometheus metrics and health endpoints.",
    (
        Key("address", Text(), "",
            "host:port serving /metrics, /healthz and /readyz; empty disables it. With several "
            "workers, worker N listens on port + N. Keep it on loopback or a management network.", restart=True),
    ),
)

CONSOLE = Section(
    "console",
    "The admin web console (docs/console.md): dashboard, queue, message trace and tools, served by "
    "worker 0. Who may log in: users of `server.users_file` with the admin role "
    "(`mailgate user add --admin NAME`). Plain HTTP is refused except on a loopback address.",
    (
        Key("enabled", Boolean(), False, "Serve the console.", restart=True),
        Key("address", Text(allow_empty=False), "127.0.0.1:8025",
            "host:port of the console. Any address other than loopback needs `cert_file` and `key_file` "
            "(HTTPS): passwords and session cookies never cross a network in clear text.", restart=True),
        Key("cert_file", Text(), "", "PEM certificate chain for HTTPS; empty: plain HTTP (loopback only).",
            restart=True),
        Key("key_file", Text(), "", "PEM private key matching `cert_file`.", restart=True),
        Key("session_lifetime", Duration(minimum=60, maximum=7 * 86400), "8h",
            "How long a log-in lasts; a session idle for a quarter of it (at least 15 minutes) ends sooner."),
        Key("login_failures", Integer(minimum=1, maximum=100), 5,
            "Failed log-ins from one client address (an IPv6 /64) within 15 minutes before its "
            "log-ins are refused for 15 minutes (auth/lockout.py)."),
    ),
)

QUEUE = Section(
    "queue",
    "Where the queue lives: the embedded SQLite store in server.spool_dir (one node), or a "
    "PostgreSQL database shared by several nodes (docs/cluster.md).",
    (
        Key("backend", Choice(choices=("sqlite", "postgresql")), "sqlite",
            "`sqlite`: the embedded queue in server.spool_dir. `postgresql`: the cluster queue in "
            "the database `dsn` names, shared by every node configured with it.", restart=True),
        Key("dsn", Text(), "",
            "libpq connection string of the cluster queue, e.g. `host=db.example port=5432 "
            "user=mailgate dbname=mailgate sslmode=verify-full`; no password in it.", restart=True),
        Key("password_file", Text(), "",
            "File (mode 0600) whose first line is the database password; empty: none, or "
            "~/.pgpass and PGPASSWORD as libpq reads them.", restart=True),
        Key("node_name", Text(), "",
            "This node's name in the cluster (leases, heartbeats, metrics); unique per node: a node "
            "whose name another live node serves under (heartbeat within takeover_time) exits 1 at "
            "start. Empty: server.hostname.", restart=True),
        Key("takeover_time", Duration(minimum=1, maximum=3600), 60,
            "A node that stopped heartbeating for this long has its messages in delivery taken "
            "over by the other nodes (a possible duplicate delivery, RFC 5321 §6.1).", restart=True),
    ),
)

SECTIONS: tuple[Section, ...] = (
    SERVER, LISTENER, RELAY, DOMAIN, RECIPIENT_SOURCE, DELIVERY, DNS, SCREEN, SCREEN_RULE, ANTIVIRUS, SPAM, LIMITS, DKIM, DKIM_KEY,
    AUTHENTICATION, LOG, METRICS, CONSOLE, QUEUE,
)


def section(name: str) -> Section | None:
    return next((s for s in SECTIONS if s.name == name), None)
