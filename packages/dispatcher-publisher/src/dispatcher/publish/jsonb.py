"""Reading ``jsonb`` values that Python's decoder refuses.

A job's ``result`` is written by the services, which store only what a service can read back.
A value set by hand can be beyond that: an integer of more than 4,300 digits, or nesting
deeper than Python's recursion limit. psycopg's loader would then raise, failing a whole
listing of jobs (or ``get_job()``) for one such row. :func:`register_tolerant_jsonb` wraps
the loader in force (psycopg's, or the application's own from ``set_json_loads()``) so that
such a value reads as ``None`` instead, with a warning; where the loader in force decodes no
JSON (Django's connections read ``jsonb`` as text), psycopg's is wrapped instead.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Final

import psycopg
from psycopg import abc
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import Format
from psycopg.types.json import JsonbLoader, JsonLoader

from dispatcher.publish.broker_errors import first_line

JSONB_OID: Final = psycopg.adapters.types["jsonb"].oid

logger = logging.getLogger("dispatcher.publish")


def tolerant_adapters(context: AdaptContext | None = None) -> AdaptersMap:
    """The adapters of *context* (default: psycopg's global ones), with a tolerant jsonb.

    They read ``jsonb`` as :func:`register_tolerant_jsonb` says.
    """
    adapters = AdaptersMap(context.adapters if context is not None else psycopg.adapters)
    register_tolerant_jsonb(adapters)
    return adapters


def register_tolerant_jsonb(adapters: AdaptersMap) -> None:
    """Have *adapters* decode ``jsonb``, and read a value they cannot decode as ``None``.

    With the JSON loader in force, or psycopg's where the one in force is no JSON loader:
    Django's connections read ``jsonb`` as text (its ``JSONField`` decodes it), and a job
    read on one (``connection=django.db.connection.connection``) would have its result as
    a string.
    """
    wrapped = adapters.get_loader(JSONB_OID, Format.TEXT) or JsonbLoader
    if issubclass(wrapped, _Tolerant):
        return
    if not issubclass(wrapped, JsonbLoader | JsonLoader):  # (set_json_loads() makes these)
        wrapped = JsonbLoader
    adapters.register_loader(JSONB_OID, _tolerant(wrapped))


_TOLERANT: weakref.WeakValueDictionary[type[abc.Loader], type[Loader]] = (
    weakref.WeakValueDictionary()
)


def _tolerant(wrapped: type[abc.Loader]) -> type[Loader]:
    """The tolerant loader wrapping *wrapped*: one class for each, made once.

    psycopg's compiled implementation keeps every loader class it is given for the process's
    life (its cache of optimised adapters), so a class made for each cursor or connection
    would never be freed. Where a class is freed (psycopg's pure Python implementation),
    its entry here goes with it.
    """
    made = _TOLERANT.get(wrapped)
    if made is None:
        made = type("TolerantJsonbLoader", (_Tolerant,), {"wrapped": wrapped})
        made = _TOLERANT.setdefault(wrapped, made)  # one class even for racing threads
    return made


class _Tolerant(Loader):
    """Loads a ``jsonb`` value with :attr:`wrapped`, or as ``None`` where it cannot."""

    wrapped: type[Loader] = JsonbLoader

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._loader = self.wrapped(oid, context)

    def load(self, data: Buffer) -> Any:
        """The decoded value; ``None`` (with a warning) for one Python cannot decode."""
        try:
            return self._loader.load(data)
        except (ValueError, RecursionError, psycopg.DataError) as exc:
            reason = first_line(exc)
            if "integer string conversion" in reason:  # not Python's advice to raise a limit
                reason = "it holds an integer of more than 4300 digits"
            elif isinstance(exc, RecursionError):
                reason = "it is nested too deeply to decode"
            logger.warning(
                "a jsonb value (a job's result) cannot be read: %s; read as None", reason
            )
            return None
