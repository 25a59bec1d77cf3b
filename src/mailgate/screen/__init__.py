"""The message screener: attachment, keyword and envelope rules, clamd and rspamd (SPEC §3).

The session calls `Screener.needs_message` and `Screener.screen` at end of data and applies the
`Verdict`; `Screener.from_config` builds it from the validated `[[screen_rule]]`, `[antivirus]`,
`[spam]` and `[screen]` settings (config/schema.py declares them once).
"""

from mailgate.screen.rules import Rule, ScreenConfigError, ScreenContext
from mailgate.screen.screener import Screener, Verdict

__all__ = ["Rule", "ScreenConfigError", "ScreenContext", "Screener", "Verdict"]
