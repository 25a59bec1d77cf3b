"""What a reload (SIGHUP) applies: the new configuration, minus the keys that need a restart.

Owns: merging the running and the newly loaded `Config` so that every key the schema marks
`restart` keeps its running value (as do the listeners beyond those running, and a listener's
switch to or from implicit TLS), and naming each such key that changed. The result describes
exactly what runs after the reload. Must not: apply anything (app.py does) or validate.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from mailgate.config.loader import Config, effective_tls
from mailgate.config.schema import SECTIONS, Section


def reloadable(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """The configuration a reload applies, and one line per change that waits for a restart."""
    waiting: list[str] = []
    merged = {}
    for section in SECTIONS:
        old, new = getattr(running, section.name), getattr(loaded, section.name)
        if not section.array:
            merged[section.name] = _keep_restart_keys(section, section.name, old, new, waiting)
        elif section.name == "listener":
            merged[section.name] = _listeners(section, old, new, waiting)
        else:  # arrays without restart keys apply whole
            merged[section.name] = new
    return replace(loaded, **merged), waiting


def _keep_restart_keys(section: Section, path: str, old: SimpleNamespace, new: SimpleNamespace,
                       waiting: list[str]) -> SimpleNamespace:
    values = vars(new).copy()
    for key in section.keys:
        if key.restart and values[key.name] != getattr(old, key.name):
            waiting.append(f"{path}.{key.name} changed; it takes effect after a restart "
                           f"(running: {getattr(old, key.name)!r})")
            values[key.name] = getattr(old, key.name)
    return SimpleNamespace(**values)


def _listeners(section: Section, old: list[SimpleNamespace], new: list[SimpleNamespace],
               waiting: list[str]) -> list[SimpleNamespace]:
    if len(new) != len(old):
        waiting.append(f"listener: {len(new)} configured, {len(old)} running; adding or removing "
                       "a listener takes a restart")
    merged = []
    for index, running in enumerate(old):
        if index >= len(new):
            merged.append(running)
            continue
        listener = _keep_restart_keys(section, f"listener[{index}]", running, new[index], waiting)
        if (effective_tls(running) == "implicit") != (effective_tls(listener) == "implicit"):
            waiting.append(f"listener[{index}].tls: switching to or from implicit TLS takes a restart")
            listener.tls, listener.profile = running.tls, running.profile
        merged.append(listener)
    return merged
