"""SIGHUP applies every section (issue 20 item 2): each section's change reaches the component
that uses it, and a key that needs a restart keeps its running value with a warning naming it.

The Application is built from a real file and reloaded in process, as its SIGHUP handler does
(no socket is opened: reload() only swaps settings); test_reload_drain.py signals a real child.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mailgate.app import Application
from mailgate.auth.dkim_keys import generate_private_key, write_private_key
from mailgate.config.loader import load_file

SECTIONS = {
    "server": '[server]\nhostname = "mx.test"\nspool_dir = "{spool}"\nusers_file = "{users}"\n',
    "listener": '[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "none"\n',
    "relay": '[relay]\ntrusted_networks = ["127.0.0.1/32"]\n',
    "domain": '[[domain]]\nname = "hosted.test"\nnext_hop = ["127.0.0.1:2600"]\n',
    "recipient_source": "",
    "delivery": "[delivery]\n",
    "dns": "[dns]\n",
    "screen": "[screen]\n",
    "screen_rule": "",
    "antivirus": "[antivirus]\n",
    "spam": "[spam]\n",
    "limits": "[limits]\n",
    "dkim": "[dkim]\n",
    "dkim_key": "",
    "authentication": "[authentication]\n",
    "log": "[log]\n",
    "metrics": "[metrics]\n",
    "console": '[console]\nenabled = true\naddress = "127.0.0.1:8025"\n',
    "queue": "[queue]\n",
}

# section -> (its new text, the check that the running application uses it)
LIVE = {
    "server": ('[server]\nhostname = "mx.test"\nspool_dir = "{spool}"\nusers_file = "{users}"\nmax_recipients = 7\n'
               "received_limit = 9\n",
               lambda app: (app.reception.max_recipients, app.reception.received_limit) == (7, 9)),
    "listener": ('[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "none"\nmax_message_size = "1M"\n'
                 "error_budget = 3\n",
                 lambda app: (app.profiles[0].max_message_size, app.profiles[0].error_budget) == (1 << 20, 3)),
    "relay": ('[relay]\ntrusted_networks = ["127.0.0.1/32", "10.9.0.0/16"]\n',
              lambda app: "10.9.0.0/16" in map(str, app.reception.policy.settings.trusted_networks)),
    "domain": ('[[domain]]\nname = "hosted.test"\nnext_hop = ["127.0.0.1:2600"]\n'
               '[[domain]]\nname = "second.test"\nnext_hop = ["maildir:{spool}/box"]\n',
               lambda app: "second.test" in app.reception.policy.settings.hosted_domains
               and "second.test" in app.router._settings.hosted),
    "recipient_source": ('[[recipient_source]]\nname = "users"\ntype = "file"\npath = "{spool}.recipients"\n'
                         '[[domain]]\nname = "users.test"\nnext_hop = ["127.0.0.1:2601"]\nrecipient_sources = ["users"]\n',
                         lambda app: app.reception.recipients is not None
                         and app.reception.recipients.chain_for("users.test") is not None),
    "delivery": ('[delivery]\nsmart_host = "127.0.0.1:2700"\nhelo_name = "out.test"\n',
                 lambda app: app.router._settings.helo_name == "out.test"
                 and app.router._settings.smart_host.port == 2700),
    "dns": ('[dns]\nnameservers = ["127.0.0.9"]\nport = 5353\ndnsbl_zones = ["bl.test"]\n',
            lambda app: app.resolver._resolver.nameservers == ["127.0.0.9"] and app.resolver._resolver.port == 5353
            and app.reception.dnsbl_zones == ("bl.test",)),
    "screen_rule": ('[[screen_rule]]\nname = "no-invoices"\nbody = ["invoice"]\naction = "reject"\n',
                    lambda app: app.reception.screener is not None
                    and [r.name for r in app.reception.screener.rules] == ["no-invoices"]),
    "screen": ('[screen]\ntime_limit = 7\nuninspected_action = "tempfail"\n'
               '[[screen_rule]]\nname = "no-invoices"\nbody = ["invoice"]\naction = "reject"\n',
               lambda app: app.reception.screener is not None and app.reception.screener.time_limit == 7
               and app.reception.screener.uninspected_action == "tempfail"),
    "antivirus": ('[antivirus]\nclamd = "tcp:127.0.0.1:3310"\nfail_open = false\n',
                  lambda app: app.reception.screener is not None
                  and app.reception.screener.clamd.address == "tcp:127.0.0.1:3310"),
    "spam": ('[spam]\nrspamd_url = "http://127.0.0.1:11333"\n',
             lambda app: app.reception.screener is not None
             and app.reception.screener.rspamd.url == "http://127.0.0.1:11333"),
    "limits": ("[limits]\nmessages_per_client = 40\n",
               lambda app: app.reception.rate_limits is not None and app.reception.rate_limits.per_client is not None),
    "dkim_key": ('[[dkim_key]]\ndomain = "hosted.test"\nselector = "s1"\nkey_file = "{spool}.dkim.key"\n',
                 lambda app: app.reception.authenticator.signer is not None
                 and [k.selector for k in app.reception.authenticator.signer.keys_for("hosted.test")] == ["s1"]),
    "authentication": ('[authentication]\nauthserv_id = "auth.mx.test"\nspf_fail_action = "reject"\n',
                       lambda app: app.reception.authenticator.inbound.settings.authserv_id == "auth.mx.test"
                       and app.reception.authenticator.inbound.settings.spf_fail_action == "reject"),
    "dkim": ('[dkim]\noversign_headers = ["from", "subject", "x-campaign"]\n'
             '[[dkim_key]]\ndomain = "hosted.test"\nselector = "s1"\nkey_file = "{spool}.dkim.key"\n',
             lambda app: app.reception.authenticator.signer is not None
             and b"x-campaign" in app.reception.authenticator.signer.header_list(b"From: a@hosted.test\r\n")),
    "console": ('[console]\nenabled = true\naddress = "127.0.0.1:8025"\nsession_lifetime = "1h"\nlogin_failures = 3\n',
                lambda app: app.console is not None and app.console.sessions.lifetime == 3600
                and app.console.console.settings.login_failures == 3),
}

# section -> (new text, the key the warning names); the running value stays
RESTART = {
    "server": ('[server]\nhostname = "other.test"\nspool_dir = "{spool}"\nusers_file = "{users}"\n',
               "server.hostname", lambda app: app.config.server.hostname == "mx.test"),
    "listener": ('[[listener]]\nname = "mx"\naddress = "127.0.0.1:2526"\ntls = "none"\n',
                 "listener[0].address", lambda app: app.config.listener[0].address == ("127.0.0.1", 2525)),
    "delivery": ('[delivery]\nmax_lifetime = "1d"\n',
                 "delivery.max_lifetime", lambda app: app.config.delivery.max_lifetime == 5 * 86400),
    "log": ('[log]\nlevel = "debug"\n', "log.level", lambda app: app.config.log.level == "info"),
    "metrics": ('[metrics]\naddress = "127.0.0.1:9100"\n', "metrics.address",
                lambda app: app.config.metrics.address == ""),
    "console": ('[console]\nenabled = true\naddress = "127.0.0.1:8026"\n', "console.address",
                lambda app: app.config.console.address == "127.0.0.1:8025"),
    "queue": ('[queue]\nnode_name = "mx-b"\ntakeover_time = "30s"\n', "queue.takeover_time",
              lambda app: (app.config.queue.node_name, app.config.queue.takeover_time) == ("", 60)),
}


def write(path: Path, spool: Path, replaced: dict[str, str]) -> None:
    text = "\n".join(replaced.get(name, default) for name, default in SECTIONS.items())
    path.write_text(text.format(spool=spool, users=spool.parent / "users"))


@pytest.fixture
def built(tmp_path: Path):  # type: ignore[no-untyped-def]
    path, spool = tmp_path / "mailgate.toml", tmp_path / "spool"
    write_private_key(f"{spool}.dkim.key", generate_private_key("ed25519"))
    Path(f"{spool}.recipients").write_text("someone@users.test\n")
    write(path, spool, {})
    app = Application(load_file(path))
    yield app, path, spool
    app.log.close()


@pytest.mark.parametrize("section", sorted(LIVE))
def test_reload_applies_the_section(built, section: str, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    app, path, spool = built
    text, applied = LIVE[section]
    assert not applied(app)
    write(path, spool, {section: text})
    with caplog.at_level(logging.INFO, logger="mailgate"):
        app.reload()
    assert "configuration reloaded" in caplog.text and "restart" not in caplog.text, caplog.text
    assert applied(app)


@pytest.mark.parametrize("section", sorted(RESTART))
def test_reload_names_each_key_that_needs_a_restart(built, section: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    app, path, spool = built
    text, key, kept = RESTART[section]
    write(path, spool, {section: text})
    with caplog.at_level(logging.INFO, logger="mailgate"):
        app.reload()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(key in line and "takes effect after a restart" in line for line in warnings), caplog.text
    assert kept(app)


def test_every_section_is_covered() -> None:
    from mailgate.config.schema import SECTIONS as SCHEMA

    assert {s.name for s in SCHEMA} == set(LIVE) | set(RESTART) == set(SECTIONS)


def test_adding_a_listener_takes_a_restart(built, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    app, path, spool = built
    write(path, spool, {"listener": SECTIONS["listener"] + '[[listener]]\nname = "sub"\naddress = "127.0.0.1:2587"\n'
                                                          'tls = "none"\nauth = "none"\n'})
    with caplog.at_level(logging.WARNING, logger="mailgate"):
        app.reload()
    assert "adding or removing a listener takes a restart" in caplog.text
    assert len(app.config.listener) == len(app.profiles) == 1
