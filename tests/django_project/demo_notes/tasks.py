"""The demo project's tasks: they use the ORM."""

import logging
import os

from django.db import connection, transaction

from demo_notes.models import Note
from dispatcher.publish import task


@task()
def write_note(text: str) -> None:
    """Store a note saying which process wrote it."""
    Note.objects.create(text=text, written_by_pid=os.getpid())


@task()
def write_config_channels(text: str) -> None:
    """Store a note: *text*, then the channels of the config in force in the worker."""
    from dispatcher.config import get_settings

    pg_notify = get_settings().brokers.pg_notify
    channels = ",".join(pg_notify.channels) if pg_notify is not None else ""
    Note.objects.create(text=f"{text} {channels}", written_by_pid=os.getpid())


@task()
def log_then_write_note(text: str) -> None:
    """Log *text* through the project's app logger, then store it as a note."""
    logging.getLogger("demo_notes.tasks").error("noting %s", text)
    Note.objects.create(text=text, written_by_pid=os.getpid())


@task()
def write_backend_note(text: str) -> None:
    """Store a note: *text*, then the server process of the worker's database connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [backend] = cursor.fetchone()
    Note.objects.create(text=f"{text} {backend}", written_by_pid=os.getpid())


@task()
def query_for(seconds: float, label: str) -> None:
    """Run one query lasting *seconds* on the worker's connection (*label* in its text)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_sleep(%s) /* {label} */", [seconds])


@task()
def query_in_atomic_for(seconds: float, label: str) -> None:
    """Store the note *label*, then run ``query_for`` in the same transaction."""
    with transaction.atomic():
        Note.objects.create(text=label, written_by_pid=os.getpid())
        query_for(seconds, label)


@task()
def noted_result(text: str) -> dict[str, object]:
    """Return a value to store as the job's result."""
    return {"text": text, "numbers": [1, 2]}
