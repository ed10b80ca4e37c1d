"""Reading ``timestamptz`` values that no :class:`~datetime.datetime` can hold.

PostgreSQL's timestamps run from 4713 BC to the year 294276, plus ``infinity`` and
``-infinity`` (an operator may park a job with ``run_after = 'infinity'``); Python's run
from the year 1 to 9999. psycopg refuses the others with :class:`psycopg.DataError`, which
would fail a whole listing of jobs for one such row. The loader here reads them as the
latest or earliest aware datetime instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import abc
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import Format
from psycopg.types.datetime import TimestamptzLoader

from dispatcher.publish.jsonb import register_tolerant_jsonb

LATEST: Final = datetime.max.replace(tzinfo=UTC)
"""What a timestamp after the year 9999 (``infinity`` included) is read as."""

EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
"""What a timestamp before the year 1 (``-infinity`` included) is read as."""

TIMESTAMPTZ_OID: Final = psycopg.adapters.types["timestamptz"].oid

_STANDARD: Final[type[abc.Loader]] = (
    psycopg.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT) or TimestamptzLoader
)


class TolerantTimestamptzLoader(Loader):
    """Loads a ``timestamptz`` as psycopg does, except where psycopg cannot.

    A value no datetime can hold is read as :meth:`out_of_range` says.
    """

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._standard = _STANDARD(oid, context)

    def load(self, data: Buffer) -> Any:
        """The value as an aware datetime (see :meth:`out_of_range` for the others)."""
        try:
            return self._standard.load(data)
        except psycopg.DataError:
            return self.out_of_range(bytes(data).decode("utf-8", "replace"))

    def out_of_range(self, text: str) -> Any:
        """What stands for *text*, PostgreSQL's text of a timestamp no datetime can hold.

        :data:`EARLIEST` for ``-infinity`` and years BC, else :data:`LATEST`.
        """
        return EARLIEST if text.startswith("-") or text.endswith(" BC") else LATEST


def tolerant_adapters(context: AdaptContext | None = None) -> AdaptersMap:
    """The adapters of *context* (default: psycopg's global ones) with that loader.

    And reading ``jsonb`` as :func:`~dispatcher.publish.jsonb.register_tolerant_jsonb` says.
    """
    adapters = AdaptersMap(context.adapters if context is not None else psycopg.adapters)
    adapters.register_loader(TIMESTAMPTZ_OID, TolerantTimestamptzLoader)
    register_tolerant_jsonb(adapters)
    return adapters
