"""Run LinkedIn group-outreach campaigns through the ConnectSafely API, at most once per recipient."""

__version__ = "0.1.0"
