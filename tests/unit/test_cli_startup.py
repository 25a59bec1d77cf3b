"""The command line starts light: building its parser, and the --help of every command, imports
none of the heavy libraries or server packages a command needs only once it runs (issue 18:
`mailgate queue list` spent nine tenths of its second importing them). Structural, not timed:
a fresh interpreter reports which modules it loaded."""

from __future__ import annotations

import json
import subprocess
import sys

# Libraries that cost tens of milliseconds each, and the packages of the running server.
HEAVY = (
    "dns.resolver", "dns.asyncresolver", "cryptography", "aiohttp", "jinja2", "psycopg", "ldap3", "dkim",
    "argon2", "regex", "aiosmtplib", "ssl", "mailgate.app", "mailgate.app_config", "mailgate.server",
    "mailgate.delivery", "mailgate.screen", "mailgate.recipients", "mailgate.console", "mailgate.queue",
    "mailgate.supervisor", "mailgate.smtp", "mailgate.tools.certs", "mailgate.tools.sender",
    "mailgate.tools.relay_test", "mailgate.tools.mx_probe", "mailgate.tools.explain", "mailgate.config.loader",
)

EVERY_HELP = """
import argparse, contextlib, io, json, sys
from mailgate.cli.main import build_parser

def walk(parser, path):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + [name])

leaves = []
for path, parser in walk(build_parser(), []):
    parser.format_help()
    if not any(isinstance(action, argparse._SubParsersAction) for action in parser._actions):
        leaves.append([" ".join(path), callable(parser.get_default("handler"))])
with contextlib.redirect_stdout(io.StringIO()):
    try:
        build_parser().parse_args(["--help"])
    except SystemExit:
        pass
print(json.dumps({"modules": sorted(sys.modules), "leaves": leaves}))
"""


def loaded_by(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def heavy(modules: list[str]) -> list[str]:
    return [name for name in modules if any(name == h or name.startswith(h + ".") for h in HEAVY)]


def test_importing_the_command_line_loads_nothing_heavy() -> None:
    modules = loaded_by("import json, sys\nimport mailgate.cli.main\nprint(json.dumps({'modules': sorted(sys.modules)}))")
    assert heavy(modules["modules"]) == []
    assert "asyncio" not in modules["modules"]


def test_every_help_text_is_built_without_anything_heavy_and_every_command_has_its_handler() -> None:
    report = loaded_by(EVERY_HELP)
    assert heavy(report["modules"]) == []
    leaves = dict(report["leaves"])
    assert len(leaves) >= 30  # every action of every command (queue list, dkim check, ...)
    assert [path for path, has_handler in leaves.items() if not has_handler] == []
    assert {"version", "serve", "queue list", "queue migrate", "config check", "dkim keygen", "cert show",
            "user add", "screen test", "recipients check", "send", "mx", "relay-test", "explain", "stats"} <= set(leaves)
