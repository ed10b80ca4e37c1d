"""``python -m dispatcher.server``: the same as ``dispatcher-standalone``."""

from dispatcher.server.scripts import dispatcher_standalone

dispatcher_standalone()
