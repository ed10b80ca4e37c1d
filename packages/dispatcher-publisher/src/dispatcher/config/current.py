"""The process-wide config: installed by :func:`setup`, read by :func:`get_settings`."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from dispatcher.config.loading import load_settings
from dispatcher.config.settings import Settings

# Re-entrant: a signal handler (or a __del__) submitting while its thread loads the config
# on first use loads it itself rather than waiting for ever for the thread it interrupted.
_lock = threading.RLock()
_settings: Settings | None = None


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would stay held for ever in the child.
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def setup(
    config: Mapping[str, Any] | None = None,
    file_path: str | os.PathLike[str] | None = None,
    *,
    source: str | None = None,
) -> Settings:
    """Load, validate and install the config for this process; return it.

    *config* is a dict in the shape of ``dispatcher.yml``; *file_path* a YAML file. With
    neither, ``$DISPATCHER_CONFIG_FILE`` names the file, else ``$DISPATCHERD_CONFIG_FILE``,
    else ``./dispatcher.yml`` is read. A dispatcherd config (``version: 2``) is translated.
    Calling it again replaces the config. *source* names where a *config* dict came from,
    in error messages and warnings (default: ``config``).

    :raises ConfigError: when the config is missing, unreadable or invalid (the config in
        force, if any, stays).
    """
    settings = load_settings(config, file_path, source=source)
    global _settings
    with _lock:
        _settings = settings
    return settings


def get_settings() -> Settings:
    """Return the config in force, loading it from the usual places on first use.

    :raises NotConfiguredError: when :func:`setup` was not called and no file is found.
    :raises ConfigError: when the file found is invalid.
    """
    global _settings
    settings = _settings
    if settings is not None:
        return settings
    with _lock:
        if _settings is None:
            loaded = load_settings()
            if _settings is None:  # (a caller interrupting the load may have set one up)
                _settings = loaded
        return _settings


def install(settings: Settings) -> Settings:
    """Install a config already loaded (a variant of the one in force, say); return it."""
    global _settings
    with _lock:
        _settings = settings
    return settings


def is_setup() -> bool:
    """Tell whether a config is installed."""
    return _settings is not None


def reset() -> None:
    """Forget the config in force (the next use loads it again)."""
    global _settings
    with _lock:
        _settings = None
