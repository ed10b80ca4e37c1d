"""Why an option of a queue command is refused: text the table cannot hold, an unknown queue.

Checked by :mod:`dispatcher.server.ctl_jobs` before (and, for the database's own refusals,
after) it runs the command; each reason names the option.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Final

import psycopg

from dispatcher.publish.broker_errors import UNTRANSLATABLE
from dispatcher.publish.mistakes import did_you_mean
from dispatcher.publish.pg_text import (
    field_holding,
    refused_character,
    unstorable,
    unstorable_reason,
)
from dispatcher.server.log_text import escape

TEXT_OPTIONS: Final = ("uuid", "task", "queue")
"""The options of the queue commands whose text is compared with the table's."""


def unstorable_option(options: argparse.Namespace, encoding: str | None) -> str | None:
    """Why an option's text cannot be in the table; ``None`` when every one can.

    The database's *encoding* lacks one of its characters: no job can hold it, and sent, it
    would be refused.
    """
    given = [(name, getattr(options, name, None)) for name in TEXT_OPTIONS]
    found = unstorable([(name, value) for name, value in given if value is not None], [encoding])
    if found is None:
        return None
    name, character, encoding = found
    return f"argument --{name}: {unstorable_reason(character, encoding)}"


def refused_option(
    options: argparse.Namespace, encoding: str | None, exc: psycopg.Error
) -> str | None:
    """Why the database refused an option's text, as its error *exc* says; ``None`` if not that.

    For the encodings whose characters are not checked before sending (``EUC_JP``, say).
    """
    if exc.sqlstate not in UNTRANSLATABLE:
        return None
    character = refused_character(str(exc))
    given = [(name, getattr(options, name, None)) for name in TEXT_OPTIONS]
    name = None if character is None else field_holding(given, character)
    if character is None or name is None:
        return None
    return f"argument --{name}: {unstorable_reason(character, encoding)}"


def unknown_queue(queue: str, configured: Sequence[str]) -> str:
    """Why a ``--queue`` that neither the config lists nor any job names is refused."""
    listed = ", ".join(escape(name, limit=None) for name in configured)
    return (
        f"--queue {escape(queue, limit=None)}: no such queue (not in brokers.pg_queue.queues:"
        f" {listed}; and no job in the table names it){did_you_mean(queue, configured)}"
    )
