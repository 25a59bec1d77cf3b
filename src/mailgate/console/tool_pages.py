"""The tools page: relay-test, explain and mx forms, and the configuration shown read-only.

Owns: reading each form, running the same engine as the command (tools/relay_test.py,
tools/explain.py through `cli.explain_cmd.explain_with_config`, tools/mx_probe.py) and showing
the text the command prints, from the command's own renderer, so the two never differ; and
`/config`, the effective configuration as `mailgate config show` prints it, secrets masked
(config/show.py).
Must not: hold any logic of a tool, or print anything `mailgate` would not.

The forms are POSTs: they make outbound connections and DNS queries, so they carry the CSRF
token like every action.
"""

from __future__ import annotations

from aiohttp import web

from mailgate.cli.explain_cmd import ExplainUsageError, explain_with_config
from mailgate.cli.explain_cmd import render as render_explanation
from mailgate.cli.mx_cmd import render_lookup, render_probe
from mailgate.cli.relay_test_cmd import render as render_relay_test
from mailgate.config.show import config_text
from mailgate.config.types import parse_host_port
from mailgate.console.context import Console
from mailgate.dns.resolver import DnsPythonResolver
from mailgate.tools.explain import Hypothetical
from mailgate.tools.mx_probe import lookup, probe, probe_targets, validate_domain
from mailgate.tools.options import RELAY_TEST_HELO
from mailgate.tools.relay_test import RelayTestSettings, run_relay_test

RELAY_TEST_TIMEOUT = 10.0  # seconds per reply: the page waits for the whole test
MX_TIMEOUT = 10.0


def add_routes(router: web.UrlDispatcher, console: Console) -> None:
    def show(request: web.Request, tool: str, output: str, form: dict, error: str = "") -> web.Response:
        return console.render(request, "tools.html", tool=tool, output=output, form=form, error=error,
                              status=400 if error else 200)

    async def page(request: web.Request) -> web.Response:
        return show(request, "", "", {})

    async def relay_test(request: web.Request) -> web.Response:
        form = dict(await request.post())
        try:
            host, port = parse_host_port(str(form.get("server", "")).strip(), 25)
        except ValueError as exc:
            return show(request, "relay-test", "", form, f"server: {exc}")
        settings = RelayTestSettings(
            host=host, port=port, rcpt_to=str(form.get("to", "")).strip() or None,
            hosted=str(form.get("domain", "")).strip() or None, helo=RELAY_TEST_HELO,
            source_address=str(form.get("source", "")).strip() or None, timeout=RELAY_TEST_TIMEOUT,
        )
        report = await run_relay_test(settings)
        return show(request, "relay-test", render_relay_test(report), form)

    async def explain(request: web.Request) -> web.Response:
        form = dict(await request.post())
        recipients = tuple(r.strip().strip("<>") for r in str(form.get("to", "")).replace(",", " ").split() if r.strip())
        if not str(form.get("client", "")).strip() or not recipients:
            return show(request, "explain", "", form, "client and at least one recipient are needed")
        hypothetical = Hypothetical(
            client_ip=str(form.get("client", "")).strip(), mail_from=str(form.get("from", "")).strip().strip("<>"),
            recipients=recipients, helo=str(form.get("helo", "")).strip(),
            user=str(form.get("user", "")).strip() or None,
        )
        try:
            result = await explain_with_config(console.services.config(), hypothetical,
                                               str(form.get("listener", "")).strip() or None)
        except ExplainUsageError as exc:
            return show(request, "explain", "", form, str(exc))
        return show(request, "explain", render_explanation(result), form)

    async def mx(request: web.Request) -> web.Response:
        form = dict(await request.post())
        try:
            domain = validate_domain(str(form.get("domain", "")).strip())
        except ValueError as exc:
            return show(request, "mx", "", form, str(exc))
        dns = console.services.config().dns
        resolver = DnsPythonResolver(list(dns.nameservers) or None, dns.port, MX_TIMEOUT)
        report = await lookup(resolver, domain)
        parts = [render_lookup(report)]
        if form.get("probe"):
            helo = console.services.config().server.hostname
            for host, address in probe_targets(report):
                parts.append(render_probe(await probe(host, address, 25, helo=helo, timeout=MX_TIMEOUT)))
        return show(request, "mx", "\n\n".join(parts), form)

    async def configuration(request: web.Request) -> web.Response:
        config = console.services.config()
        return console.render(request, "config.html", source=config.source, text=config_text(config))

    router.add_get("/tools", page)
    router.add_post("/tools/relay-test", relay_test)
    router.add_post("/tools/explain", explain)
    router.add_post("/tools/mx", mx)
    router.add_get("/config", configuration)
