"""A task module that, when imported, writes down the config in force in its process.

The file is named by ``$DISPATCHER_TEST_CONFIG_PROBE``: a JSON object with the config's
``source`` and pg_notify ``channels``, or its ``error`` when there is none.
"""

import json
import os

from dispatcher.config import ConfigError, get_settings

_path = os.environ.get("DISPATCHER_TEST_CONFIG_PROBE")
if _path:
    try:
        _settings = get_settings()
    except ConfigError as exc:
        _seen: dict[str, object] = {"error": str(exc)}
    else:
        _pg_notify = _settings.brokers.pg_notify
        _seen = {
            "source": _settings.source,
            "channels": list(_pg_notify.channels) if _pg_notify is not None else [],
        }
    with open(_path, "w") as _probe:
        json.dump(_seen, _probe)
