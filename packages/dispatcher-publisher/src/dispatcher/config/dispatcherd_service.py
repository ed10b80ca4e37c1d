"""Translation of dispatcherd's ``service`` section (``pool_kwargs``, ``main_kwargs``, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dispatcher.config.dispatcherd_translation import TranslationWriter, unknown_key
from dispatcher.config.legacy import Path

PROCESS_MANAGERS: Final = ("ForkServerManager", "ProcessManager", "SpawnServerManager")
"""dispatcherd's process managers; the first, its default, is what the service does."""

_POOL_MOVES: Final = {
    "min_workers": "min_workers",
    "max_workers": "max_workers",
    "scaledown_wait": "scaledown_wait",
    "worker_max_lifetime_seconds": "max_worker_lifetime",
}
_POOL_DROPPED: Final = {
    "scaledown_interval": "the pool is checked on every event and at least every second",
    "scaledown_reserve": "idle workers above min_workers stop after scaledown_wait",
    "worker_stop_wait": "see service.shutdown_grace and service.cancel_grace",
    "worker_removal_wait": "how long dispatcherd lists stopped workers",
    "results_read_timeout": "an internal wait of dispatcherd's pool",
}

_CHUNK_EXPIRY_MAX: Final = 31536000
"""The longest ``service.chunk_expiry``: what dispatcherd's "never expire" becomes."""


def translate_service(writer: TranslationWriter, value: Any) -> None:
    """Translate dispatcherd's ``service`` section."""
    section = writer.section(value, ("service",), ("service",))
    if section is None:
        return
    writer.put(("service",), ("service",), {})
    for key, item in section.items():
        where = ("service", key)
        if key == "pool_kwargs":
            _pool(writer, item)
        elif key == "main_kwargs":
            _main(writer, item)
        elif key == "metrics_kwargs":
            _metrics(writer, item)
        elif key == "process_manager_cls":
            _process_manager(writer, item)
        elif key == "process_manager_kwargs":
            _preload(writer, item)
        elif key == "control":  # ours (cancel_without_filter): kept, as our sections are
            writer.put(where, where, item)
        else:
            writer.warn(where, "not a key of dispatcherd's service section; ignored, as it does")


def _pool(writer: TranslationWriter, value: Any) -> None:
    old: Path = ("service", "pool_kwargs")
    section = writer.section(value, ("service", "pool"), old)
    if section is None:
        return
    writer.put(("service", "pool"), old, {})
    for key, item in section.items():
        where = (*old, key)
        if key in _POOL_MOVES:
            writer.put(("service", "pool", _POOL_MOVES[key]), where, item)
        elif key in _POOL_DROPPED:
            writer.warn(where, f"no equivalent ({_POOL_DROPPED[key]}); ignored")
        else:
            writer.error(where, unknown_key(key, [*_POOL_MOVES, *_POOL_DROPPED], "pool_kwargs"))


def _main(writer: TranslationWriter, value: Any) -> None:
    old: Path = ("service", "main_kwargs")
    if value is None:
        return  # dispatcherd reads null as no options
    if not isinstance(value, Mapping):
        writer.error(old, f"expected object or null, got {type(value).__name__}")
        return
    for key, item in value.items():
        where = (*old, key)
        if key == "node_id":
            if item is not None:
                writer.put(("service", "node_id"), where, item)
        elif key == "chunk_message_timeout_seconds":
            if isinstance(item, int | float) and not isinstance(item, bool) and item <= 0:
                writer.warn(
                    where,
                    "0 or less (never expire) has no equivalent: incomplete chunked "
                    f"messages expire after {_CHUNK_EXPIRY_MAX} seconds (one year)",
                )
                item = _CHUNK_EXPIRY_MAX
            writer.put(("service", "chunk_expiry"), where, item)
        else:
            allowed = ["node_id", "chunk_message_timeout_seconds"]
            writer.error(where, unknown_key(key, allowed, "main_kwargs"))


def _metrics(writer: TranslationWriter, value: Any) -> None:
    old: Path = ("service", "metrics_kwargs")
    if value is None:
        return  # null: no metrics server, as in dispatcherd
    section = writer.section(value, ("service", "metrics"), old)
    if section is None:
        return
    writer.put(("service", "metrics"), old, {})
    for key, item in section.items():
        where = (*old, key)
        if key in ("host", "port"):
            writer.put(("service", "metrics", key), where, item)
        elif key == "log_level":
            writer.warn(where, "an option of older dispatcherd releases with no equivalent")
        else:
            writer.error(where, unknown_key(key, ["host", "port"], "metrics_kwargs"))


def _process_manager(writer: TranslationWriter, value: Any) -> None:
    where: Path = ("service", "process_manager_cls")
    if value is None or value == PROCESS_MANAGERS[0]:
        return  # workers are forked from a fork server here too
    if value in PROCESS_MANAGERS:
        writer.warn(where, f"{value!r} has no equivalent: workers start from a fork server")
    else:
        choices = ", ".join(PROCESS_MANAGERS)
        writer.error(where, f"not a dispatcherd process manager (expected one of {choices})")


def _preload(writer: TranslationWriter, value: Any) -> None:
    old: Path = ("service", "process_manager_kwargs")
    if value is None:
        return
    if not isinstance(value, Mapping):
        writer.error(old, f"expected object, got {type(value).__name__}")
        return
    for key, item in value.items():
        where = (*old, key)
        if key != "preload_modules":
            writer.error(where, unknown_key(key, ["preload_modules"], "process_manager_kwargs"))
        elif item is not None:
            modules = list(item) if isinstance(item, list | tuple) else item
            writer.put(("tasks", "modules"), where, modules)
