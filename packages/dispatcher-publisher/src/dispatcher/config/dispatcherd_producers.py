"""Translation of dispatcherd's ``producers`` section (scheduled, on-start and control)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.config.dispatcherd_translation import TranslationWriter, unknown_key
from dispatcher.config.legacy import Path

PRODUCERS: Final = ("ScheduledProducer", "OnStartProducer", "ControlProducer")
"""The producers of dispatcherd's config."""

_SCHEDULED_OPTIONS: Final = ("schedule", "args", "kwargs", "timeout", "on_duplicate")
_ON_START_OPTIONS: Final = ("args", "kwargs", "timeout", "delay", "on_duplicate")


def translate_producers(writer: TranslationWriter, value: Any) -> None:
    """Translate dispatcherd's ``producers`` section."""
    section = writer.section(value, ("producers",), ("producers",))
    if section is None:
        return
    writer.put(("producers",), ("producers",), {})
    for name, options in section.items():
        where = ("producers", name)
        if name == "ScheduledProducer":
            _task_entries(writer, options, name, "task_schedule", "scheduled", _SCHEDULED_OPTIONS)
        elif name == "OnStartProducer":
            _task_entries(writer, options, name, "task_list", "on_start", _ON_START_OPTIONS)
        elif name == "ControlProducer":
            if options is None or options == {}:
                writer.put(("producers", "control"), where, {})
            elif isinstance(options, Mapping):
                for key in options:
                    writer.error((*where, key), "unknown key: ControlProducer takes no options")
            else:
                writer.error(where, f"expected object or null, got {type(options).__name__}")
        else:
            choices = ", ".join(PRODUCERS)
            writer.error(where, f"not a producer of dispatcherd's config ({choices})")


def _task_entries(
    writer: TranslationWriter,
    value: Any,
    producer: str,
    argument: str,
    ours: str,
    options: tuple[str, ...],
) -> None:
    """``ScheduledProducer.task_schedule`` or ``OnStartProducer.task_list``."""
    old: Path = ("producers", producer)
    if not isinstance(value, Mapping):
        writer.error(old, f"expected object with {argument!r}, got {type(value).__name__}")
        return
    for key in value:
        if key != argument:
            writer.error((*old, key), unknown_key(key, [argument], producer))
    if argument not in value:
        writer.error((*old, argument), "is required")
        return
    old = (*old, argument)
    new: Path = ("producers", ours)
    entries = writer.section(value[argument], new, old)
    if entries is None:
        return
    writer.put(new, old, {})
    for name, entry in entries.items():
        where = (*old, name)
        if isinstance(name, str) and name.lstrip().startswith("lambda"):
            writer.warn(
                where,
                "a lambda never runs here (only registered tasks do): entry ignored; "
                "register a function with @task and name it instead",
            )
            continue
        if not isinstance(entry, Mapping):
            writer.put((*new, name), where, entry)
            continue
        writer.put((*new, name), where, {})
        for key, item in entry.items():
            if key == "schedule" and isinstance(item, str):
                item = _seconds(writer, (*where, key), item)
            if key in options:
                writer.put((*new, name, key), (*where, key), item)
            elif key != "uuid":  # dispatcherd replaces it too
                writer.warn((*where, key), "a message key with no equivalent here; ignored")


def _seconds(writer: TranslationWriter, where: Path, text: str) -> Any:
    """A ``schedule`` given as text: seconds, as dispatcherd reads it (``float()``).

    Here a text would be a cron expression; dispatcherd's schedules are periods only.
    """
    try:
        period = float(text)
    except ValueError:
        period = math.nan
    if not math.isfinite(period):
        writer.error(where, "expected a number of seconds, got a string that is not a number")
        return text
    if period.is_integer() and abs(period) < 2**53:
        return int(period)
    return period
