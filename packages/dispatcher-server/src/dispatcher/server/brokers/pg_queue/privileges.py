"""The privileges a service's role needs on the pg_queue tables, and what to grant.

A service refuses to start when its role lacks one it needs for its usual work (reading the
version, claiming and settling jobs, purging), naming each and the ``GRANT`` that gives it:
no retry mends a missing privilege, and a service that kept running would only log the
refusal of each claim. Privileges revoked later are named in the log line of the step that
fails (:func:`explain`); the service goes on, and the step works again once granted.

The privileges are read from the catalogs (``has_table_privilege`` by oid), which any role
may read: a role without ``USAGE`` on the schema is told so rather than refused the query.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from dispatcher.schema import DispatcherError
from dispatcher.server.brokers.pg_queue.migrations import VERSION_TABLE, quoted
from dispatcher.server.logsafe import first_line

SCHEMA: Final = ""
"""The "table" of :data:`Need` that stands for the schema itself (``USAGE``)."""

Need = tuple[str, str, str]
"""A table of the schema (:data:`SCHEMA`: the schema), a privilege on it, and what for."""

REACH: Final[tuple[Need, ...]] = ((SCHEMA, "USAGE", "reaching the tables"),)
VERSION: Final[tuple[Need, ...]] = ((VERSION_TABLE, "SELECT", "reading the tables' version"),)
CLAIM: Final[tuple[Need, ...]] = (
    ("jobs", "SELECT", "claiming jobs"),
    ("jobs", "UPDATE", "claiming jobs"),
)
SETTLE: Final[tuple[Need, ...]] = (
    ("jobs", "SELECT", "recording their outcomes"),
    ("jobs", "UPDATE", "recording their outcomes"),
)
"""Renewing leases, writing outcomes, sweeping lost leases."""
PURGE: Final[tuple[Need, ...]] = (
    ("jobs", "SELECT", "purging finished jobs"),
    ("jobs", "UPDATE", "purging finished jobs"),
    ("jobs", "DELETE", "purging finished jobs"),
    ("schedule_ticks", "SELECT", "purging old schedule ticks"),
    ("schedule_ticks", "DELETE", "purging old schedule ticks"),
)
SCHEDULE: Final[tuple[Need, ...]] = (
    ("jobs", "INSERT", "storing the jobs of schedules"),
    ("schedule_ticks", "INSERT", "storing the jobs of schedules"),
    ("jobs", "SELECT", "storing the jobs of schedules"),
    ("schedule_ticks", "SELECT", "storing the jobs of schedules"),
)
SERVICE: Final = (*REACH, *VERSION, *CLAIM, *SETTLE, *PURGE)
"""What every service needs: it refuses to start without."""

_ORDER: Final = ("USAGE", "SELECT", "INSERT", "UPDATE", "DELETE")

_LACKING: Final = """
SELECT current_user, n.name, n.privilege
FROM unnest(%(names)s::text[], %(privileges)s::text[]) AS n(name, privilege)
CROSS JOIN (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s) AS s
LEFT JOIN pg_catalog.pg_class AS c ON c.relnamespace = s.oid AND c.relname = n.name
WHERE CASE WHEN n.name = '' THEN NOT pg_catalog.has_schema_privilege(s.oid, n.privilege)
           ELSE c.oid IS NOT NULL AND NOT pg_catalog.has_table_privilege(c.oid, n.privilege)
      END
"""
"""The (table, privilege) pairs asked for that the current role lacks, with its name. A
missing schema or table lacks nothing: the version check says to migrate."""

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

    def described(self) -> str:
        """``the role "r" lacks SELECT on "s".migrations (reading ...), ...: GRANT ...``."""
        parts = []
        for table, privileges, purposes in self._by_table():
            where = f"schema {quoted(self.schema)}" if table == SCHEMA else self.table(table)
            parts.append(f"{privileges} on {where} ({purposes})")
        return f"the role {quoted(self.role)} lacks {', '.join(parts)}: {self.grants()}"

    def table(self, name: str) -> str:
        """The table *name* of the schema, as SQL."""
        return f"{quoted(self.schema)}.{name}"

    def _by_table(self) -> list[tuple[str, str, str]]:
        """Per table, in the order first needed: its privileges and their purposes."""
        privileges: dict[str, list[str]] = {}
        purposes: dict[str, list[str]] = {}
        for table, privilege, purpose in self.needs:
            if privilege not in privileges.setdefault(table, []):
                privileges[table].append(privilege)
            if purpose not in purposes.setdefault(table, []):
                purposes[table].append(purpose)
        return [
            (table, ", ".join(sorted(names, key=_ORDER.index)), ", ".join(purposes[table]))
            for table, names in privileges.items()
        ]


def _query(schema: str, needs: Sequence[Need]) -> tuple[bytes, dict[str, Any]]:
    pairs = list(dict.fromkeys((table, privilege) for table, privilege, _ in needs))
    return _LACKING.encode(), {
        "schema": schema,
        "names": [table for table, _ in pairs],
        "privileges": [privilege for _, privilege in pairs],
    }


def _lacking(rows: Iterable[tuple[Any, ...]], schema: str, needs: Sequence[Need]) -> Lacking:
    role = ""
    missing: set[tuple[str, str]] = set()
    for user, table, privilege in rows:
        role = str(user)
        missing.add((str(table), str(privilege)))
    found = tuple(need for need in needs if (need[0], need[1]) in missing)
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

    Asked of the database (through *fetch*) only when *exc* is a refused privilege; when
    that fails too, or finds nothing lacking among *needs*, the error alone.
    """
    text = first_line(exc)
    if not isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return text
    try:
        found = await lacking_async(fetch, schema, needs)
    except Exception:  # whatever the failure, the error alone says enough
        return text
    return f"{text}: {found.grants()}" if found else text
