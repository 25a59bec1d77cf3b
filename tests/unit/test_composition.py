"""The composition root's seams (issue 19 item 2): the settings every session shares are
translated once (app_config.reception_settings) and applied by an explicit reload method; the
observation object holds what app.py used to observe with."""

from __future__ import annotations

import dataclasses

import pytest

from mailgate.app_config import observation_settings, reception_settings
from mailgate.config.loader import load_text
from mailgate.core.clock import FakeClock
from mailgate.observe.observation import Observation
from mailgate.server.context import Reception

CONFIG = """
[server]
hostname = "mx.test"
max_recipients = 7
received_limit = 9
[[listener]]
name = "mx"
address = "127.0.0.1:2525"
tls = "none"
[[domain]]
name = "hosted.test"
next_hop = ["127.0.0.1:2600"]
[dns]
dnsbl_zones = ["bl.test"]
[metrics]
address = "127.0.0.1:9100"
"""


class _Users:
    def allowed_senders(self, user: str) -> list[str]:
        return []


def _reception(**fields: object) -> Reception:
    return Reception(hostname="mx.test", policy=None, users=None, lockout=None, store=None, delivery=None,  # type: ignore[arg-type]
                     **fields)


def test_reception_settings_are_reception_fields_and_reload_applies_them() -> None:
    settings = reception_settings(load_text(CONFIG), _Users(), resolver=None, is_hosted=lambda name: False)  # type: ignore[arg-type]
    names = {field.name for field in dataclasses.fields(Reception)}
    assert set(settings) <= names
    reception = _reception()
    reception.reload(settings)
    assert (reception.max_recipients, reception.received_limit, reception.dnsbl_zones) == (7, 9, ("bl.test",))
    assert reception.policy is settings["policy"] and reception.policy.is_hosted("hosted.test")
    assert reception.postmaster_domain == "hosted.test"


def test_reload_refuses_a_name_that_is_no_field() -> None:
    # A misspelt setting would otherwise become an attribute no session ever reads: the reload
    # would look applied and change nothing.
    reception = _reception()
    with pytest.raises(TypeError, match="max_recipient"):
        reception.reload({"max_recipient": 3})
    assert reception.max_recipients == 1000 and not hasattr(reception, "max_recipient")


def test_each_worker_serves_metrics_on_its_own_port() -> None:
    config = load_text(CONFIG)
    assert observation_settings(config, 0).endpoint == ("127.0.0.1", 9100)
    assert observation_settings(config, 2).endpoint == ("127.0.0.1", 9102)
    assert observation_settings(load_text(CONFIG.replace('address = "127.0.0.1:9100"', 'address = ""'))).endpoint is None


def test_observation_without_files_or_endpoint_opens_nothing() -> None:
    observation = Observation(observation_settings(load_text(CONFIG.replace("127.0.0.1:9100", ""))), FakeClock(0.0),
                              readiness=list)
    try:
        assert observation.endpoint is None and observation.log.writer is None
    finally:
        observation.close()
