"""The effective configuration as TOML text, secrets masked (`mailgate config show`, the console).

Owns: rendering a loaded `Config` section by section with every default filled in, optionally
only the keys that differ from their default (like `postconf -n`), and masking secrets.
Must not: load or validate (loader.py) or print (cli/config_cmd.py, console/).

Secrets: the configuration names files for passwords and keys (their contents are never read
here), but a URL may carry credentials in its userinfo (`ldap://user:password@host`, an rspamd
URL with a password): those are shown as `***`.
"""

from __future__ import annotations

import re

from mailgate.config.loader import Config
from mailgate.config.schema import REQUIRED, SECTIONS, Key
from mailgate.config.types import format_host_port

MASK = "***"
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def mask_secrets(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://***@host`."""
    return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


def config_text(config: Config, *, non_default: bool = False) -> str:
    lines: list[str] = []
    for section in SECTIONS:
        tables = getattr(config, section.name)
        for table in tables if section.array else [tables]:
            keys = [key for key in section.keys if not (non_default and _is_default(key, getattr(table, key.name)))]
            if not keys and not section.array:
                continue  # non_default: a section left at its defaults is not shown
            lines.append(f"[[{section.name}]]" if section.array else f"[{section.name}]")
            lines += [f"{key.name} = {mask_secrets(_render(key, getattr(table, key.name)))}" for key in keys]
            lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")


def _is_default(key: Key, value) -> bool:
    if key.default is REQUIRED:
        return False
    default = list(key.default) if isinstance(key.default, tuple) else key.default
    return key.kind.convert(default) == value


def _render(key, value) -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int) and isinstance(value[0], str):
        return f'"{format_host_port(value)}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return key.kind.render(value)
