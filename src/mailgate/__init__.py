"""mailgate: an SMTP relay (mail gateway, edge transport, smart host)."""

__version__ = "0.1.0"
