"""The choices and defaults the tools offer on the command line and in the console's forms.

Owns: the certificate key types and the self-signed validity (`mailgate cert`), the TLS modes and
subject of `mailgate send`, and the target domain and EHLO name of `mailgate relay-test`.
Must not: import anything heavy (cryptography, ssl, asyncio): `mailgate` builds its parser from
these at every start, before it knows which command runs (tests/unit/test_cli_startup.py).
"""

from __future__ import annotations

CERT_KEY_TYPES = ("ec", "rsa")
SELF_SIGNED_DAYS = 365

SEND_TLS_MODES = ("starttls", "implicit", "none")
SEND_SUBJECT = "mailgate test message"

# RFC 2606 §3: example.net is reserved for documentation: no third party owns a mailbox there, and
# unlike ".invalid" a server does not refuse it early for DNS reasons, which could hide a relay.
RELAY_TEST_TARGET = "example.net"
RELAY_TEST_HELO = "relay-test.example.org"
