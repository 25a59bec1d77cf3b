"""The console's HTTP(S) server: aiohttp on the server's own event loop, in worker 0 only.

Owns: the socket on `console.address` (bound by the supervisor, server/listen_sockets.py, like
the listeners: before privileges are dropped, and an address in use stops the start), the
aiohttp application with its guard (every request but the log-in page and the static files
needs a live session of a user who still has the admin role; every POST needs the session's
CSRF token and, when the browser sends one, our own Origin), the security headers of every
answer, log-in and log-out with rate-limited failures, and the page modules' routes.
Must not: implement a page (dashboard.py, queue_pages.py, trace_pages.py, tool_pages.py) or
queue operations (delivery/admin.py).

Where it runs: in worker 0, the process that also serves the control socket of `mailgate queue`.
It is served exactly once whatever `server.workers` is: sessions and the log-in rate limit live
in one process's memory, and a second copy behind SO_REUSEPORT would log people out at random.
Worker 0 acts on the shared queue store as the control socket does, and the dashboard reads the
JSON transaction log that every worker writes, so it shows the whole server.

Why aiohttp and Jinja2: aiohttp is a maintained HTTP/1.1 server that runs on the existing asyncio
loop (no thread, no second loop), does TLS through the same `ssl.SSLContext` as the listeners and
bounds request sizes; Jinja2 renders the pages on the server with autoescaping, so the browser
needs only a few lines of JavaScript (the dashboard refresh) and there is no Node build.

Cookies: the session cookie is Secure, HttpOnly and SameSite=Strict. Browsers keep Secure
cookies from http://127.0.0.1 and http://localhost (loopback is a secure context; the browser
test checks it in Chromium), which is the only place plain HTTP is allowed (config/loader.py
refuses anything else).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import socket
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web

from mailgate.auth.lockout import AuthFailureTracker
from mailgate.auth.store import ADMIN_ROLE
from mailgate.console import dashboard, queue_pages, tool_pages, trace_pages
from mailgate.console.context import SESSION_KEY, Console, ConsoleServices
from mailgate.console.settings import ConsoleSettings
from mailgate.console.sessions import csrf_matches

log = logging.getLogger("mailgate.console")

SESSION_COOKIE = "mailgate_session"
LOGIN_COOKIE = "mailgate_login"  # double-submit token of the log-in form (no session exists yet)
MAX_REQUEST = 64 * 1024  # our bound: the largest form is a few fields
LOCKOUT_WINDOW = 900.0  # seconds, as for SMTP AUTH (auth/lockout.py)
STATIC = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/login", "/favicon.ico")
_LOGIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # what token_urlsafe(32) makes
SECURITY_HEADERS = {
    # Only our own scripts, styles and forms; never framed (clickjacking); no referrer to other
    # sites (`same-origin`, not `no-referrer`: with that, Chromium sends `Origin: null` on our own
    # form posts and the Origin check would refuse them).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class ConsoleServer:
    def __init__(self, settings: ConsoleSettings, services: ConsoleServices, sock: socket.socket | None = None) -> None:
        self.console = Console(settings, services)
        self._sock = sock
        self.lockout = AuthFailureTracker(services.clock, max_failures=settings.login_failures,
                                          window=LOCKOUT_WINDOW, lockout=LOCKOUT_WINDOW)
        self.app = web.Application(middlewares=[self._guard], client_max_size=MAX_REQUEST)
        self.app.router.add_get("/login", self._login_form)
        self.app.router.add_post("/login", self._login)
        self.app.router.add_post("/logout", self._logout)
        self.app.router.add_static("/static/", STATIC, append_version=False)
        self.app.router.add_get("/favicon.ico", _no_icon)
        for module in (dashboard, queue_pages, trace_pages, tool_pages):
            module.add_routes(self.app.router, self.console)
        self._runner: web.AppRunner | None = None
        self.bound_port = settings.port

    @property
    def sessions(self):
        return self.console.sessions

    def reload(self, settings: ConsoleSettings) -> None:
        """SIGHUP: the session lifetime and the log-in limit; address and TLS need a restart."""
        self.console.sessions.lifetime = settings.session_lifetime
        if settings.login_failures != self.console.settings.login_failures:  # else keep what it counted
            self.lockout = AuthFailureTracker(self.console.services.clock, max_failures=settings.login_failures,
                                              window=LOCKOUT_WINDOW, lockout=LOCKOUT_WINDOW)
        self.console.settings = settings

    async def start(self) -> None:
        settings = self.console.settings
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self._sock is not None:
            site: web.BaseSite = web.SockSite(self._runner, self._sock, ssl_context=settings.tls_context)
        else:
            site = web.TCPSite(self._runner, settings.host, settings.port, ssl_context=settings.tls_context,
                               reuse_address=True)
        await site.start()
        self.bound_port = self._runner.addresses[0][1]
        scheme = "https" if settings.tls_context else "http"
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        log.info("web console on %s://%s:%d/", scheme, host, self.bound_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the guard ----------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await self._checked(request, handler)
        except web.HTTPException as exc:  # redirects and refusals carry the headers too
            self._secure(exc.headers)
            raise
        self._secure(response.headers)
        return response

    def _secure(self, headers) -> None:
        for name, value in SECURITY_HEADERS.items():
            headers.setdefault(name, value)
        if self.console.https:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000")

    async def _checked(self, request: web.Request, handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD", "POST"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST"])
        if request.method == "POST" and not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused (Origin)\n")
        if request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        token = request.cookies.get(SESSION_COOKIE)
        session = self.console.sessions.find(token)
        if session is not None and not self.console.services.users.has_role(session.user, ADMIN_ROLE):
            self.console.sessions.close(token)  # the admin role was taken away: the session ends now
            session = None
        if session is None:
            if request.method == "GET":
                raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")
            raise web.HTTPUnauthorized(text="log in first\n")
        request[SESSION_KEY] = session
        if request.method == "POST":
            form = await request.post()
            if not csrf_matches(session, form.get("csrf")):  # type: ignore[arg-type]
                raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again\n")
        return await handler(request)

    def _same_origin(self, request: web.Request) -> bool:
        """A browser's Origin (RFC 6454 §7) must name us; a client that sends none is judged by
        the CSRF token alone."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        parts = urlsplit(origin)
        return parts.scheme == request.scheme and parts.netloc == request.host

    # --- log-in and log-out -------------------------------------------------------------------
    async def _login_form(self, request: web.Request, *, error: str = "", status: int = 200,
                          next_path: str | None = None) -> web.Response:
        # The same token for every log-in page of this browser: a second page load (another tab,
        # the browser's own favicon request redirected here) must not void the form on screen.
        token = request.cookies.get(LOGIN_COOKIE, "")
        if not _LOGIN_TOKEN.fullmatch(token):
            token = secrets.token_urlsafe(32)
        response = self.console.render(request, "login.html", status=status, error=error, login_token=token,
                                       next=_safe_next(next_path or request.query.get("next", "/")))
        self._set_cookie(response, LOGIN_COOKIE, token, max_age=3600)
        return response

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not csrf_token_equal(expected, str(form.get("login_token", ""))):
            raise web.HTTPForbidden(text="missing or wrong log-in form token: reload the page and try again\n")
        client = request.remote or "?"
        user, password = str(form.get("user", "")).strip(), str(form.get("password", ""))
        if not self.lockout.begin_check(client):
            log.warning("console log-in refused for %s: too many failures", client)
            return await self._login_form(request, error="Too many failed log-ins from your address; "
                                          "try again in 15 minutes.", status=429, next_path=str(form.get("next", "/")))
        try:
            users = self.console.services.users
            accepted = bool(user and password) and await asyncio.to_thread(users.verify, user, password)
            accepted = accepted and users.has_role(user, ADMIN_ROLE)
            (self.lockout.success if accepted else self.lockout.failure)(client)
        finally:
            self.lockout.end_check(client)
        if not accepted:
            log.warning("console log-in failed for %r from %s", user, client)
            return await self._login_form(request, error="Wrong name or password, or not an admin.", status=401,
                                          next_path=str(form.get("next", "/")))
        token, _session = self.console.sessions.open(user.lower(), client)
        log.info("console log-in of %s from %s", user.lower(), client)
        response = web.HTTPSeeOther(_safe_next(str(form.get("next", "/"))))
        self._set_cookie(response, SESSION_COOKIE, token)
        response.del_cookie(LOGIN_COOKIE, path="/")
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self.console.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="Strict", max_age=max_age)


async def _no_icon(_request: web.Request) -> web.Response:
    """Browsers ask for one on their own: an empty answer, not a redirect to the log-in page."""
    return web.Response(status=204)


def csrf_token_equal(expected: str, submitted: str) -> bool:
    return secrets.compare_digest(expected.encode(), submitted.encode())


def _safe_next(target: str) -> str:
    """Only a path of ours after log-in: never another site (open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target[1:2] in ("/", "\\"):
        return "/"
    return target
