"""``python -m dispatcher.server``: the same as ``dispatcher-standalone``."""

from dispatcher.server.cli import entry_point

entry_point()
