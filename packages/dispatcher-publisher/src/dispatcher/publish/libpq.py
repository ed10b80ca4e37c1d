"""Imported first by :mod:`dispatcher.publish`: psycopg, or what to install to have it.

:raises LibpqMissing: (an ``ImportError``) when psycopg finds no libpq: the message names
    ``pip install "dispatcher-publisher[binary]"``.
"""

from __future__ import annotations

from dispatcher.config.libpq import require_libpq

require_libpq()
