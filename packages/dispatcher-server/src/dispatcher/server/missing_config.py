"""What both commands say when no config file was named and none is found.

Apart from :mod:`~dispatcher.server.cli`, whose signal handling is Linux's: ``dispatcherctl``
says the same on every platform.
"""

from __future__ import annotations

import os

from dispatcher.config import CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE, DISPATCHERD_CONFIG_FILE_ENV
from dispatcher.config.errors import escaped


def no_config_found() -> str:
    """What to do when no config file was named and ``./dispatcher.yml`` does not exist."""
    return (
        f"no config file found: pass --config FILE, or set {CONFIG_FILE_ENV} (or "
        f"{DISPATCHERD_CONFIG_FILE_ENV}), or create {DEFAULT_CONFIG_FILE} in the working "
        f"directory ({escaped(os.getcwd())})"
    )
