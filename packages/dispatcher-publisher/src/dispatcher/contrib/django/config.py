"""The dispatcher config of a Django project: the ``DISPATCHER`` setting.

``settings.DISPATCHER`` is either a dict in the shape of ``dispatcher.yml`` or the path of
such a YAML file. It is validated by the same loader as every config; its errors name the
key and the reason, after ``settings.DISPATCHER`` (and the file, for a path). Where the
config (version 1 layout) has a ``brokers.pg_notify`` section without ``conninfo`` (or a
``brokers.pg_queue`` one, without ``pg_notify``), the conninfo is built from
``DATABASES["default"]`` when that database is PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS

from dispatcher.config import ConfigError, Settings, setup
from dispatcher.config.dispatcherd_layout import is_dispatcherd
from dispatcher.config.legacy import is_unversioned
from dispatcher.config.yaml_reading import read_yaml
from dispatcher.contrib.django.databases import database_conninfo, is_postgresql

SETTING: Final = "DISPATCHER"
"""The name of the Django setting holding the dispatcher config."""

SOURCE: Final = f"settings.{SETTING}"
"""How errors name the setting."""


class DjangoSettingsError(ConfigError, ImproperlyConfigured):
    """``settings.DISPATCHER`` is not a valid dispatcher config.

    A :class:`~dispatcher.config.ConfigError` and Django's ``ImproperlyConfigured``; the
    message names the setting, the key and the reason, e.g.
    ``settings.DISPATCHER: brokers.pg_notify.chanels: unknown key (did you mean
    'channels'?)``.
    """


def configure() -> Settings | None:
    """Install the config of ``settings.DISPATCHER`` for this process and return it.

    Does nothing and returns ``None`` when the setting is absent: the config is then found
    as without Django (``$DISPATCHER_CONFIG_FILE``, else ``./dispatcher.yml``).

    :raises DjangoSettingsError: when the setting is not a valid config.
    """
    value = getattr(django_settings, SETTING, None)
    if value is None:
        return None
    document, source = _read(value)
    try:
        return setup(config=with_database_conninfo(document), source=source)
    except ConfigError as exc:
        raise DjangoSettingsError(source, [_explained(p) for p in exc.problems]) from None


def _explained(problem: str) -> str:
    """*problem*, saying why a missing conninfo was not taken from ``DATABASES``."""
    database = django_settings.DATABASES.get(DEFAULT_DB_ALIAS, {})
    if not problem.endswith(".conninfo: is required") or is_postgresql(database):
        return problem
    engine = database.get("ENGINE")
    return (
        f"{problem} (it is taken from DATABASES[{DEFAULT_DB_ALIAS!r}] only when that is "
        f"PostgreSQL, not {engine!r})"
    )


def _read(value: object) -> tuple[Mapping[str, Any], str]:
    """The config document *value* holds or names, and how errors name where it came from."""
    if isinstance(value, str | os.PathLike):
        source = f"{SOURCE} ({os.fspath(value)})"
        try:
            data = read_yaml(value)
        except ConfigError as exc:
            raise DjangoSettingsError(source, exc.problems) from None
        if not isinstance(data, Mapping):
            raise DjangoSettingsError(source, ["the file must hold a mapping of sections"])
        return data, source
    if isinstance(value, Mapping):
        return value, SOURCE
    raise DjangoSettingsError(
        SOURCE,
        [
            "must be a dict in the shape of dispatcher.yml, or the path of such a file, "
            f"not {type(value).__name__}"
        ],
    )


def with_database_conninfo(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """*document* with the conninfo of ``DATABASES["default"]`` where a broker needs one.

    Only for the version 1 layout (or a document in its shape that lacks ``version``: the
    loader then reports that alone), and only for a PostgreSQL database; otherwise (and when
    every broker has its conninfo) *document* is returned as it is.
    """
    brokers = document.get("brokers")
    if not _version_1_shaped(document) or not isinstance(brokers, Mapping):
        return document
    pg_notify, pg_queue = brokers.get("pg_notify"), brokers.get("pg_queue")
    lacking = []
    if isinstance(pg_notify, Mapping) and "conninfo" not in pg_notify:
        lacking.append("pg_notify")
    elif pg_notify is None and isinstance(pg_queue, Mapping) and "conninfo" not in pg_queue:
        lacking.append("pg_queue")
    database = django_settings.DATABASES.get(DEFAULT_DB_ALIAS, {})
    conninfo = database_conninfo(database) if lacking else None
    if conninfo is None:
        return document
    filled = {name: {**brokers[name], "conninfo": conninfo} for name in lacking}
    return {**document, "brokers": {**brokers, **filled}}


def _version_1_shaped(document: Mapping[str, Any]) -> bool:
    """Tell whether *document* is in the version 1 layout, ``version`` aside."""
    if "version" in document:
        return document["version"] == 1 and type(document["version"]) is int
    return not is_unversioned(document) and not is_dispatcherd(document)
