"""The privileges a service's role needs on the pg_queue tables, and what to grant.

A service refuses to start when its role lacks one it needs for its usual work (reading the
version, claiming and settling jobs, purging), naming each and the ``GRANT`` that gives it:
no retry mends a missing privilege, and a service that kept running would only log the
refusal of each claim. Privileges revoked later are named in the log line of the step that
fails (:func:`explain`); the service goes on, and the step works again once granted.

The privileges are read from the catalogs (``has_column_privilege`` and the like, by oid),
which any role may read: a role without ``USAGE`` on the schema is told so rather than
refused the query. ``SELECT`` and ``UPDATE`` are asked of the columns the statements read
and write (their ``Uses``, in :mod:`.sql`): a role granted them on those columns alone has
what it needs, as one granted them on the whole table. What a role lacks is told as the
table-wide ``GRANT``, the simplest that mends it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import psycopg

from dispatcher.publish.refusals import with_cause
from dispatcher.schema import DispatcherError
from dispatcher.server.brokers.pg_queue.migrations import VERSION_TABLE, quoted
from dispatcher.server.brokers.pg_queue.sql_claims import CLAIM_USES
from dispatcher.server.brokers.pg_queue.sql_outcomes import ACKNOWLEDGE_USES, RENEW_USES
from dispatcher.server.brokers.pg_queue.sql_shared import Uses
from dispatcher.server.brokers.pg_queue.sql_sweeps import SWEEP_USES
from dispatcher.server.brokers.pg_queue.sql_upkeep import (
    PURGE_TICKS_USES,
    PURGE_USES,
    SUBMIT_TICK_USES,
)
from dispatcher.server.log_text import first_line

SCHEMA: Final = ""
"""The "table" of :data:`Need` that stands for the schema itself (``USAGE``)."""

ANY_COLUMN: Final[tuple[str, ...]] = ()
"""The columns of a :data:`Need` met by the privilege on any one column (``FOR UPDATE``
needs ``UPDATE`` on one)."""


class Need(NamedTuple):
    """A table of the schema (:data:`SCHEMA`: the schema), a privilege on it, and what for.

    With *columns*, the privilege on each of them is enough (on the table, it covers
    them all); :data:`ANY_COLUMN`: on any one. Without (``None``), the table's own.
    """

    table: str
    privilege: str
    purpose: str
    columns: tuple[str, ...] | None = None


def _uses(table: str, purpose: str, *uses: Uses, lock: bool = False) -> tuple[Need, ...]:
    """The ``SELECT`` and ``UPDATE`` of *table* that statements of these *uses* need.

    *lock*: they lock rows (``FOR UPDATE``), which needs ``UPDATE`` on a column at least.
    """
    reads = tuple(dict.fromkeys(column for use in uses for column in use.reads))
    writes = tuple(dict.fromkeys(column for use in uses for column in use.writes))
    needs = [Need(table, "SELECT", purpose, reads)]
    if writes or lock:
        needs.append(Need(table, "UPDATE", purpose, writes or ANY_COLUMN))
    return tuple(needs)


REACH: Final = (Need(SCHEMA, "USAGE", "reaching the tables"),)
VERSION: Final = (Need(VERSION_TABLE, "SELECT", "reading the tables' version", ("version",)),)
CLAIM: Final = _uses("jobs", "claiming jobs", CLAIM_USES)
SETTLE: Final = _uses("jobs", "recording their outcomes", RENEW_USES, ACKNOWLEDGE_USES, SWEEP_USES)
"""Renewing leases, writing outcomes, sweeping lost leases."""
PURGE: Final = (
    *_uses("jobs", "purging finished jobs", PURGE_USES, lock=True),
    Need("jobs", "DELETE", "purging finished jobs"),
    *_uses("schedule_ticks", "purging old schedule ticks", PURGE_TICKS_USES),
    Need("schedule_ticks", "DELETE", "purging old schedule ticks"),
)
SCHEDULE: Final = (
    Need("jobs", "INSERT", "storing the jobs of schedules"),
    Need("schedule_ticks", "INSERT", "storing the jobs of schedules"),
    *(
        need
        for table, uses in SUBMIT_TICK_USES.items()
        for need in _uses(table, "storing the jobs of schedules", uses)
    ),
)
SERVICE: Final = (*REACH, *VERSION, *CLAIM, *SETTLE, *PURGE)
"""What every service needs: it refuses to start without."""

_ORDER: Final = ("USAGE", "SELECT", "INSERT", "UPDATE", "DELETE")

_TABLE: Final = ""
"""The column of a (table, privilege, column) asked for that stands for the table itself."""
_ANY: Final = "*"
"""The column of a (table, privilege, column) asked for that stands for any one column."""

_LACKING: Final = """
SELECT current_user, n.name, n.privilege, n.col
FROM ROWS FROM (pg_catalog.unnest(%(names)s::text[]), pg_catalog.unnest(%(privileges)s::text[]),
    pg_catalog.unnest(%(columns)s::text[])) AS n(name, privilege, col)
CROSS JOIN (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s) AS s
LEFT JOIN pg_catalog.pg_class AS c ON c.relnamespace = s.oid AND c.relname = n.name
LEFT JOIN pg_catalog.pg_attribute AS a
    ON a.attrelid = c.oid AND a.attname = n.col AND a.attnum > 0 AND NOT a.attisdropped
WHERE CASE WHEN n.name = '' THEN NOT pg_catalog.has_schema_privilege(s.oid, n.privilege)
           WHEN c.oid IS NULL THEN false
           WHEN n.col = '' THEN NOT pg_catalog.has_table_privilege(c.oid, n.privilege)
           WHEN n.col = '*' THEN NOT pg_catalog.has_any_column_privilege(c.oid, n.privilege)
           ELSE a.attnum IS NOT NULL
                AND NOT pg_catalog.has_column_privilege(c.oid, a.attnum, n.privilege)
      END
"""
"""The (table, privilege, column) triples asked for that the current role lacks, with its
name (column ``''``: the table's own privilege; ``'*'``: on any one column). A missing
schema, table or column lacks nothing: the version check says to migrate."""

Rows = list[tuple[Any, ...]]


class PrivilegeRefused(DispatcherError):
    """The database refused a statement for want of a privilege (the message says which)."""


Fetch = Callable[[bytes, Mapping[str, Any]], Awaitable[Rows]]


@dataclass(frozen=True)
class Lacking:
    """The privileges *role* lacks on the tables of *schema*, each with what it is for."""

    role: str
    schema: str
    needs: tuple[Need, ...]

    def __bool__(self) -> bool:
        return bool(self.needs)

    def grants(self) -> str:
        """The statements that give them, one per table (``GRANT ... TO ...; GRANT ...``)."""
        role = quoted(self.role)
        statements = []
        for table, privileges, _ in self._by_table():
            if table == SCHEMA:
                target = f"SCHEMA {quoted(self.schema)}"
            else:
                target = f"{quoted(self.schema)}.{table}"
            statements.append(f"GRANT {privileges} ON {target} TO {role}")
        return "; ".join(statements)

    def lacks(self) -> str:
        """``the role "r" lacks SELECT on "s".migrations (reading ...), ...``."""
        parts = []
        for table, privileges, purposes in self._by_table():
            where = f"schema {quoted(self.schema)}" if table == SCHEMA else self.table(table)
            parts.append(f"{privileges} on {where} ({purposes})")
        return f"the role {quoted(self.role)} lacks {', '.join(parts)}"

    def described(self) -> str:
        """:meth:`lacks`, then :meth:`grants`: ``the role "r" lacks ...: GRANT ...``."""
        return f"{self.lacks()}: {self.grants()}"

    def table(self, name: str) -> str:
        """The table *name* of the schema, as SQL."""
        return f"{quoted(self.schema)}.{name}"

    def _by_table(self) -> list[tuple[str, str, str]]:
        """Per table, in the order first needed: its privileges and their purposes."""
        privileges: dict[str, list[str]] = {}
        purposes: dict[str, list[str]] = {}
        for table, privilege, purpose, _ in self.needs:
            if privilege not in privileges.setdefault(table, []):
                privileges[table].append(privilege)
            if purpose not in purposes.setdefault(table, []):
                purposes[table].append(purpose)
        return [
            (table, ", ".join(sorted(names, key=_ORDER.index)), ", ".join(purposes[table]))
            for table, names in privileges.items()
        ]


def _asked(need: Need) -> list[tuple[str, str, str]]:
    """The (table, privilege, column) triples to ask of the catalogs for *need*."""
    columns = [_TABLE] if need.columns is None else list(need.columns) or [_ANY]
    return [(need.table, need.privilege, column) for column in columns]


def _query(schema: str, needs: Sequence[Need]) -> tuple[bytes, dict[str, Any]]:
    asked = list(dict.fromkeys(triple for need in needs for triple in _asked(need)))
    return _LACKING.encode(), {
        "schema": schema,
        "names": [table for table, _, _ in asked],
        "privileges": [privilege for _, privilege, _ in asked],
        "columns": [column for _, _, column in asked],
    }


def _lacking(rows: Iterable[tuple[Any, ...]], schema: str, needs: Sequence[Need]) -> Lacking:
    role = ""
    missing: set[tuple[str, str, str]] = set()
    for user, table, privilege, column in rows:
        role = str(user)
        missing.add((str(table), str(privilege), str(column)))
    found = tuple(need for need in needs if any(t in missing for t in _asked(need)))
    return Lacking(role, schema, found)


def lacking(conn: psycopg.Connection[Any], schema: str, needs: Sequence[Need]) -> Lacking:
    """What the role of *conn* lacks of *needs* on the tables of *schema*.

    :raises psycopg.Error: when the query fails (the database cannot be reached).
    """
    statement, params = _query(schema, needs)
    return _lacking(conn.execute(statement, params).fetchall(), schema, needs)


async def lacking_async(fetch: Fetch, schema: str, needs: Sequence[Need]) -> Lacking:
    """:func:`lacking`, through *fetch* (a statement and its parameters, to rows)."""
    statement, params = _query(schema, needs)
    return _lacking(await fetch(statement, params), schema, needs)


async def explain(exc: BaseException, fetch: Fetch, schema: str, needs: Sequence[Need]) -> str:
    """The first line of *exc*; for a refused privilege, with the ``GRANT`` that mends it.

    A write refused as read-only says why (``refusals.READ_ONLY``). The database is asked
    (through *fetch*) only when *exc* is a refused privilege; when that fails too, or finds
    nothing lacking among *needs*, the error alone.
    """
    text = first_line(exc)
    if not isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return with_cause(exc, text)
    try:
        found = await lacking_async(fetch, schema, needs)
    except Exception:  # whatever the failure, the error alone says enough
        return text
    return f"{text}: {found.grants()}" if found else text
