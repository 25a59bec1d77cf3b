"""A password in `spam.rspamd_url` is used and never shown (the console helper found it written
into warning logs and /readyz through the client's error messages)."""

from __future__ import annotations

from mailgate.screen.rspamd import RspamdClient


def test_url_password_is_sent_as_the_password_header_and_never_shown() -> None:
    client = RspamdClient("http://scanner:s3cret-pw@127.0.0.1:11333/", timeout=1.0)
    assert client.url == "http://127.0.0.1:11333/"
    assert "s3cret-pw" not in client.url
    assert b"Password: s3cret-pw\r\n" in client._request_head(10, {})


def test_an_explicit_password_wins_and_a_plain_url_is_unchanged() -> None:
    client = RspamdClient("http://[::1]:11333", timeout=1.0, password="given")
    assert client.url == "http://[::1]:11333"
    assert b"Password: given\r\n" in client._request_head(10, {})
