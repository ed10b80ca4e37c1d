"""The config in force: installed by :func:`setup`, read by :func:`get_settings`.

The process-wide one, unless :func:`using` gives another to a block of code: for that
thread or asyncio task only.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from dispatcher.config.forking import at_fork
from dispatcher.config.loading import load_settings
from dispatcher.config.settings import Settings
from dispatcher.schema import InvalidArgumentType

# Re-entrant: a signal handler (or a __del__) submitting while its thread loads the config
# on first use loads it itself rather than waiting for ever for the thread it interrupted.
_lock = threading.RLock()
_settings: Settings | None = None


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would stay held for ever in the child.
    global _lock
    _lock = threading.RLock()


at_fork(after_in_child=_after_fork_in_child)


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
    _replaced(settings)
    return settings


class _Override:
    """A config given to a block of code (see :func:`using`), over the one it was given before."""

    __slots__ = ("__weakref__", "in_force", "parent", "settings")

    def __init__(
        self, settings: Settings, parent: _Override | None, in_force: Callable[[], bool] | None
    ) -> None:
        self.settings = settings
        self.parent = parent
        """The override in force where this one began, if any."""
        self.in_force = in_force
        """Whether it is still in force (``None``: while the ContextVar holds it): a batch's
        ends with its block, even a block abandoned without its exit having run."""


_override: ContextVar[_Override | None] = ContextVar("dispatcher_config", default=None)
"""The innermost config given to this thread's or task's code, if any (see :func:`using`)."""

_overrides: weakref.WeakSet[_Override] = weakref.WeakSet()
"""The overrides that some context may still hold (each until it is let go of)."""


def _overriding(override: _Override | None) -> Settings | None:
    """The config *override* gives, or the one of the innermost override still in force."""
    while override is not None:
        in_force = override.in_force
        if in_force is None or in_force():
            return override.settings
        override = override.parent
    return None


def get_settings() -> Settings:
    """Return the config in force, loading it from the usual places on first use.

    That is the config of the innermost :func:`using` block the caller is in, else the
    process-wide one (:func:`setup`).

    :raises NotConfiguredError: when :func:`setup` was not called and no file is found.
    :raises ConfigError: when the file found is invalid.
    """
    global _settings
    override = _override.get()
    if override is not None:
        given = _overriding(override)
        if given is not None:
            return given
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
    _replaced(settings)
    return settings


_when_replaced: list[Callable[[Settings], object]] = []


def when_replaced(hook: Callable[[Settings], object]) -> None:
    """Call *hook* with the new config each time :func:`setup` or :func:`install` installs one.

    For what the SDK keeps per database: what no config in use needs any more is let go of.
    """
    _when_replaced.append(hook)


def _replaced(settings: Settings) -> None:
    for hook in list(_when_replaced):
        hook(settings)


def is_setup() -> bool:
    """Tell whether a process-wide config is installed (:func:`using` blocks aside)."""
    return _settings is not None


def in_force() -> Settings | None:
    """The config in force here, if one is (never loaded here, unlike :func:`get_settings`)."""
    override = _override.get()
    given = None if override is None else _overriding(override)
    return _settings if given is None else given


class Using:
    """A block of code under a config of its own: what :func:`using` returns; entered once."""

    __slots__ = ("_token", "settings")

    def __init__(self, settings: Settings) -> None:
        if not isinstance(settings, Settings):
            raise InvalidArgumentType(
                f"using() takes a Settings, not {type(settings).__name__}: load the config"
                " once with dispatcher.config.load_settings(...) and pass what it returns"
            )
        self.settings = settings
        """The config the block's code uses."""
        self._token: Token[_Override | None] | None = None

    def __enter__(self) -> Settings:
        """Give the block :attr:`settings`; return it.

        :raises RuntimeError: when the block was entered before.
        """
        if self._token is not None:
            raise RuntimeError("this using() block is entered already: each with takes its own")
        self._token = override(self.settings)
        return self.settings

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Give back the config in force before the block."""
        token, self._token = self._token, None
        if token is not None:
            _override.reset(token)


def using(settings: Settings) -> Using:
    """Use *settings*, rather than the process-wide config, in the block of a ``with``.

    ::

        tenant = load_settings(file_path="tenant.yml")  # once, at start-up
        with using(tenant):
            send_email.delay("someone@example.com")  # tenant.yml's brokers, queues, keys

    Everything in the block that reads the config in force (:func:`get_settings`) reads
    *settings*: the broker a task goes through and its queues, the signing key, the SDK's
    connections, ``batch()``, ``get_job()``, control commands. Only there: other threads
    and asyncio tasks keep theirs, but for asyncio tasks started in the block (and
    ``asyncio.to_thread``), which copy its context, as for any ``ContextVar``. Blocks nest;
    ``with`` and ``async with`` code alike use ``with using(...)``.

    :raises TypeError: when *settings* is not a :class:`Settings` (a dict or a path: load it
        with :func:`~dispatcher.config.load_settings` first, once).
    """
    return Using(settings)


def override(settings: Settings, in_force: Callable[[], bool] | None = None) -> Token[Any]:
    """Give *settings* to this context's code (while *in_force* says so); return the token.

    ``_override.reset(token)`` (:func:`restore`) gives back the config in force before.
    """
    given = _Override(settings, _override.get(), in_force)
    _overrides.add(given)
    return _override.set(given)


def restore(token: Token[Any]) -> None:
    """Give back the config in force before the :func:`override` that returned *token*."""
    _override.reset(token)


def overriding_configs() -> list[Settings]:
    """The configs :func:`using` blocks (and batches) may still give, in some context."""
    while True:
        try:
            given = list(_overrides)
        except RuntimeError:  # another thread (or a signal handler) added one meanwhile
            continue
        return [o.settings for o in given if o.in_force is None or o.in_force()]


def reset() -> None:
    """Forget the config in force (the next use loads it again)."""
    global _settings
    with _lock:
        _settings = None
