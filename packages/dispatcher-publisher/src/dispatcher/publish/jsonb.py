"""Reading ``jsonb`` values that Python's decoder refuses.

A job's ``result`` is written by the services, which store only what a service can read back.
A value set by hand can be beyond that: an integer of more than 4,300 digits, or nesting
deeper than Python's recursion limit. psycopg's loader would then raise, failing a whole
listing of jobs (or ``get_job()``) for one such row. The loader here reads such a value as
``None`` instead, and logs why.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader

JSONB_OID: Final = psycopg.adapters.types["jsonb"].oid

logger = logging.getLogger("dispatcher.publish")


class TolerantJsonbLoader(Loader):
    """Loads a ``jsonb`` value as :func:`json.loads` does, or as ``None`` where it cannot."""

    def load(self, data: Buffer) -> Any:
        """The decoded value; ``None`` (with a warning) for one Python cannot decode."""
        text = bytes(data).decode("utf-8", "replace")
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            logger.warning(
                "a jsonb value (a job's result) cannot be read: %s; read as None", reason
            )
            return None
