"""How ``dispatcherctl`` shows replies to people: one block per service, tables of entries.

Values are shown as JSON writes them (``true``, ``false``, ``null``), with units where the
key says what a number is (durations such as ``9.4 s`` or ``3 min 12 s``, sizes such as
``28.4 MiB``); nested objects as indented blocks, lists of objects as tables.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, Final

from dispatcher.config import Settings
from dispatcher.control import ControlResult
from dispatcher.publish import PublishError
from dispatcher.publish.routing import control_broker
from dispatcher.schema import MAX_MESSAGE_BYTES
from dispatcher.server.log_text import counted, escape

DISPATCHERD_NOT_FOUND = (
    "dispatcherd services cannot be found there: pass --expected-replies N to wait for N replies"
)

COLUMNS: dict[str, tuple[str, ...]] = {
    "running": ("slot", "where", "uuid", "task", "elapsed", "args", "kwargs"),
    "cancel": ("slot", "where", "uuid", "task", "args", "kwargs"),
    "workers": (
        "worker_id",
        "pid",
        "state",
        "age",
        "finished_count",
        "current_task",
        "current_task_uuid",
        "current_task_age",
        "rss_bytes",
    ),
    "aio_tasks": ("task", "done"),
}
"""The columns shown for the replies with one key per task, worker or asyncio task (the
first column is that key, unless it is one of the entries' own fields). Tasks show
``where`` only when it says more than their ``slot`` (a task waiting for a worker: ``worker-2
next``); ``--json`` has it always. Workers show our
``state`` (``busy`` while running a task), not dispatcherd's ``status`` (``ready`` then),
except for a reply without ``state`` (a dispatcherd service's): its ``status``. A column
no entry has a value for is left out."""

DURATION_KEYS: Final = frozenset(
    {
        "age",
        "current_task_age",
        "elapsed",
        "max_age",
        "seconds_since_start",
        "uptime",
        "uptime_seconds",
    }
)
"""Keys whose numbers are seconds."""

DURATION_GROUPS: Final = frozenset({"top5", "near_worker_ct"})
"""Keys of objects whose numbers are seconds (``main.pool.usage``'s)."""

SIZE_KEYS: Final = frozenset({"rss_bytes", "active_bytes"})
"""Keys whose numbers are bytes."""

TIME_KEYS: Final = frozenset({"time", "time_pub"})
"""Keys whose numbers are dates, in seconds since the epoch (shown in local time)."""

ARGUMENTS_WIDTH: Final = 40
"""Columns of a task's ``args`` or ``kwargs`` shown in a table (a longer one is cut, ``…``)."""


def control_channel(settings: Settings) -> str | None:
    """The channel control commands go on, when they go through pg_notify."""
    try:
        broker = control_broker(settings)
    except PublishError:
        return None
    return broker.default_queue if broker.name == "pg_notify" else None


def control_failure(settings: Settings, exc: PublishError) -> str:
    """What to say when a control command could not be sent: *exc*, shown.

    Unless control commands go through pg_notify and it has no channel to send them on:
    then what to set in the config (the SDK's error also offers ``queue=...``, which the
    command line has no option for).
    """
    try:
        broker = control_broker(settings)
    except PublishError:
        return shown(exc)
    if broker.name != "pg_notify" or broker.default_queue is not None:
        return shown(exc)
    return (
        "cannot send control commands: no channel; set brokers.pg_notify."
        f"default_publish_channel in {shown(settings.source)} to a channel the services "
        "listen on (one of their brokers.pg_notify.channels)"
    )


def no_service_found(channel: str | None, result: ControlResult | None = None) -> str:
    """What to say when no service was found to wait for (on *channel*, when known).

    With *result*, also the services found that may listen there but did not answer.
    """
    listening = f" listening on channel {shown(channel)}" if channel else ""
    found = f"no dispatcher service{listening} is connected to the database"
    if result is not None and result.unconfirmed:
        found = f"no dispatcher service{listening} answered ({uncertain(result.unconfirmed)})"
    return f"{found} ({DISPATCHERD_NOT_FOUND})"


def uncertain(nodes: list[str], where: str = "there") -> str:
    """Say that the services *nodes* did not answer, and why they are not counted missing.

    *where*: the channel, as in "may not listen *where*".
    """
    one = len(nodes) == 1
    return (
        f"{shown(', '.join(nodes))}, which may not listen {where}, did not answer: "
        f"{'it listens' if one else 'they listen'} on too many channels for "
        f"{'its connection' if one else 'their connections'}' names to tell, and "
        f"{'is' if one else 'are'} not counted missing"
    ).replace("connection' names", "connection's name")


def tally(result: ControlResult, looked_up: bool, channel: str | None = None) -> str:
    """Say how many replies came, and how many were waited for and why."""
    came = len(result.replies)
    maybe = len(result.uncertain_nodes)
    if maybe:  # those answered are counted apart
        came -= maybe - len(result.unconfirmed)
    counted = f"{came} of {result.expected} replies"
    if came > result.expected:  # services not looked up answered too (dispatcherd's)
        counted = f"{came} replies, {result.expected} waited for"
    if looked_up:
        listening = (
            f" listening on channel {shown(channel)}" if channel else " connected to the database"
        )
        uncertain = ""
        if maybe:
            answered = maybe - len(result.unconfirmed)
            uncertain = (
                f"; {answered} of {maybe} from those that may listen there (on too many "
                "channels to tell)"
            )
        return (
            f"({counted}: one per dispatcher service{listening}{uncertain}; "
            "dispatcherd services are not counted: --expected-replies N waits for N)"
        )
    return f"({counted})"


def shortfall(result: ControlResult) -> str:
    """What to say when not every service waited for answered: replies came, or did not.

    A reply that came too large to take (from a service of another version) is said so,
    not taken for silence; whose it was is not known (it names its service once whole).
    """
    text = f"{len(result.replies)} of {result.expected} expected replies"
    missing = shown(", ".join(result.missing))
    if result.arriving:
        still = "a reply was" if result.arriving == 1 else f"{result.arriving} replies were"
        text += (
            f"; {still} still arriving when the wait ran out: a longer --timeout lets "
            f"{'it' if result.arriving == 1 else 'them'} come whole"
        )
    if not result.too_large:
        return f"{text}; no answer from {missing}{unlisted(result)}" if result.missing else text
    text += (
        f"; {counted(result.too_large, 'reply', 'replies')} came too large to take (over "
        f"{MAX_MESSAGE_BYTES} bytes: from a service of another version?)"
    )
    if len(result.missing) == result.too_large:
        return f"{text}, in place of those of {missing}"
    if not result.missing:
        return text
    return f"{text}; not taken, or no answer, from {missing}{unlisted(result)}"


def unlisted(result: ControlResult) -> str:
    """Why services that did not answer may not have got the command at all, if they may.

    Their connections' names list no channels (:attr:`ControlResult.unlisted_nodes`: an
    older release names them so), so they are waited for whatever the channel; one that
    serves other channels only never answers. Said after the list of those missing, with
    the ``--expected-replies`` that waits for the others alone. Empty when none is such.
    """
    silent = [node for node in result.missing if node in result.unlisted_nodes]
    if not silent:
        return ""
    one = len(silent) == 1
    names = "connection's name lists" if one else "connections' names list"
    if len(silent) == len(result.missing):
        who = f", whose {names}"
    else:
        which = "is a service" if one else "are services"
        who = f"; of those, {shown(', '.join(silent))} {which} whose {names}"
    others = result.expected - len(silent)
    then = (
        f"--expected-replies {others} waits for the others alone"
        if others
        else "no service found listens there"
    )
    return (
        f"{who} no channels (as an older release names them): {'it' if one else 'they'} "
        f"may serve other channels only; if so, {then}"
    )


VERSION_NODES_SHOWN: Final = 5
"""Node ids :func:`mixed_versions` names per version (the others are counted)."""


def mixed_versions(result: ControlResult) -> str | None:
    """Say which services run which version of dispatcher, when they run different ones.

    Read from the ``version`` of their ``status`` replies; a reply without one is from a
    service of a release older than that field (or a dispatcherd service). ``None`` when
    every reply says the same, or none says any.
    """
    if result.command != "status":
        return None
    by_version: dict[str | None, list[str]] = {}
    for reply in result.replies:
        version = reply.get("version")
        said = None if version is None else shown(version)
        by_version.setdefault(said, []).append(shown(reply.get("node_id", "?")))
    if len(by_version) < 2:
        return None
    versions = sorted(version for version in by_version if version is not None)
    groups = [f"{version}: {_some(sorted(by_version[version]))}" for version in versions]
    if None in by_version:
        groups.append(f"no version (an older release): {_some(sorted(by_version[None]))}")
    return f"the services run different versions of dispatcher: {'; '.join(groups)}"


def _some(nodes: list[str]) -> str:
    """*nodes* joined, past :data:`VERSION_NODES_SHOWN` counted: ``a, b and 3 more``."""
    if len(nodes) <= VERSION_NODES_SHOWN:
        return ", ".join(nodes)
    return f"{', '.join(nodes[:VERSION_NODES_SHOWN])} and {len(nodes) - VERSION_NODES_SHOWN} more"


def render(result: ControlResult, now: float | None = None) -> str:
    """Replies as text for people: one block per service.

    ``running``, ``cancel``, ``workers`` and ``aio_tasks`` replies (and those parts of
    ``status``) are shown as tables, one row per task, worker or asyncio task; ``--json``
    shows everything. A task's ``elapsed`` (see :func:`add_elapsed`) is shown when it is
    there; in ``status``, it is worked out from the reply itself. Every value is shown
    escaped (see :func:`dispatcher.server.log_text.escape`): a reply cannot start a line of
    its own in the terminal, or send it control sequences.
    """
    lines = []
    for reply in sorted(result.replies, key=lambda r: str(r.get("node_id"))):
        body = {k: v for k, v in reply.items() if k != "node_id"}
        lines.append(f"{shown(reply.get('node_id', '?'))}:")
        if result.command == "status" and isinstance(body.get("running"), dict):
            ages = task_ages(body.get("workers"))
            body["running"] = add_elapsed(body["running"], ages, now)
        if result.command in COLUMNS and "error" not in body:
            lines += _entries(body, COLUMNS[result.command], indent="  ")
        elif not body:
            lines.append("  ok")
        else:
            lines += _fields(body, indent="  ")
    return "".join(line + "\n" for line in lines)


def add_elapsed(
    entries: Mapping[str, Any], task_ages: Mapping[str, tuple[str, float]], now: float | None = None
) -> dict[str, Any]:
    """The entries of a ``running`` reply, each with ``elapsed`` seconds, when known.

    A task on a worker (keyed ``worker-N``): how long it has run, from that worker's entry
    in *task_ages* (from the ``workers`` reply's ``current_task_age``) when it runs the same
    uuid; so that two copies of one job (on two workers) each show their own start.
    Otherwise, or when that is unknown, how long since it was submitted (its message's
    ``time_pub``, by the publisher's clock).
    """
    now = time.time() if now is None else now
    shown_entries: dict[str, Any] = {}
    for key, entry in entries.items():
        if isinstance(entry, dict):
            elapsed = None
            on_worker = task_ages.get(key)
            if on_worker is not None and on_worker[0] == entry.get("uuid"):
                elapsed = on_worker[1]
            published = entry.get("time_pub")
            if elapsed is None and isinstance(published, int | float) and published > 0:
                elapsed = max(0.0, now - published)
            if elapsed is not None:
                entry = {**entry, "elapsed": elapsed}
        shown_entries[key] = entry
    return shown_entries


def task_ages(workers: object) -> dict[str, tuple[str, float]]:
    """Each worker's task uuid and how long it has run, by worker, from a ``workers`` reply."""
    if not isinstance(workers, Mapping):
        return {}
    ages = {}
    for key, worker in workers.items():
        if isinstance(worker, Mapping):
            uuid, age = worker.get("current_task_uuid"), worker.get("current_task_age")
            if isinstance(uuid, str) and isinstance(age, int | float):
                ages[str(key)] = (uuid, float(age))
    return ages


def _fields(body: Mapping[str, Any], indent: str, group: str | None = None) -> list[str]:
    lines = []
    for key, value in body.items():
        title = f"{indent}{shown(key)}:"
        if key in COLUMNS and isinstance(value, dict):
            lines.append(title)
            lines += _entries(value, COLUMNS[key], indent=indent + "  ")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(title)
            columns = list(dict.fromkeys(c for row in value for c in row))
            lines += _table(columns, value, indent=indent + "  ")
        elif isinstance(value, dict) and value:
            lines.append(title)
            lines += _fields(value, indent + "  ", group=key)
        elif isinstance(value, dict | list) and not value:
            lines.append(f"{title} (none)")
        else:
            unit_key = "elapsed" if group in DURATION_GROUPS else key
            lines.append(f"{title} {value_text(value, unit_key)}")
    return lines


UNKNOWN_SHAPE: Final = (
    "(not in the shape this dispatcherctl knows: from a service of another version?"
    " shown as it came)"
)
"""Said before the parts of a table reply that are not entries (objects), shown as fields."""


def _entries(body: Mapping[str, Any], columns: tuple[str, ...], indent: str) -> list[str]:
    """A table of a reply's entries (one per key), its first column being the key.

    Tasks the reply leaves out (its ``omitted``, a count) are said after the table.
    Whatever else the reply holds (a list, from a service of another version) is never
    dropped: it is shown as fields after a line saying so.
    """
    entries = {key: value for key, value in body.items() if isinstance(value, dict)}
    others = {key: value for key, value in body.items() if not isinstance(value, dict)}
    omitted = others.get("omitted")
    if type(omitted) is int:  # the tasks the reply leaves out (else: shown as it came)
        del others["omitted"]
    else:
        omitted = 0
    if others:
        table = _entries(entries, columns, indent) if entries else []
        return [*table, f"{indent}{UNKNOWN_SHAPE}", *_fields(others, indent)]
    more = [f"{indent}... {omitted} more, not listed (too many for one reply)"] if omitted else []
    if not entries:
        return more or [f"{indent}(none)"]
    rows = [{columns[0]: key, **value} for key, value in entries.items()]
    if "state" in columns:
        for row in rows:
            row.setdefault("state", row.get("status"))
    shown_columns = [columns[0], *(c for c in columns[1:] if any(c in row for row in rows))]
    if "where" in shown_columns and all(row.get("where") == row[columns[0]] for row in rows):
        shown_columns.remove("where")  # a task on a worker: its slot says where already
    return [*_table(shown_columns, rows, indent), *more]


def _table(columns: list[str], rows: list[dict[str, Any]], indent: str) -> list[str]:
    cells = [[_cell(row.get(c), c) for c in columns] for row in rows]
    return aligned([[shown(c) for c in columns], *cells], indent)


def aligned(rows: list[list[str]], indent: str) -> list[str]:
    """*rows* of cells (the first being the titles) as lines, in columns two spaces apart.

    A row shorter than the others leaves its last columns empty.
    """
    count = max(len(row) for row in rows)
    filled = [row + [""] * (count - len(row)) for row in rows]
    widths = [max(width(row[i]) for row in filled) for i in range(count)]
    out = []
    for row in filled:
        padded = (value + " " * (w - width(value)) for value, w in zip(row, widths, strict=True))
        out.append(indent + "  ".join(padded).rstrip())
    return out


def width(text: str) -> int:
    """How many columns *text* takes in a terminal.

    2 for a wide character (CJK), 0 for a combining mark, else 1 (non-printable characters
    were escaped before).
    """
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )


def cut(text: str, cells: int, measure: Callable[[str], int] = width) -> str:
    """*text*, or as much of it as fits in *cells* columns followed by an ellipsis (``…``).

    Columns as :func:`width` counts them (*measure*): a wide character takes two.
    """
    if text.isascii() and measure is width:
        return text if len(text) <= cells else text[: max(cells - 1, 0)] + "…"
    if measure(text) <= cells:
        return text
    kept, used = [], 0
    for char in text:
        used += measure(char)
        if used > cells - 1:
            break
        kept.append(char)
    return "".join(kept) + "…"


def _cell(value: object, key: str) -> str:
    """A table cell: ``-`` for nothing; arguments and other lists or objects cut short."""
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
        return cut(escape(text, ARGUMENTS_WIDTH * 2), ARGUMENTS_WIDTH)
    return value_text(value, key)


def value_text(value: object, key: str | None = None) -> str:
    """One value as people read it.

    JSON's words for ``true``, ``false`` and ``null``; a duration or a size when *key* says
    the number is one; lists and objects as JSON; everything escaped.
    """
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float) and key is not None:
        if key in DURATION_KEYS:
            return duration_text(value)
        if key in SIZE_KEYS:
            return size_text(value)
        if key in TIME_KEYS:
            return date_text(value)
    if isinstance(value, list | dict):
        return shown(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))
    return shown(value)


MAX_WHOLE_DAYS: Final = 99_999
"""Longest duration, in days, written in whole days; beyond, in days with 3 digits
(``1.16e+295 d``): a reply may hold any number."""


def duration_text(seconds: float) -> str:
    """*seconds* for people: ``250 ms``, ``9.4 s``, ``42 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds < 0:
        return f"-{duration_text(-seconds)}"
    if seconds >= MAX_WHOLE_DAYS * 86400:
        return f"{seconds / 86400:.3g} d"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def date_text(seconds: float) -> str:
    """*seconds* since the epoch as a local date and time, ``2026-11-29 16:15:48``.

    A number no clock can show (a reply may hold any) is shown as it is.
    """
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    except (OverflowError, OSError, ValueError):
        return f"{seconds:g}"


SIZE_UNITS: Final = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
"""Binary units of :func:`size_text`, beyond bytes."""


def size_text(size: float) -> str:
    """*size* bytes for people: ``512 B``, ``12.0 KiB``, ``28.4 MiB``, ``1.50 GiB``.

    A size beyond the units (a reply may hold any number) keeps 3 digits: ``8.67e+279 EiB``.
    """
    if size < 0:
        return f"-{size_text(-size)}"
    if size < 1024:
        return f"{size:.0f} B"
    for power, unit in enumerate(SIZE_UNITS, start=1):
        scaled = size / 1024**power
        if scaled < 1024 or unit == SIZE_UNITS[-1]:
            break
    if scaled >= 1024:
        return f"{scaled:.3g} {unit}"
    return f"{scaled:.2f} {unit}" if power >= 3 else f"{scaled:.1f} {unit}"


def shown(value: object) -> str:
    """Return *value* for the terminal: whole, with its non-printable characters escaped."""
    return escape(value, limit=None)
