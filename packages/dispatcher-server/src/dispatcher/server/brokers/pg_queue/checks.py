"""The checks a service makes of the pg_queue tables before it starts (see :func:`check_tables`)."""

from __future__ import annotations

import psycopg

from dispatcher.config import PgQueueBroker as PgQueueSettings
from dispatcher.publish import describe_server
from dispatcher.publish.broker_errors import all_attempts
from dispatcher.publish.connection_settings import connection_options
from dispatcher.publish.refusals import REFUSALS
from dispatcher.server.brokers.base import BrokerNotReady
from dispatcher.server.brokers.pg_queue import privileges
from dispatcher.server.brokers.pg_queue.migrations import latest_version, problem, read_version
from dispatcher.server.log_arguments import Excerpt
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import MAX_REASON_CHARS, first_line

logger = get_logger("dispatcher.pg_queue")


def check_tables(
    settings: PgQueueSettings, config_file: str | None, *, schedules: bool = False
) -> bool:
    """Refuse to start on tables that are missing, too old, or out of the role's reach.

    Too old: older than this code needs; out of reach: the role lacks a privilege a service
    needs (see :mod:`.privileges`). Returns whether the tables could be checked.

    A database that cannot be reached now is not refused (``False`` is returned): the
    broker makes the same checks when it first connects, and refuses to go on then (see
    ``PgQueueBroker``). With *schedules*
    (``producers.scheduled`` is configured), a role that may not store their jobs is warned
    about: whether any goes to a durable queue is known once the tasks are.

    :raises BrokerNotReady: with the one line that says which command to run, or what to
        grant.
    """
    schema = settings.schema
    try:
        with psycopg.connect(
            settings.conninfo,
            autocommit=True,
            connect_timeout=5,
            **connection_options(settings.conninfo),
        ) as conn:
            refused = privileges.lacking(conn, schema, privileges.SERVICE)
            if refused:
                raise BrokerNotReady(refused.described())
            found = read_version(conn, schema)
            storing = privileges.lacking(conn, schema, privileges.SCHEDULE) if schedules else None
    except REFUSALS as exc:  # connected, and refused: no retry mends it
        where = describe_server(settings.conninfo)
        raise BrokerNotReady(
            f'cannot check the pg_queue tables in schema "{schema}" of {where}: {first_line(exc)}'
        ) from None
    except psycopg.Error as exc:
        logger.warning(
            "cannot check the tables now (%s); will check when connected",
            all_attempts(exc) or first_line(exc),
        )
        return False
    refusal = problem(found, schema, config_file)
    if refusal is not None:
        raise BrokerNotReady(refusal)
    if found is not None and found > latest_version():  # a rolling upgrade under way
        logger.warning(
            'the tables in schema "%s" are at version %d, newer than this version '
            "of dispatcher knows (%d)",
            schema,
            found,
            latest_version(),
        )
    if storing:
        logger.warning(
            "%s: the scheduled tasks of durable queues cannot be stored: %s",
            Excerpt(storing.lacks(), MAX_REASON_CHARS),  # whole: names and GRANTs are long
            Excerpt(storing.grants(), MAX_REASON_CHARS),
        )
    return True
