"""Finding a config and validating it into settings.

A config comes from a dict or a file (found as :func:`load_settings` says), whose YAML is
read by :mod:`~dispatcher.config.yaml_reading`. Its document is checked for values no config
may hold (:mod:`~dispatcher.config.unusable_values`), translated from an older or dispatcherd
layout, validated against the schema, then against the rules spanning several keys
(:mod:`~dispatcher.config.cross_field_checks`), and built into
:class:`~dispatcher.config.settings.Settings`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from dispatcher.config import dispatcherd_layout, legacy, plugins
from dispatcher.config.cross_field_checks import cross_field_problems
from dispatcher.config.django_hint import django_hint
from dispatcher.config.errors import ConfigError, NotConfiguredError
from dispatcher.config.security import hide_secret, load_security
from dispatcher.config.settings import Settings
from dispatcher.config.settings_building import settings_from_document
from dispatcher.config.unusable_values import unusable_values
from dispatcher.config.yaml_reading import parse_yaml, read_yaml
from dispatcher.schema import InvalidArgumentType, Problem, validator
from dispatcher.schema.errors import json_type_name

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
            raise NotConfiguredError(django_hint())
        file_path = DEFAULT_CONFIG_FILE
    source = os.fspath(file_path)
    return dataclasses.replace(settings_from_data(source, read_yaml(file_path)), file=source)


def settings_from_file_data(source: str, data: bytes) -> Settings:
    """The settings in *data*, the bytes of the config file *source* (read by the caller)."""
    return dataclasses.replace(settings_from_data(source, parse_yaml(source, data)), file=source)


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
    unusable = unusable_values(data)
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
    problems = [hide_secret(p) for p in problems] or cross_field_problems(document)
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
