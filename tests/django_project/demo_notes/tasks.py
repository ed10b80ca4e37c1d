"""The demo project's tasks: they use the ORM."""

import logging
import os

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
