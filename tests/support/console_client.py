"""A small HTTP(S) client for the web console tests: cookies kept by hand, redirects not followed.

Owns: one request at a time over http.client, the Set-Cookie attributes of each answer (the
tests check Secure, HttpOnly and SameSite), the cookies sent back (Secure ones too: loopback is a
secure context for browsers, and http.cookiejar would drop them), reading the CSRF token and the
log-in form token from a page. Must not: check anything itself.
"""

from __future__ import annotations

import http.client
import re
import ssl
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlencode


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str
    set_cookies: list[str] = field(default_factory=list)

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


class ConsoleClient:
    def __init__(self, port: int, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, fields: dict | None = None, headers: dict | None = None) -> Answer:
        if self.tls is not None:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, context=self.tls, timeout=60)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        body = None
        if fields is not None:
            body = urlencode(fields)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
            set_cookies = response.headers.get_all("Set-Cookie") or []
        finally:
            connection.close()
        for line in set_cookies:
            for name, morsel in SimpleCookie(line).items():
                if morsel["max-age"] == "0" or "1970" in morsel["expires"]:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return Answer(response.status, response.headers, text, set_cookies)

    def get(self, path: str, **kwargs) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, fields: dict, **kwargs) -> Answer:
        return self.request("POST", path, fields, **kwargs)

    def log_in(self, user: str, password: str) -> Answer:
        form = self.get("/login")
        return self.post("/login", {"user": user, "password": password, "next": "/",
                                    "login_token": hidden(form.body, "login_token")})

    def csrf(self, path: str = "/") -> str:
        return hidden(self.get(path).body, "csrf")


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no hidden field {name} in the page"
    return found.group(1)
