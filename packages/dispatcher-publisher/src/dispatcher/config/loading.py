"""Finding, reading and validating a config."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import math
import numbers
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from dispatcher.config import dispatcherd_layout, legacy, plugins
from dispatcher.config.conninfo import conninfo_text_problem
from dispatcher.config.errors import ConfigError, NotConfiguredError
from dispatcher.config.schedules import scheduled_problems
from dispatcher.config.security import hide_secret, load_security
from dispatcher.config.settings import Settings, settings_from_document
from dispatcher.schema import InvalidArgumentType, Problem, validator
from dispatcher.schema.errors import json_type_name, key_kind

if TYPE_CHECKING:
    from ruamel.yaml.constructor import SafeConstructor
    from ruamel.yaml.error import MarkedYAMLError

CONFIG_FILE_ENV: Final = "DISPATCHER_CONFIG_FILE"
"""Environment variable naming the config file when none is given explicitly."""

DISPATCHERD_CONFIG_FILE_ENV: Final = "DISPATCHERD_CONFIG_FILE"
"""dispatcherd's variable naming its config file: read when :data:`CONFIG_FILE_ENV` is not
set, so that a dispatcherd deployment finds its file unchanged."""

DEFAULT_CONFIG_FILE: Final = "dispatcher.yml"
"""File looked for in the working directory as the last resort."""

CONFIG_FILE_HELP: Final = (
    f"config file (default: ${CONFIG_FILE_ENV}, else ${DISPATCHERD_CONFIG_FILE_ENV}, "
    f"else ./{DEFAULT_CONFIG_FILE})"
)
"""The help of a command line's ``--config`` option: where the config comes from without it."""

DICT_SOURCE: Final = "config"
"""How errors name a config given as a dict."""

logger = logging.getLogger("dispatcher.config")


MAX_CONFIG_BYTES: Final = 4 << 20
"""Largest config file read, in bytes (a config is a few kB)."""

MAX_CONFIG_VALUES: Final = 1_000_000
"""Most values a config may hold once its YAML aliases are expanded."""

MAX_CONFIG_DEPTH: Final = 64
"""Deepest nesting of mappings and lists a config may have (a config has a handful)."""


def load_settings(
    config: Mapping[str, Any] | None = None,
    file_path: str | os.PathLike[str] | None = None,
    *,
    source: str | None = None,
) -> Settings:
    """Load and validate a config without installing it.

    The first of these is used: *config*, *file_path*, the file named by
    ``$DISPATCHER_CONFIG_FILE``, the file named by ``$DISPATCHERD_CONFIG_FILE``,
    ``./dispatcher.yml``. Besides version 1, the unversioned layout and dispatcherd's layout
    (``version: 2``) are read, translated; what the translation drops is logged as warnings
    and listed in :attr:`Settings.warnings`. *source* names where a *config* dict came
    from in messages (default: ``config``).

    :raises ConfigError: when the config is missing, unreadable or invalid.
    """
    if config is not None and file_path is not None:
        raise InvalidArgumentType("give either config or file_path, not both")
    if isinstance(config, str | os.PathLike):
        kind = "string" if isinstance(config, str) else "path"
        raise ConfigError(
            source or DICT_SOURCE,
            [
                f"the config must be a mapping of sections, not {kind} {os.fspath(config)!r}: "
                f"to read a file, pass its path as file_path= (file_path={os.fspath(config)!r})"
            ],
        )
    if config is not None:
        return settings_from_data(source or DICT_SOURCE, config)
    if file_path is None:
        file_path = (
            os.environ.get(CONFIG_FILE_ENV) or os.environ.get(DISPATCHERD_CONFIG_FILE_ENV) or None
        )
    if file_path is None:
        if not Path(DEFAULT_CONFIG_FILE).is_file():
            raise NotConfiguredError
        file_path = DEFAULT_CONFIG_FILE
    source = os.fspath(file_path)
    return dataclasses.replace(settings_from_data(source, read_yaml(file_path)), file=source)


def read_yaml(file_path: str | os.PathLike[str]) -> Any:
    """Read a YAML file (safe loading: plain data only).

    :raises ConfigError: when the file cannot be read or is not valid YAML; a syntax error
        names the line and column.
    """
    source = os.fspath(file_path)
    try:
        with open(file_path, "rb") as stream:
            data = read_limited(stream, source)
    except FileNotFoundError:
        raise ConfigError(source, ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(source, ["is a directory, not a file"]) from None
    except PermissionError:
        raise ConfigError(source, ["permission denied"]) from None
    except OSError as exc:
        raise ConfigError(source, [exc.strerror or str(exc)]) from None
    return parse_yaml(source, data)


def parse_yaml(source: str, data: bytes) -> Any:
    """The YAML document *data*, read from *source* (safe loading: plain data only).

    :raises ConfigError: when it is not UTF-8 or not valid YAML; a syntax error names the
        line and column.
    """
    from ruamel.yaml import YAML  # imported here: apps configured by a dict never need it
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"not UTF-8 text (byte {exc.start})"]) from None
    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = _constructor_class()
    try:
        with warnings.catch_warnings():
            # ruamel warns (a duplicate anchor) with the lines' text, secrets included.
            warnings.simplefilter("ignore")
            document = yaml.load(text)
    except MarkedYAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    except YAMLError as exc:
        raise ConfigError(
            source, [f"YAML error: {_unquoted(' '.join(str(exc).split()))}"]
        ) from None
    except RecursionError:
        raise ConfigError(source, ["YAML error: nested too deeply"]) from None
    except Exception as exc:  # its message may quote a value of the file
        raise ConfigError(
            source, [f"YAML error: the document could not be read ({type(exc).__name__})"]
        ) from None
    if _values_beyond(document, MAX_CONFIG_VALUES):
        raise ConfigError(
            source,
            [
                f"more than {MAX_CONFIG_VALUES} values once its YAML aliases are expanded "
                "(aliases of aliases, or an alias inside its own anchor?)"
            ],
        )
    return document


_TAG_PREFIX: Final = "tag:yaml.org,2002:"


@functools.cache
def _constructor_class() -> type[SafeConstructor]:
    """ruamel.yaml's safe constructor, whose failures name the value's place, never the value.

    A value's constructor (``int()``, ``float()``, ``datetime.date()``, a lookup of ``!!bool``'s
    words) fails with a plain exception quoting the value; here it becomes a
    :class:`~ruamel.yaml.constructor.ConstructorError` marked with the node's line and column.
    """
    from ruamel.yaml.constructor import ConstructorError, SafeConstructor
    from ruamel.yaml.error import YAMLError

    class Constructor(SafeConstructor):
        def construct_non_recursive_object(self, node: Any, tag: str | None = None) -> Any:
            try:
                return super().construct_non_recursive_object(node, tag)
            except (YAMLError, RecursionError):
                raise
            except Exception:  # its message quotes the value
                name = str(tag or node.tag)
                if name.startswith(_TAG_PREFIX):
                    name = "!!" + name.removeprefix(_TAG_PREFIX)
                else:  # not one of the standard tags (which have a constructor): not shown
                    name = "its tag"
                hint = (
                    " (an unquoted value that looks like a date or time is read as one: "
                    "quote a string)"
                    if name == "!!timestamp"
                    else ""
                )
                raise ConstructorError(
                    None, None, f"a value could not be read as {name}{hint}", node.start_mark
                ) from None

    return Constructor


def read_limited(stream: BinaryIO, source: str) -> bytes:
    """The bytes of the config file *stream*, refused past :data:`MAX_CONFIG_BYTES`.

    :raises ConfigError: when there are more (``/dev/zero`` given by mistake, say).
    """
    data = stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [f"larger than {MAX_CONFIG_BYTES} bytes: not a config file?"])
    return data


def _values_beyond(document: Any, limit: int) -> bool:
    """Whether *document* holds more than *limit* values, counting each alias's anew.

    The count stops at the limit: an alias bomb (a few lines whose aliases of aliases expand
    to billions of values) costs no more than a large honest file.
    """
    pending = [document]
    seen = 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def settings_from_file_data(source: str, data: bytes) -> Settings:
    """The settings in *data*, the bytes of the config file *source* (read by the caller)."""
    return dataclasses.replace(settings_from_data(source, parse_yaml(source, data)), file=source)


_YAML_QUOTED: Final = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")""")
"""A quoted part of a message of ruamel.yaml (with the spaces before it)."""

_DUPLICATE_KEY: Final = re.compile(r'found duplicate key "(.*?)" with value "', re.DOTALL)
_KEY_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def _unquoted(text: str) -> str:
    r"""*text*, a message of ruamel.yaml, without the parts it quotes from the file.

    ruamel.yaml quotes values, aliases, anchors and tags of the file (a secret among them);
    what it quotes of its own is kept: a token (``'<block end>'``) or a single character
    (``'\t'``, ``'`'``).
    """

    def kept(match: re.Match[str]) -> str:
        quoted = match.group(1) if match.group(1) is not None else match.group(2)
        if re.fullmatch(r"<[a-z ]+>|.|\\(?:.|x[0-9a-f]+|u[0-9a-f]+)", quoted):
            return match.group(0)
        return ""

    return _YAML_QUOTED.sub(kept, text)


def _yaml_problem(exc: MarkedYAMLError) -> str:
    """The line, column and reason of *exc*, quoting nothing of the file's values.

    A duplicate key is named (when it is a plain name), never its values.
    """
    mark = exc.problem_mark or exc.context_mark
    duplicate = _DUPLICATE_KEY.match(exc.problem or "")
    if duplicate:
        key = duplicate.group(1)
        problem = (
            f"found duplicate key {key!r}" if _KEY_NAME.fullmatch(key) else "found a duplicate key"
        )
    else:
        problem = _unquoted(exc.problem or "")
    parts = (_unquoted(exc.context or ""), problem)
    what = ": ".join(part for part in parts if part) or "invalid YAML"
    if mark is None:
        return f"YAML syntax error: {what}"
    return f"line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: {what}"


def settings_from_data(source: str, data: Any) -> Settings:
    """Validate a config document (translating an older or dispatcherd layout) into settings.

    :raises ConfigError: listing every problem, each with its location as written.
    """
    if data is None:
        raise ConfigError(source, ["the config is empty; it needs at least 'version: 1'"])
    if not isinstance(data, Mapping):
        raise ConfigError(
            source, [f"the config must be a mapping of sections, not {json_type_name(data)}"]
        )
    unusable = _unusable_values(data)
    if unusable:
        raise ConfigError(source, [str(p) for p in unusable])
    version = _version_problem(data)
    if version is not None:  # alone: the rest would be read in the wrong layout
        raise ConfigError(source, [str(version)])
    paths = legacy.PathMap()
    found: list[Problem] = []  # by the translation, located as written
    notes: list[Problem] = []
    if legacy.is_unversioned(data):
        logger.info("%s: translating the unversioned config layout into version 1", source)
        data, paths = legacy.translate(data)
    elif dispatcherd_layout.is_dispatcherd(data):
        logger.info("%s: translating dispatcherd's config layout into version 1", source)
        translation = dispatcherd_layout.translate(data)
        data, paths = translation.document, translation.paths
        found, notes = translation.problems, translation.warnings
    notes = sorted(set(notes), key=lambda p: p.sort_key)
    for note in notes:  # location and reason apart: a log handler may cut each long argument
        logger.warning("%s: %s%s", source, f"{note.location}: " if note.path else "", note.reason)
    warnings = tuple(_note(p) for p in notes)
    document = _plain(data)
    checked, plugin_problems = plugins.without_plugin_sections(document)
    config_validator = validator("config")
    problems = (
        []
        if config_validator.is_valid(checked)
        else config_validator.problems(checked, quote_values=False)  # a value may be a secret
    )
    problems = plugins.name_unknown_brokers(problems) + plugin_problems
    problems = [hide_secret(p) for p in problems] or _cross_field_problems(document)
    security = None
    if not problems:
        security, problems = load_security(document.get("security", {}))
    if problems or found:
        as_written = {Problem(paths.original(p.path), p.reason) for p in problems}
        # What the translation found is more precise than validation's view of its result.
        as_written = {p for p in as_written if not any(_within(f.path, p.path) for f in found)}
        as_written.update(found)
        raise ConfigError(source, [str(p) for p in sorted(as_written, key=lambda p: p.sort_key)])
    settings = settings_from_document(source, document, security)
    return dataclasses.replace(settings, warnings=warnings) if warnings else settings


def _unusable_values(data: Any) -> list[Problem]:
    """Every NaN or infinity, key that is no string, cycle, too deep a nesting in *data*.

    And too many values.

    A NaN or infinity: YAML ``.nan``, ``.inf``; ``float('nan')`` in a dict. A key that is
    not a string: YAML ``~:``, ``1.5:``, ``2024-01-01:``, ``!!binary``, ``? [a]``, anywhere
    (a config is a JSON document, whose keys are strings: a task's ``args`` too). A cycle: a
    mapping or list that contains itself (a dict built in Python, a YAML alias inside its
    own anchor); nesting deeper than :data:`MAX_CONFIG_DEPTH`; more than
    :data:`MAX_CONFIG_VALUES` values.

    Refused wherever it is, before the schema is checked: the schema's bounds are
    comparisons, which a NaN passes (it is neither below nor above any bound), and no
    setting means anything with one (a ``schedule`` of NaN seconds, a ``timeout`` of
    infinity: say "no limit" as the setting documents it, not with an infinity). A cycle
    would have every later step (translation, validation, copying) recurse for ever.
    """
    problems: list[Problem] = []
    enclosing: set[int] = set()  # the ids of the containers around the value walked
    pending: list[tuple[bool, tuple[Any, ...], Any]] = [(False, (), data)]
    seen = 0
    while pending:
        leaving, path, value = pending.pop()
        if leaving:
            enclosing.discard(id(value))
            continue
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            return [Problem((), f"more than {MAX_CONFIG_VALUES} values")]
        if isinstance(value, Mapping | list | tuple):
            if id(value) in enclosing:
                problems.append(
                    Problem(path, "contains itself (a cycle): a config is a tree of values")
                )
                continue
            if len(path) >= MAX_CONFIG_DEPTH:
                problems.append(Problem(path, f"nested more than {MAX_CONFIG_DEPTH} levels deep"))
                continue
            enclosing.add(id(value))
            pending.append((True, path, value))
            if isinstance(value, Mapping):
                problems.extend(
                    Problem((*path, key), _not_text_key(key))
                    for key in value
                    if not isinstance(key, str)
                )
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            pending.extend((False, (*path, key), item) for key, item in items)
        elif isinstance(value, float) and not math.isfinite(value):
            what = "NaN (not a number)" if math.isnan(value) else f"{value} (infinite)"
            problems.append(Problem(path, f"{what}: a finite number is expected"))
        elif isinstance(value, numbers.Number) and not isinstance(value, int | float):
            # A Decimal, a Fraction, a numpy number: the schema's checks and the code that
            # reads the setting take int and float only (a Decimal NaN raised from them).
            kind = type(value).__name__
            reason = f"a {kind}, not a number of JSON: give an int or a float"
            problems.append(Problem(path, reason))
    return sorted(problems, key=lambda p: p.sort_key)


def _not_text_key(key: object) -> str:
    """Why the mapping key *key* (not a string) is refused, with how to write a string."""
    reason = f"a key must be a string, not {key_kind(key)}"
    if key is None or isinstance(key, int | float | datetime.date):
        reason += " (YAML reads an unquoted ~, true, number or date as one: quote the key)"
    return reason


def _version_problem(data: Mapping[str, Any]) -> Problem | None:
    """Why the config's ``version`` is none this release reads, or ``None`` when it is one.

    1 (``1.0`` too) is this layout, 2 (``2.0`` too, as dispatcherd reads it) dispatcherd's;
    without ``version``, the older layouts are read.
    """
    if "version" not in data:
        return None
    version = data["version"]
    number = isinstance(version, int | float) and not isinstance(version, bool)
    if number and version in (1, dispatcherd_layout.VERSION):
        return None
    found = "another number" if number else json_type_name(version)
    return Problem(
        ("version",),
        f"must be 1, or {dispatcherd_layout.VERSION} for dispatcherd's layout (or left out, "
        f"for the older layouts), got {found}",
    )


def _within(path: tuple[Any, ...], ancestor: tuple[Any, ...]) -> bool:
    return path[: len(ancestor)] == ancestor


def _note(problem: Problem) -> str:
    return str(problem) if problem.path else problem.reason


def _plain(data: Any) -> Any:
    """Copy *data* into plain dicts and lists (YAML loaders may return subclasses)."""
    if isinstance(data, Mapping):
        return {key: _plain(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_plain(value) for value in data]
    return data


def _cross_field_problems(document: Mapping[str, Any]) -> list[Problem]:
    """Rules that span several keys, which the schema cannot state."""
    problems: list[Problem] = []
    pool = document.get("service", {}).get("pool", {})
    min_workers, max_workers = pool.get("min_workers", 1), pool.get("max_workers")
    if max_workers is not None and min_workers > max_workers:
        problems.append(Problem(("service", "pool", "min_workers"), "must be at most max_workers"))
    problems += _pg_queue_problems(document.get("brokers", {}))
    for broker in ("pg_notify", "pg_queue"):
        conninfo = (document.get("brokers", {}).get(broker) or {}).get("conninfo")
        if isinstance(conninfo, str) and (reason := conninfo_problem(conninfo)) is not None:
            problems.append(Problem(("brokers", broker, "conninfo"), reason))
    problems += scheduled_problems(document.get("producers", {}))
    configured = sorted(document.get("brokers", {}))
    for key, value in document.get("publish", {}).items():
        if value not in configured:
            listed = f"configured: {', '.join(configured)}" if configured else "none is"
            reason = f"names a broker not configured under 'brokers' ({listed})"
            problems.append(Problem(("publish", key), reason))
    return problems


def conninfo_problem(conninfo: str) -> str | None:
    """Why libpq cannot read *conninfo*, without quoting it (it may hold a password)."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    unreadable = conninfo_text_problem(conninfo)
    if unreadable is not None:
        return unreadable
    try:
        given = conninfo_to_dict(conninfo)
    except ProgrammingError as exc:
        said = str(exc).strip()
        if not said.startswith(("invalid connection option", "invalid URI query parameter")):
            # The token may be (part of) the password; a one-character one ("=") is kept.
            said = _QUOTED.sub(lambda m: m[0] if len(m[0]) <= 3 else '"..."', said)
        return f"not a valid connection string: {said}"
    for key, values in _ENUMERATED.items():
        value = given.get(key)
        if value is not None and str(value) not in values:
            return f"{key}: expected one of {', '.join(values)}"
    return None


_ENUMERATED: Final = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any", "read-write", "read-only", "primary", "standby", "prefer-standby",
    ),
}  # fmt: skip
"""The libpq parameters whose values libpq checks only when it connects (then every attempt
fails the same way, for ever): checked here, where the config is read."""

_QUOTED: Final = re.compile(r'"[^"]*"')
"""A token libpq quotes in its complaint."""


def _pg_queue_problems(brokers: Mapping[str, Any]) -> list[Problem]:
    """``brokers.pg_queue`` needs a conninfo, and its queues may not be NOTIFY channels too."""
    section, pg_notify = brokers.get("pg_queue"), brokers.get("pg_notify")
    if section is None:
        return []
    problems: list[Problem] = []
    if "conninfo" not in section and pg_notify is None:
        problems.append(
            Problem(
                ("brokers", "pg_queue", "conninfo"),
                "required: set it, or configure brokers.pg_notify, whose conninfo it defaults to",
            )
        )
    channels = [] if pg_notify is None else list(pg_notify.get("channels", []))
    listed = set(channels)  # (thousands of each: no list searched for each queue)
    for index, queue in enumerate(section["queues"]):
        if queue in listed:
            problems.append(
                Problem(
                    ("brokers", "pg_queue", "queues", index),
                    "also a pg_notify channel (brokers.pg_notify.channels"
                    f"[{channels.index(queue)}]); a queue is durable or not, list it in one only",
                )
            )
    return problems
